"""The memory estimates behind the refusal before a run: they reproduce what was measured, and move the right
way with the settings a user is told to change."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from slimtune.config.schema import DataConfig
from slimtune.passes.lora import LoRAParams
from slimtune.passes.lora.memory import training_estimate as lora_estimate
from slimtune.passes.memory import GiB, MemoryQuery
from slimtune.passes.model_builder import ModelBuilderParams, builder_estimate


@pytest.fixture(autouse=True)
def fp32_cpu(monkeypatch):
    """The measured peaks and batch sizes here are of fp32 training on the CPU: the estimate is asked as for a
    CPU without bf16 units, whatever this machine has (with them, `auto` trains the base in bf16)."""
    monkeypatch.setattr("slimtune.passes.lora.speed.cpu_has_bf16", lambda: False)


# SmolLM2-135M-Instruct, the default model: shapes from its config.json
SMOLLM2 = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
}
# peak RSS of LoRA r 16 on every linear layer, fp32 on CPU, measured here (2 AdamW steps, sdpa attention)
MEASURED_PEAK_GIB = {(1, 128): 1.37, (8, 128): 4.87, (8, 256): 7.94}


def fake_model(folder: Path, config: dict) -> Path:
    """config.json plus a safetensors file that holds only a header: the estimate reads shapes, not weights."""
    h, i, kv = config["hidden_size"], config["intermediate_size"], 192
    shapes = {"model.embed_tokens.weight": [config["vocab_size"], h], "model.norm.weight": [h]}
    for n in range(config["num_hidden_layers"]):
        for name, shape in {
            "self_attn.q_proj": [h, h],
            "self_attn.k_proj": [kv, h],
            "self_attn.v_proj": [kv, h],
            "self_attn.o_proj": [h, h],
            "mlp.gate_proj": [i, h],
            "mlp.up_proj": [i, h],
            "mlp.down_proj": [h, i],
            "input_layernorm": [h],
            "post_attention_layernorm": [h],
        }.items():
            shapes[f"model.layers.{n}.{name}.weight"] = shape
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4
        for d in shape:
            size *= d
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    folder.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def params(batch: int = 8, **args) -> LoRAParams:
    return LoRAParams(
        r=16,
        train_data_config="d",
        training_args={"per_device_train_batch_size": batch, **args},
    )


def training_estimate(name: str, pass_type: str, params: LoRAParams, model: Path, seq: int, device: str):
    """The LoRA pass's estimate for a training data config of `seq`-token rows."""
    data = DataConfig(name="d", pre_process_data_config={"max_seq_len": seq})
    return lora_estimate(MemoryQuery(name, pass_type, params, model, device, {"train_data_config": data}))


@pytest.mark.parametrize(("shape", "measured"), MEASURED_PEAK_GIB.items())
def test_training_estimate_reproduces_measured_peaks(tmp_path, shape, measured):
    model = fake_model(tmp_path / "smollm2", SMOLLM2)
    batch, seq = shape
    estimate = training_estimate("lora", "LoRA", params(batch), model, seq, "cpu")
    assert estimate.total / GiB == pytest.approx(measured, rel=0.10)


def test_training_estimate_follows_the_advice_it_gives(tmp_path):
    model = fake_model(tmp_path / "smollm2", SMOLLM2)
    base = training_estimate("lora", "LoRA", params(8), model, 256, "cpu").total
    assert training_estimate("lora", "LoRA", params(4), model, 256, "cpu").total < base
    assert training_estimate("lora", "LoRA", params(8), model, 128, "cpu").total < base
    checkpointed = training_estimate(
        "lora", "LoRA", params(8, gradient_checkpointing=True), model, 256, "cpu"
    )
    assert checkpointed.total < base / 2
    assert "activation_checkpointing" not in checkpointed.advice
    on_gpu = training_estimate("lora", "LoRA", params(8), model, 256, "cuda")  # bf16 base and activations
    assert on_gpu.device == "cuda" and on_gpu.total < base


def test_builder_estimate_counts_three_fp32_copies_and_can_be_switched_off(tmp_path):
    from slimtune.models.shape import fp32_weight_bytes
    from slimtune.passes.model_builder import MEMORY_FACTOR, MEMORY_OVERHEAD

    model = fake_model(tmp_path / "smollm2", SMOLLM2)
    weights = fp32_weight_bytes(model)  # from the safetensors header's shapes
    assert weights > 500e6
    query = MemoryQuery("builder", "ModelBuilder", ModelBuilderParams(), model, "cpu")
    assert builder_estimate(query).total == int(MEMORY_FACTOR * weights) + MEMORY_OVERHEAD
    off = ModelBuilderParams(extra_options={"ignore_memory_check": True})
    assert builder_estimate(MemoryQuery("builder", "ModelBuilder", off, model, "cpu")) is None


def test_auto_dtype_counts_bf16_weights_on_a_cpu_with_bf16_units(tmp_path, monkeypatch):
    """`torch_dtype: auto` trains the base in bf16 where the CPU has bf16 units: the estimate counts 2 bytes per
    weight there, 4 elsewhere."""
    from slimtune.passes.lora.memory import _dtype_bytes

    assert _dtype_bytes("auto", "cpu") == 4  # fp32_cpu: no bf16 units
    monkeypatch.setattr("slimtune.passes.lora.speed.cpu_has_bf16", lambda: True)
    assert _dtype_bytes("auto", "cpu") == 2
    assert _dtype_bytes("float32", "cpu") == 4
