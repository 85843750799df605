"""`slimtune run` refuses at once, before loading anything, what this version cannot run."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from slimtune.cli.main import main

CONFIGS = Path(__file__).parent / "configs"


def test_azure_system_fails_at_once_naming_what_is_missing(capsys):
    """The source document's Azure config goes to an Azure ML job; its conda.yaml is not beside this copy."""
    assert main(["run", "--config", str(CONFIGS / "seed_azure.json")]) == 2
    err = capsys.readouterr().err
    assert "aml_docker_config.conda_file_path" in err and "conda.yaml does not exist" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("section", "value", "expected"),
    [
        ("model", "s3://bucket/model", "no AWS credential"),
        (
            "data",
            {"type": "azureml_datastore", "datastore_name": "d", "relative_path": "x.json"},
            "the workspace is not known",
        ),
        ("data", "https://example.invalid/train.json", "unknown host example.invalid"),
    ],
)
def test_remote_inputs_fail_at_once(tmp_path, capsys, monkeypatch, section, value, expected):
    """Remote inputs that cannot be read stop the run before anything is written, naming the resource."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    listening = socket.create_server(
        ("127.0.0.1", 0)
    )  # an S3 endpoint that answers: the credential is missing
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listening.getsockname()[1]}")
    monkeypatch.setenv("SLIMTUNE_DOWNLOADS", str(tmp_path / "downloads"))
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n')
    config = {
        "input_model": {"type": "HfModel", "model_path": value if section == "model" else str(tmp_path)},
        "data_configs": [
            {
                "name": "d",
                "load_dataset_config": {
                    "data_name": "json",
                    "data_files": value if section == "data" else str(data),
                },
            }
        ],
        "passes": {"lora": {"type": "LoRA", "train_data_config": "d"}},
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["run", "--config", str(path)]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    listening.close()


def _run_refused_before_loading(tmp_path, monkeypatch, passes: dict) -> int:
    """`slimtune run` of a tiny model with `passes`, any weight loading an error: the exit code."""
    import transformers
    from tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n')
    config = {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [
            {"name": "d", "load_dataset_config": {"data_name": "json", "data_files": str(data)}}
        ],
        "passes": passes,
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the pass's checks")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    return main(["run", "--config", str(path)])


def test_qlora_on_cpu_fails_before_loading_weights(tmp_path, capsys, monkeypatch):
    passes = {"q": {"type": "QLoRA", "train_data_config": "d"}}
    assert _run_refused_before_loading(tmp_path, monkeypatch, passes) == 2
    err = capsys.readouterr().err
    assert "QLoRA" in err and "CUDA" in err
    assert not list((tmp_path / "cache").glob("entries/*"))


def test_loftq_without_bitsandbytes_is_named_before_loading_weights(tmp_path, capsys, monkeypatch):
    """peft's LoftQ needs bitsandbytes; without it the run stops with exit 2 naming the setting, not an internal
    error from peft mid-run."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a),
    )
    passes = {"lora": {"type": "LoRA", "train_data_config": "d", "loftq_iter": 1}}
    assert _run_refused_before_loading(tmp_path, monkeypatch, passes) == 2
    err = capsys.readouterr().err
    assert "loftq_iter" in err and "bitsandbytes" in err and "internal error" not in err
    assert "Traceback" not in err
    assert not list((tmp_path / "cache").glob("entries/*"))
