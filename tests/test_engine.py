"""The whole pipeline on tiny models: LoRA -> MergeAdapterWeights -> ModelBuilder, the cache, run.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from workflows import emotion_data_config, generate_onnx

from slimtune.cli.main import main

TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, root / arch) for arch in ("llama", "phi3")}


def write_config(
    folder: Path, model: Path, *, targets=None, builder=None, max_steps=3, extra_lora=None
) -> Path:
    lora = {
        "type": "LoRA",
        "r": 4,
        "alpha": 8,
        "train_data_config": "emotion",
        "eval_dataset_size": 0.2,
        "training_args": {
            "max_steps": max_steps,
            "per_device_train_batch_size": 4,
            "logging_steps": 1,
            "save_steps": 2,
            "eval_steps": 2,
        },
    }
    if targets:
        lora["target_modules"] = targets
    lora.update(extra_lora or {})
    config = {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [emotion_data_config(80)],
        "passes": {
            "lora": lora,
            "merge": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "precision": "int4", **(builder or {})},
        },
        "cache_dir": "cache",
        "output_dir": "out",
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(config: Path) -> dict:
    assert main(["run", "--config", str(config)]) == 0
    return json.loads((config.parent / "out" / "run.json").read_text())


@pytest.mark.parametrize(
    ("arch", "targets", "expected"),
    [
        ("llama", ["qkv_proj", "o_proj"], {"q_proj", "k_proj", "v_proj", "o_proj"}),  # Phi-3 names on Llama
        ("phi3", ["q_proj", "k_proj", "v_proj", "o_proj"], {"qkv_proj", "o_proj"}),  # Llama names on Phi-3
    ],
)
def test_three_passes_then_cache_hits(tiny, tmp_path, arch, targets, expected):
    config = write_config(tmp_path, tiny[arch], targets=targets)
    record = run(config)
    assert [p["type"] for p in record["passes"]] == ["LoRA", "MergeAdapterWeights", "ModelBuilder"]
    assert not any(p["cache_hit"] for p in record["passes"])
    lora = record["passes"][0]
    assert set(lora["metrics"]["target_modules"]) == expected
    assert lora["metrics"]["target_module_notes"]  # the mapping is reported
    assert lora["metrics"]["loss_curve"] and lora["metrics"]["eval_curve"]
    assert all(len(p["key"]) == 64 for p in record["passes"])
    model = tmp_path / "out" / "model"
    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "slimtune.json"):
        assert (model / name).is_file(), name
    meta = json.loads((model / "slimtune.json").read_text())
    assert meta["template"] == TEMPLATE and meta["labels"] == ["fear", "joy", "sadness", "surprise"]
    assert len(generate_onnx(model)) == 5
    # merged model loads with plain transformers
    import transformers

    merged = Path(record["passes"][1]["output_path"])
    transformers.AutoModelForCausalLM.from_pretrained(merged)

    again = run(config)
    assert all(p["cache_hit"] for p in again["passes"])
    assert [p["key"] for p in again["passes"]] == [p["key"] for p in record["passes"]]


def test_changing_builder_options_reruns_only_the_builder(tiny, tmp_path):
    first = run(write_config(tmp_path, tiny["llama"]))
    second = run(write_config(tmp_path, tiny["llama"], builder={"int4_block_size": 128}))
    assert [p["cache_hit"] for p in second["passes"]] == [True, True, False]
    assert second["passes"][2]["key"] != first["passes"][2]["key"]


def test_target_module_matching_nothing_lists_linear_layers(tiny, tmp_path, capsys):
    config = write_config(tmp_path, tiny["llama"], targets=["attn_out"])
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "attn_out" in err and "q_proj" in err and "down_proj" in err
    assert not (tmp_path / "out").exists()


def test_merge_without_adapter_is_refused_before_any_work(tiny, tmp_path, capsys):
    config = write_config(tmp_path, tiny["llama"])
    data = yaml.safe_load(config.read_text())
    del data["passes"]["lora"]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["run", "--config", str(config)]) == 2
    assert "MergeAdapterWeights" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "entries").exists()


def test_killed_training_leaves_no_cache_entry_and_resumes(tiny, tmp_path):
    config = write_config(tmp_path, tiny["llama"], max_steps=60)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimtune", "run", "--config", str(config)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    work = tmp_path / "cache" / "work"
    deadline = time.time() + 120
    while time.time() < deadline and not list(work.glob("*/checkpoints/checkpoint-*/trainer_state.json")):
        time.sleep(0.2)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(work.glob("*/checkpoints/checkpoint-*")), "training wrote no checkpoint before the kill"
    assert not list((tmp_path / "cache" / "entries").glob("*")), "an interrupted pass left a cache entry"
    assert not (tmp_path / "out" / "model").exists()

    record = run(config)
    lora = record["passes"][0]
    assert lora["metrics"]["resumed_from"] is not None
    assert lora["metrics"]["steps"] == 60
    assert (tmp_path / "out" / "model" / "model.onnx").is_file()


def test_default_model_end_to_end(tmp_path):
    """The real default model (prepared by `make setup`) through all three passes, a couple of steps."""
    config = write_config(tmp_path, Path("unused"), max_steps=2)
    data = yaml.safe_load(config.read_text())
    data["input_model"]["model_path"] = "smollm2-135m-instruct"
    del data["passes"]["lora"]["eval_dataset_size"]  # no evaluation: this test is about the passes
    data["passes"]["lora"]["training_args"]["per_device_train_batch_size"] = 2
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    record = run(config)
    model = tmp_path / "out" / "model"
    assert record["final_model"]["kind"] == "onnx"
    assert 60e6 < record["final_model"]["size_bytes"] < 150e6  # int4 of a 135M-parameter model
    from slimtune.models.onnx_genai import OnnxGenaiModel

    text = OnnxGenaiModel(model).generate("<|im_start|>### Text: I passed the exam!\n### The tone is:\n", 4)
    assert text.strip(), "the int4 model generated nothing"


def test_cache_ls_and_clean(tiny, tmp_path, capsys):
    record = run(write_config(tmp_path, tiny["llama"]))
    capsys.readouterr()
    cache = str(tmp_path / "cache")
    assert main(["cache", "--cache-dir", cache, "ls", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert {e["key"] for e in entries} == {p["key"] for p in record["passes"]}
    assert {e["pass_type"] for e in entries} == {"LoRA", "MergeAdapterWeights", "ModelBuilder"}
    assert all(e["size_bytes"] > 0 for e in entries)
    leftover = tmp_path / "cache" / "tmp" / ("f" * 64 + ".1.0")
    leftover.mkdir(parents=True)
    assert main(["cache", "--cache-dir", cache, "clean", "--partial"]) == 0
    assert not leftover.exists() and len(list((tmp_path / "cache" / "entries").iterdir())) == 3
    assert main(["cache", "--cache-dir", cache, "clean", "--pass-type", "ModelBuilder"]) == 0
    assert len(list((tmp_path / "cache" / "entries").iterdir())) == 2


def test_input_load_kwargs_reach_the_lora_pass_and_its_cache_key(tiny, tmp_path, monkeypatch):
    """input_model.load_kwargs.dtype and attn_implementation are used by LoRA and change its cache key."""
    import slimtune.passes.lora.train as lora_train

    seen = []
    real = lora_train.load_base_model
    monkeypatch.setattr(
        lora_train,
        "load_base_model",
        lambda base, params, device, **kw: (
            seen.append((params.torch_dtype, kw)) or real(base, params, device, **kw)
        ),
    )
    path = write_config(tmp_path, tiny["llama"], max_steps=1)
    plain = run(path)
    config = yaml.safe_load(path.read_text())
    config["input_model"]["load_kwargs"] = {"dtype": "bfloat16", "attn_implementation": "eager"}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    loaded = run(path)
    assert seen[0] == ("auto", {}) and seen[1] == ("bfloat16", {"attn_implementation": "eager"})
    assert plain["passes"][0]["key"] != loaded["passes"][0]["key"]
