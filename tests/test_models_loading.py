"""resolve_model: every kind of model_path, and a clear ModelError / UserError for each bad one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_tiny_model  # noqa: E402

from slimtune.errors import ModelError, UserError  # noqa: E402
from slimtune.models import loading  # noqa: E402
from slimtune.models.hf import load_causal_lm  # noqa: E402
from slimtune.models.loading import check_model_folder, linear_layer_names, resolve_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def test_local_folder_resolves_to_itself(tiny_llama):
    assert resolve_model(str(tiny_llama)) == tiny_llama.resolve()
    assert resolve_model(tiny_llama) == tiny_llama.resolve()


def test_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="model folder .*nowhere does not exist"):
        resolve_model(str(tmp_path / "nowhere"))


def test_no_config_json(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_adapter_folder_gets_a_hint(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="adapter_path"):
        resolve_model(str(tmp_path))


def test_no_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no weights"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(
    "content",
    [b"not a safetensors file at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json}", b""],
    ids=["garbage", "bad-header", "empty"],
)
def test_corrupt_safetensors(tmp_path, content):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelError, match="model.safetensors is corrupt or truncated"):
        resolve_model(str(tmp_path))


def test_truncated_safetensors(tmp_path, tiny_llama):
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    weights = (tiny_llama / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(ModelError, match="corrupt or truncated"):
        resolve_model(str(tmp_path))


def test_missing_shard(tmp_path, tiny_llama):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(
        (tiny_llama / "model.safetensors").read_bytes()
    )
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="missing weight shards .*model-00002-of-00002"):
        resolve_model(str(tmp_path))


def test_pickled_weights_refused_unless_allowed(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelError, match="only pickled weights .*pytorch_model.bin.*refused unless allowed"):
        resolve_model(str(tmp_path))
    assert resolve_model(str(tmp_path), allow_pickle=True) == tmp_path.resolve()


def test_hub_name_is_not_fetched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="no network access to a model hub.*Prepare the model locally"):
        resolve_model("microsoft/Phi-3-mini-4k-instruct")


@pytest.mark.parametrize(
    "path, needs",
    [
        ("azureml://registries/azureml/models/phi3", "Azure ML"),
    ],
)
def test_remote_stores_are_not_implemented_yet(path, needs):
    """(Model folders and .gguf files at storage URLs download: tests/test_storage.py.)"""
    with pytest.raises(UserError, match=f"remote models are not implemented yet.*{needs}") as info:
        resolve_model(path)
    assert not isinstance(info.value, ModelError) and path in str(info.value)


def test_azureml_resource_dict():
    resource = {
        "type": "azureml_registry_model",
        "config": {"name": "Phi-3-mini-4k-instruct", "registry_name": "azureml", "version": "7"},
    }
    with pytest.raises(
        UserError, match="azureml_registry_model .*Phi-3-mini-4k-instruct.*not implemented yet"
    ):
        resolve_model(resource)


def test_a_plain_file_is_not_a_model(tmp_path):
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(str(tmp_path / "weights.txt"))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelError, match="GGUF file .*absent.gguf does not exist"):
        resolve_model(str(tmp_path / "absent.gguf"))


def test_known_name_and_gguf_go_through_the_store(monkeypatch, tmp_path):
    from slimtune.models import store

    asked = []
    monkeypatch.setattr(store, "prepared_path", lambda model, announce=False: asked.append(model) or tmp_path)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model("smollm2-135m-instruct") == tmp_path
    assert resolve_model(str(gguf)) == tmp_path
    assert asked == ["smollm2-135m-instruct", str(gguf)]


def test_resolving_does_not_import_torch(tiny_llama):
    import subprocess

    code = (
        "import sys; from slimtune.models.loading import resolve_model; "
        f"resolve_model({str(tiny_llama)!r}); assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_load_and_linear_layer_names(tiny_llama, caplog):
    import torch

    model = load_causal_lm(tiny_llama, "bf16", "cpu")
    assert model.dtype == torch.bfloat16
    assert linear_layer_names(model) == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    with caplog.at_level("WARNING", logger=loading.__name__):
        load_causal_lm(tiny_llama, "float32", "cpu", trust_remote_code=True)
    assert "trust_remote_code=True" in caplog.text
    with pytest.raises(UserError, match="unknown dtype 'float8'"):
        load_causal_lm(tiny_llama, "float8", "cpu")


def test_linear_layer_names_of_a_peft_model(tiny_llama):
    from peft import LoraConfig, get_peft_model

    model = load_causal_lm(tiny_llama, "float32", "cpu")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert linear_layer_names(peft_model) == linear_layer_names(load_causal_lm(tiny_llama, "float32", "cpu"))


@pytest.mark.parametrize(
    "arch, fused", [("phi3", {"qkv_proj", "gate_up_proj"}), ("qwen2", {"q_proj", "up_proj"})]
)
def test_linear_layer_names_other_architectures(tmp_path, arch, fused):
    folder = make_tiny_model(arch, tmp_path / arch)
    check_model_folder(folder)
    names = linear_layer_names(load_causal_lm(folder, "float32", "cpu"))
    assert fused <= set(names) and "lm_head" not in names


def test_onnx_models(tmp_path, tiny_llama):
    folder = tmp_path / "onnx"
    folder.mkdir()
    (folder / "genai_config.json").write_text("{}")
    with pytest.raises(ModelError, match="holds no .onnx file"):
        resolve_model(str(folder), kind="onnx")
    with pytest.raises(ModelError, match="no config.json.*set input_model.type to ONNXModel"):
        resolve_model(str(folder))
    (folder / "model.onnx").write_bytes(b"onnx")
    assert resolve_model(str(folder)) == folder.resolve()
    assert resolve_model(str(folder / "model.onnx"), kind="onnx") == (folder / "model.onnx").resolve()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(folder), kind="hf")
    with pytest.raises(ModelError, match="holds no .onnx file"):
        resolve_model(str(tiny_llama), kind="onnx")
