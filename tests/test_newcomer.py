"""What a newcomer meets on a first run: no library warnings caused by slimtune's own calls, each log line once,
one unit for sizes everywhere, the model named as the config names it, and a failed fine-tune explained (the
source document's recipe: rows joined, loss on the whole text, 10 steps), by `slimtune validate` up front too."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import yaml
from workflows import REPO, emotion_data_config

from slimtune.cli.main import main
from slimtune.units import fmt_bytes

SEED = REPO / "tests" / "configs" / "seed_local.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {arch: make_tiny_model(arch, root / arch) for arch in ("llama", "phi3")}


def run_strict(config: Path, capsys) -> tuple[int, str]:
    """`slimtune run` with FutureWarning and DeprecationWarning as errors while slimtune's code runs (torch,
    transformers and peft are imported first, so only warnings raised by calls count)."""
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        rc = main(["run", "--config", str(config)])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def seed_config(folder: Path, model: Path) -> Path:
    """The source document's config as written (old schema, join corpus, loss on the whole text, r 64,
    target modules o_proj/qkv_proj), on a tiny Phi-3 and the example's data, for 3 steps."""
    config = json.loads(SEED.read_text())
    config["input_model"]["config"]["hf_config"]["model_name"] = str(model)
    data = config["data_configs"][0]
    data["load_dataset_config"]["params"].update(
        data_files=str(REPO / "examples" / "emotion" / "data.jsonl"), max_samples=100
    )
    data["pre_process_data_config"]["params"]["source_max_len"] = 256
    config["passes"]["lora"]["config"]["training_args"]["max_steps"] = 3
    config["engine"].update(cache_dir="cache", output_dir="out")
    path = folder / "seed.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture(scope="module")
def seed_run(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seed")
    return folder, seed_config(folder, tiny["phi3"])


def test_example_workflow_raises_no_warning_and_logs_each_eval_once(tiny, tmp_path, capsys):
    config = {
        "input_model": {"type": "HfModel", "model_path": str(tiny["llama"])},
        "data_configs": [emotion_data_config(60)],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 4,
                "alpha": 8,
                "train_data_config": "emotion",
                "eval_dataset_size": 0.2,
                "training_args": {
                    "max_steps": 4,
                    "per_device_train_batch_size": 4,
                    "logging_steps": 1,
                    "eval_steps": 2,
                    "gradient_checkpointing": False,  # an old name: mapped, so transformers does not warn
                },
            },
            "merge": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "precision": "int4"},
        },
        "cache_dir": "cache",
        "output_dir": "out",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    rc, out = run_strict(path, capsys)
    assert rc == 0, out[-3000:]
    assert "FutureWarning" not in out and "DeprecationWarning" not in out
    steps = re.findall(r"step (\d+): eval loss", out)
    assert steps and len(steps) == len(set(steps)), steps
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    curve = [p["step"] for p in record["passes"][0]["metrics"]["eval_curve"]]
    assert curve == sorted(set(curve)), curve
    assert "activation_checkpointing" in record["config_migrated"]["passes"]["lora"]["training_args"]
    # one unit for sizes: the console, run.json and the report say the same
    report = (tmp_path / "out" / "report.md").read_text()
    html = (tmp_path / "out" / "report.html").read_text()
    for p in record["passes"]:
        for key in ("peak_rss_bytes", "output_size_bytes"):
            shown = fmt_bytes(p[key])
            assert re.search(r"\d (GiB|MiB|KiB)$", shown)
            assert shown in out and shown in report and shown in html, (key, shown)
    assert not re.search(r"\d ?(GB|MB|kB)\b", out + report)
    # the model as the config names it
    assert record["input_model"]["name"] == str(tiny["llama"])


def test_units():
    assert fmt_bytes(512) == "512 B"
    assert fmt_bytes(3 * 2**10) == "3.0 KiB"
    assert fmt_bytes(90_100_000) == "85.9 MiB"
    assert fmt_bytes(1_836_000_000) == "1.71 GiB"


def test_source_document_config_runs_quietly_and_explains_its_failure(seed_run, capsys):
    folder, config = seed_run
    rc, out = run_strict(config, capsys)
    assert rc == 0, out[-3000:]
    assert "FutureWarning" not in out and "DeprecationWarning" not in out
    record = json.loads((folder / "out" / "run.json").read_text())
    stages = record["evaluation"]["stages"]
    assert all(s["metrics"]["accuracy"] == 0 for s in stages)  # random tiny weights: nothing learnt

    diagnosis = record["diagnosis"]
    assert diagnosis["summary"].startswith("The fine-tune did not learn the task")
    assert diagnosis["examples"] and all(e["expected"] for e in diagnosis["examples"])
    causes = " ".join(diagnosis["causes"])
    assert "strategy join" in causes and "loss is on every token" in causes
    assert re.search(r"max_steps 3 covers \d+% of one epoch", causes)
    fix = json.loads(diagnosis["fix"])  # a .json config gets a JSON snippet
    pre = fix["data_configs"][0]["pre_process_data_config"]
    assert pre == {"strategy": "line-by-line", "loss_on_answer_only": True}
    lora = fix["passes"]["lora"]
    assert (lora["r"], lora["alpha"], lora["training_args"]["learning_rate"]) == (16, 32, 3e-4)
    assert lora["training_args"]["num_train_epochs"] == 1

    report = (folder / "out" / "report.md").read_text()
    html = (folder / "out" / "report.html").read_text()
    for text in (out, report, html):
        assert "The fine-tune did not learn the task" in text
        assert "strategy join" in text and "covers" in text
        assert "loss_on_answer_only" in text and "line-by-line" in text
        assert diagnosis["examples"][0]["expected"] in text
    assert "Why the fine-tune failed" in report and 'id="diagnosis"' in html


def test_validate_warns_about_the_source_document_config(seed_run, capsys):
    _, config = seed_run
    assert main(["validate", str(config)]) == 0
    out = capsys.readouterr().out
    assert "warning: data config `dataset_default_train` uses strategy join" in out
    assert re.search(r"warning: pass `lora`: max_steps 3 covers \d+% of one epoch", out)
    assert '"loss_on_answer_only": true' in out

    assert main(["validate", "--quiet", str(config)]) == 0
    assert "warning:" not in capsys.readouterr().out

    assert main(["validate", "--strict", str(config)]) == 2
    err = capsys.readouterr().err
    assert "strategy join" in err and "--strict" in err


def test_validate_is_silent_on_the_recipe_that_learns(tmp_path, capsys):
    config = {
        "input_model": {"type": "HfModel", "model_path": str(tmp_path)},
        "data_configs": [emotion_data_config(None, max_seq_len=128)],
        "passes": {
            "lora": {
                "type": "LoRA",
                "train_data_config": "emotion",
                "eval_dataset_size": 0.2,
                "training_args": {"num_train_epochs": 1},
            }
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", "--strict", "--config-only", str(path)]) == 0
    assert "warning:" not in capsys.readouterr().out
