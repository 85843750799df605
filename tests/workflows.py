"""What the integration tests share: the example's data as a data config, running a config through the CLI, and
running a tiny ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EMOTION_DATA = REPO / "examples" / "emotion" / "data.jsonl"
EMOTION_TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


def emotion_data_config(
    max_samples: int | None = 80, *, max_seq_len: int = 64, answer_only: bool = True, pad: bool = False
) -> dict[str, Any]:
    """The example's data (first `max_samples` rows) as a data config named `emotion`."""
    load: dict[str, Any] = {"data_name": "json", "data_files": str(EMOTION_DATA)}
    if max_samples is not None:
        load["max_samples"] = max_samples
    pre: dict[str, Any] = {
        "text_template": EMOTION_TEMPLATE,
        "max_seq_len": max_seq_len,
        "pad_to_max_len": pad,
    }
    if answer_only:
        pre["loss_on_answer_only"] = True
    return {"name": "emotion", "load_dataset_config": load, "pre_process_data_config": pre}


def run_config(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Write `config` as folder/config.yaml, run it with `slimtune run` (must succeed), return its run.json
    (the config's output_dir is read relative to `folder`)."""
    import json

    import yaml

    from slimtune.cli.main import main

    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", "--config", str(path)]) == 0
    return json.loads((folder / config["output_dir"] / "run.json").read_text())


def generate_onnx(folder: str | Path, n: int = 5) -> list[int]:
    """Greedy tokens from an ONNX GenAI model folder after a fixed prompt (proves the folder loads and runs)."""
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=10 + n, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens([1, 5, 6, 7, 8, 9, 10, 11, 12, 13])
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def short_lora(max_steps: int = 1, data: str = "emotion") -> dict[str, Any]:
    """A LoRA pass that trains `max_steps` steps of 4 rows on data config `data` (a quarter held out)."""
    return {
        "type": "LoRA",
        "r": 4,
        "train_data_config": data,
        "eval_dataset_size": 0.25,
        "training_args": {"max_steps": max_steps, "per_device_train_batch_size": 4},
    }
