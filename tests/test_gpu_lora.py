"""LoRA / QLoRA / DoRA on CUDA, tiny models: QLoRA -> merge -> int4 ONNX that onnxruntime-genai runs on
the CPU; DoRA and LoftQ train; packed + compiled training keeps the loss; data-parallel over 2 GPUs.

Skipped without CUDA (and the 2-GPU test without 2 GPUs). Results on the GPU machine: docs/benchmarks.md.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from workflows import emotion_data_config, generate_onnx

from slimtune.cli.main import main

torch = pytest.importorskip("torch")
CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")]
needs_bnb = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="needs the bitsandbytes package"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def write_config(folder: Path, model: Path, lora: dict, *, export: bool) -> Path:
    passes = {
        "lora": {
            "r": 4,
            "alpha": 8,
            "train_data_config": "emotion",
            "training_args": {"max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 1},
            **lora,
        }
    }
    if export:
        passes["merge"] = {"type": "MergeAdapterWeights"}
        passes["builder"] = {"type": "ModelBuilder", "precision": "int4"}
    config = {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "systems": {
            "gpu": {"type": "LocalSystem", "accelerators": [{"device": "gpu"}]},
            "cpu": {"type": "LocalSystem", "accelerators": [{"device": "cpu"}]},
        },
        "host": "gpu",
        "target": "cpu",  # the int4 model is built for, and run on, the CPU
        "data_configs": [emotion_data_config(64, answer_only=False, pad=True)],
        "passes": passes,
        "cache_dir": "cache",
        "output_dir": "out",
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(config: Path) -> dict:
    assert main(["run", "--config", str(config)]) == 0
    return json.loads((config.parent / "out" / "run.json").read_text())


@needs_bnb
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime_genai") is None, reason="needs onnxruntime-genai")
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_qlora_merge_int4_runs_in_onnxruntime_genai(tiny, tmp_path, quant_type):
    lora = {"type": "QLoRA", "quant_type": quant_type, "double_quant": True, "compute_dtype": "bfloat16"}
    record = run(write_config(tmp_path, tiny, lora, export=True))
    assert [p["type"] for p in record["passes"]] == ["QLoRA", "MergeAdapterWeights", "ModelBuilder"]
    adapter = Path(record["passes"][0]["output_path"])
    meta = json.loads((adapter / "slimtune.json").read_text())
    assert meta["quantized_base"] == {
        "scheme": "bnb-4bit",
        "quant_type": quant_type,
        "double_quant": True,
        "compute_dtype": "bfloat16",
    }
    merged = Path(record["passes"][1]["output_path"])
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config  # a plain full-precision folder after the merge
    assert len(generate_onnx(tmp_path / "out" / "model")) == 5


@needs_bnb
def test_qlora_merge_adds_the_adapter_to_the_dequantized_base(tiny, tmp_path):
    """Merged weights = dequantize(quantize(base)) + B A * scale, not the original base + B A * scale."""
    import transformers
    from peft import PeftModel

    record = run(write_config(tmp_path, tiny, {"type": "QLoRA", "quant_type": "nf4"}, export=False))
    adapter = Path(record["passes"][0]["output_path"])
    from slimtune.passes.merge.run import dequantized_qlora_base

    grid = json.loads((adapter / "slimtune.json").read_text())["quantized_base"]
    base = dequantized_qlora_base(tiny, grid, torch.float32, {}, print)
    original = transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    name = "model.layers.0.mlp.down_proj.weight"
    rebuilt_w, original_w = base.state_dict()[name], original.state_dict()[name]
    assert not torch.equal(rebuilt_w, original_w)  # the 4-bit image differs from the original
    assert (rebuilt_w - original_w).abs().max() < original_w.abs().max() / 2
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    assert merged.state_dict()[name].shape == original_w.shape


@pytest.mark.parametrize(
    "lora", [{"type": "DoRA"}, pytest.param({"type": "LoRA", "loftq_iter": 1}, marks=needs_bnb)]
)
def test_dora_and_loftq_train_on_the_gpu(tiny, tmp_path, lora):
    record = run(write_config(tmp_path, tiny, lora, export=False))
    metrics = record["passes"][0]["metrics"]
    assert metrics["device"] == "cuda"
    assert metrics["steps"] == 4 and metrics["tokens_seen"] > 0
    assert all(point["loss"] == point["loss"] for point in metrics["loss_curve"])  # no NaN
    adapter = json.loads((Path(record["passes"][0]["output_path"]) / "adapter_config.json").read_text())
    if lora["type"] == "DoRA":
        assert adapter["use_dora"] is True
    else:
        assert adapter["init_lora_weights"] == "loftq"


def test_packed_compiled_training_keeps_the_eager_padded_loss(tiny, tmp_path):
    """The pass's GPU path (packing + compiled layers) against the plain path: same first-step loss."""
    import transformers

    from slimtune.passes.lora import LoRAParams
    from slimtune.passes.lora.progress import collate
    from slimtune.passes.lora.speed import PackedCollator, compile_layers
    from slimtune.passes.lora.train import attach_adapter

    samples = []
    generator = torch.Generator().manual_seed(0)
    for n in (30, 17, 64, 9):
        ids = torch.randint(3, 300, (n,), generator=generator).tolist()
        samples.append({"input_ids": ids, "labels": ids, "attention_mask": [1] * n})
    losses = {}
    for name in ("eager-padded", "compiled-packed"):
        model = transformers.AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).cuda()
        params = LoRAParams(train_data_config="d", r=4, alpha=8, lora_dropout=0.0)
        model, _, _ = attach_adapter(model, params)
        if name == "eager-padded":
            batch = collate(samples, 0)
        else:
            compile_layers(model)
            batch = PackedCollator(0, 128)(samples)
        batch = {k: v.cuda() if hasattr(v, "cuda") else v for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        losses[name] = loss.item()
        torch._dynamo.reset()
    assert losses["compiled-packed"] == pytest.approx(losses["eager-padded"], rel=1e-4)


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize(("distributed", "world"), [("auto", 2), ("off", 1)])
def test_lora_data_parallel_over_two_gpus(tiny, tmp_path, distributed, world):
    lora = {
        "type": "LoRA",
        "distributed": distributed,
        "training_args": {"max_steps": 4, "per_device_train_batch_size": 4},
    }
    record = run(write_config(tmp_path, tiny, lora, export=False))
    metrics = record["passes"][0]["metrics"]
    assert metrics["world_size"] == world
    assert metrics["steps"] == 4
    assert (Path(record["passes"][0]["output_path"]) / "adapter_model.safetensors").is_file()
