"""MLflow model folders (model_file_format PyTorch.MLflow): written by the real mlflow package from a tiny model,
they load and fine-tune wherever a Hugging Face folder does; the Azure ML layout (data/model, data/config,
data/tokenizer) too."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from workflows import emotion_data_config, run_config, short_lora

from slimtune.errors import ModelError
from slimtune.models.loading import model_ref, resolve_model
from slimtune.models.mlflow import MLMODEL, HubReference, hf_folder
from tests.tiny_models import make_mlflow_model, make_tiny_model


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_HOME", str(tmp_path / "home"))  # linked folders land here, not in ~


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def mlflow_model(tiny, tmp_path_factory) -> Path:
    return make_mlflow_model(tiny, tmp_path_factory.mktemp("mlflow") / "tiny-mlflow")


def test_mlflow_writes_the_layout_slimtune_reads(mlflow_model):
    assert (mlflow_model / MLMODEL).is_file()
    assert (mlflow_model / "model" / "config.json").is_file()
    assert (mlflow_model / "components" / "tokenizer" / "tokenizer.json").is_file()
    assert not (mlflow_model / "model" / "tokenizer.json").exists()  # the tokenizer is elsewhere: joined


def test_an_mlflow_folder_resolves_to_one_hugging_face_folder(mlflow_model, tmp_path):
    before = sorted(p.relative_to(mlflow_model) for p in mlflow_model.rglob("*"))
    folder = resolve_model(str(mlflow_model), file_format="PyTorch.MLflow")
    assert folder.is_relative_to(tmp_path / "home")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert (folder / "model.safetensors").resolve() == (
        mlflow_model / "model" / "model.safetensors"
    ).resolve()
    assert resolve_model(str(mlflow_model)) == folder  # found by its MLmodel file, and made once
    assert model_ref(mlflow_model).path == str(folder) and model_ref(mlflow_model).kind == "hf"
    assert sorted(p.relative_to(mlflow_model) for p in mlflow_model.rglob("*")) == before  # nothing written


def test_an_azure_ml_download_layout(tiny, tmp_path):
    """Azure ML registry models: <name>/mlflow_model_folder/{MLmodel, data/model, data/config, data/tokenizer}."""
    root = tmp_path / "download" / "Phi-3-mini" / "mlflow_model_folder"
    for part, names in {
        "model": ["model.safetensors", "generation_config.json"],
        "config": ["config.json"],
        "tokenizer": ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"],
    }.items():
        (root / "data" / part).mkdir(parents=True)
        for name in names:
            shutil.copy(tiny / name, root / "data" / part / name)
    (root / MLMODEL).write_text("flavors:\n  hftransformersv2:\n    task_type: text-generation\n")
    folder = resolve_model(str(tmp_path / "download"), file_format="PyTorch.MLflow")
    assert (folder / "config.json").resolve() == (root / "data" / "config" / "config.json").resolve()
    assert (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file()


def test_a_folder_without_mlmodel_is_named_when_the_format_says_mlflow(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelError, match=f"{tmp_path}.* no MLmodel file .*PyTorch.MLflow"):
        resolve_model(str(tmp_path), file_format="PyTorch.MLflow")


def test_an_mlflow_model_without_weights_names_where_it_looked(tmp_path):
    (tmp_path / MLMODEL).write_text("flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n")
    with pytest.raises(
        ModelError, match="no Hugging Face weights found .*model, data/model.*python_function"
    ):
        resolve_model(str(tmp_path))


def test_a_model_saved_without_weights_is_a_hub_reference(tmp_path):
    (tmp_path / MLMODEL).write_text(
        "flavors:\n  transformers:\n    source_model_name: org/tiny\n    source_model_revision: abc123\n"
    )
    assert hf_folder(tmp_path) == HubReference("org/tiny", "abc123")


def test_an_mlflow_model_fine_tunes(mlflow_model, tmp_path):
    config = {
        "input_model": {
            "type": "HfModel",
            "model_path": str(mlflow_model),
            "model_file_format": "PyTorch.MLflow",
        },
        "data_configs": [emotion_data_config(40)],
        "passes": {
            "lora": short_lora(2),
            "merge": {"type": "MergeAdapterWeights"},
        },
        "cache_dir": "cache",
        "output_dir": "out",
    }
    record = run_config(tmp_path, config)
    assert [p["name"] for p in record["passes"]] == ["lora", "merge"]
    lora = record["passes"][0]
    assert lora["metrics"]["train_loss"] > 0
    merged = tmp_path / "out" / "model"
    assert json.loads((merged / "config.json").read_text())["model_type"] == "llama"
    assert (merged / "tokenizer.json").is_file()  # the tokenizer from components/tokenizer came along


def test_generate_reads_an_mlflow_folder(mlflow_model, capsys):
    from slimtune.cli.main import main

    assert main(["generate", "--model", str(mlflow_model), "--prompt", "I am", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()  # the tiny model's (random) continuation
