"""A config whose system asks for a GPU through DirectML (the seed's Windows target) on a machine without one:
the model is trained where the host's device is (CUDA if any, else the CPU), ModelBuilder builds it for
DirectML (the builder needs no such device), its genai_config.json names that provider, and its evaluation
runs on the CPU with a note. A GPU asked for through CUDA is still refused when there is none."""

from __future__ import annotations

import json

import pytest
from workflows import emotion_data_config, run_config

from slimtune.config.load import load_config_dict
from slimtune.engine.preflight import device_for
from slimtune.errors import UserError
from tests.tiny_models import make_tiny_model

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA"
)


def config(model: str, providers: list[str]) -> dict:
    return {
        "input_model": {"type": "HfModel", "model_path": model},
        "systems": {
            "local": {
                "type": "LocalSystem",
                "accelerators": [{"device": "gpu", "execution_providers": providers}],
            }
        },
        "host": "local",
        "target": "local",
        "data_configs": [emotion_data_config(40)],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 4,
                "alpha": 8,
                "train_data_config": "emotion",
                "eval_dataset_size": 0.25,
                "training_args": {"max_steps": 2, "per_device_train_batch_size": 4},
            },
            "merge": {"type": "MergeAdapterWeights"},
            "builder": {"type": "ModelBuilder", "precision": "int4"},
        },
        "cache_dir": "cache",
        "output_dir": "out",
    }


@pytest.mark.parametrize(
    ("provider", "ep"), [("DmlExecutionProvider", "dml"), ("WebGpuExecutionProvider", "webgpu")]
)
def test_an_export_only_gpu_trains_on_the_cpu(tmp_path, provider, ep):
    loaded = load_config_dict(config("unused", [provider]), base_dir=tmp_path)
    assert device_for(loaded) == ("cpu", ep)


def test_a_cuda_gpu_is_still_refused_without_one(tmp_path):
    loaded = load_config_dict(config("unused", ["CUDAExecutionProvider"]), base_dir=tmp_path)
    with pytest.raises(UserError, match="no CUDA device"):
        device_for(loaded)


def test_a_directml_run_builds_for_directml_and_evaluates_on_the_cpu(tmp_path, capsys):
    model = make_tiny_model("llama", tmp_path / "tiny")
    record = run_config(tmp_path, config(str(model), ["DmlExecutionProvider"]))
    assert record["machine"]["device"] == "cpu" and record["machine"]["execution_provider"] == "dml"
    genai = json.loads((tmp_path / "out" / "model" / "genai_config.json").read_text())
    assert "dml" in genai["model"]["decoder"]["session_options"]["provider_options"][0]
    builder = {s["stage"]: s for s in record["evaluation"]["stages"]}["builder"]
    assert builder["metrics"]["note"].startswith("built for DirectML, which is not available here")
    assert builder["metrics"]["n"] > 0 and "accuracy" in builder["metrics"]
    assert "note: built for DirectML" in capsys.readouterr().out
