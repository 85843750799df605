"""Quantization-aware LoRA: the fake int4 grid equals onnxruntime's, and LoRA(quantization_aware) -> ModelBuilder runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from workflows import emotion_data_config, run_config

from slimtune.models.fake_quant import fake_quantize_int4, fake_quantize_model_int4


def ort_dequantized(weight: np.ndarray, block_size: int) -> np.ndarray:
    """onnxruntime's own symmetric int4 MatMulNBits quantization of a [out, in] weight, dequantized."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    b = np.ascontiguousarray(weight.T.astype(np.float32))  # the MatMul's B: [K, N]
    k, n = b.shape
    k_blocks = (k + block_size - 1) // block_size
    padded = np.pad(b, ((0, k_blocks * block_size - k), (0, 0)))
    packed = np.zeros((n, k_blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=np.float32)
    zero_points = np.zeros((n, (k_blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, padded, scales, zero_points, block_size, n, k_blocks * block_size, True)
    q = np.empty((n, k_blocks, block_size), dtype=np.int32)
    q[..., 0::2] = packed & 15
    q[..., 1::2] = packed >> 4
    return ((q - 8).astype(np.float32) * scales[..., None]).reshape(n, -1)[:, :k]


def matmulnbits_weights(onnx_path: Path) -> dict[str, np.ndarray]:
    """Every MatMulNBits node's weight of an ONNX model, dequantized to [N, K]."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        k, n, bs = attrs["K"], attrs["N"], attrs["block_size"]
        assert len(node.input) < 4 or not node.input[3], "expected symmetric int4 (no zero points)"
        packed = numpy_helper.to_array(inits[node.input[1]]).reshape(n, -1)
        scales = numpy_helper.to_array(inits[node.input[2]]).reshape(n, -1)
        q = np.empty((n, packed.shape[1] * 2), dtype=np.int32)
        q[:, 0::2] = packed & 15
        q[:, 1::2] = packed >> 4
        found[node.name] = ((q.reshape(n, -1, bs) - 8).astype(np.float32) * scales[..., None]).reshape(n, -1)[
            :, :k
        ]
    return found


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_tiny_model

    root = tmp_path_factory.mktemp("tiny_fq")
    return {arch: make_tiny_model(arch, root / arch) for arch in ("llama", "phi3")}


@pytest.mark.parametrize("block_size", [16, 32, 64])
@pytest.mark.parametrize("shape", [(48, 64), (40, 72), (7, 128)])  # 72: K not a multiple of the block
def test_fake_quant_equals_onnxruntime_quantizer(shape, block_size):
    import torch

    torch.manual_seed(0)
    w = torch.randn(*shape) * 0.05
    w[0, :4] = torch.tensor([0.3, -0.3, 0.1, 0.0])  # a magnitude tie inside a block
    w[1, :] = 0.0  # an all-zero row: scale 0
    w[2, 0:2] = torch.tensor([-0.4, 0.35])  # values landing on half-steps of the grid
    expected = ort_dequantized(w.numpy(), block_size)
    got = fake_quantize_int4(w, block_size).numpy()
    np.testing.assert_array_equal(got, expected)
    # on the grid: quantizing again changes nothing
    np.testing.assert_array_equal(fake_quantize_int4(torch.from_numpy(got), block_size).numpy(), got)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_fake_quant_equals_quantizer_on_tiny_model_weights(tiny, arch):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny[arch], dtype=torch.float32)
    weights = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    changed = fake_quantize_model_int4(model, 32)
    assert sorted(changed) == sorted(weights)
    modules = dict(model.named_modules())
    for name, original in weights.items():
        np.testing.assert_array_equal(
            modules[name].weight.detach().numpy(), ort_dequantized(original.numpy(), 32)
        )
    # untied embeddings stay float, as the builder leaves them by default
    assert not torch.equal(model.get_input_embeddings().weight, model.get_output_embeddings().weight)


def _build_int4(source: Path, folder: Path) -> Path:
    from slimtune.models.ref import ModelMeta, ModelRef
    from slimtune.passes.context import PassContext
    from slimtune.passes.model_builder import ModelBuilderParams
    from slimtune.passes.model_builder.run import run

    (folder / "out").mkdir(parents=True)
    (folder / "work").mkdir()
    ctx = PassContext(
        input=ModelRef(str(source), "hf"),
        meta=ModelMeta(),
        output_dir=folder / "out",
        work_dir=folder / "work",
        device="cpu",
        execution_provider="cpu",
        log=lambda s: None,
    )
    run(ctx, ModelBuilderParams(precision="int4"))
    return folder / "out" / "model.onnx"


def test_fake_quant_equals_the_builders_int4_model(tiny, tmp_path):
    """What the builder writes (fused q/k/v included) is exactly the fake-quantized torch weights."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny["llama"], dtype=torch.float32)
    fake_quantize_model_int4(model, 32)
    sd = model.state_dict()
    built = matmulnbits_weights(_build_int4(tiny["llama"], tmp_path))

    def torch_weight(node: str) -> torch.Tensor:  # /model/layers.0/attn/qkv_proj/MatMul_Q4
        if node.startswith("/lm_head/"):
            return sd["lm_head.weight"]
        parts = node.split("/")
        layer, kind, proj = parts[2].split(".")[1], parts[3], parts[4]
        prefix = f"model.layers.{layer}." + ("self_attn." if kind == "attn" else "mlp.")
        if proj == "qkv_proj":
            return torch.cat([sd[prefix + f"{p}_proj.weight"] for p in "qkv"])
        if proj == "gate_up_proj":
            return torch.cat([sd[prefix + "gate_proj.weight"], sd[prefix + "up_proj.weight"]])
        return sd[prefix + proj + ".weight"]

    assert (
        "/lm_head/MatMul_Q4" in built and len(built) >= 1 + 2 * 4
    )  # head + per layer qkv, o, mlp (fused or not)
    for node, weight in built.items():
        np.testing.assert_array_equal(torch_weight(node).numpy(), weight, err_msg=node)


def test_tied_head_and_embeddings_are_quantized_together(tiny, tmp_path):
    """A tied head is exported as one int4 matrix that the embedding (GatherBlockQuantized) shares."""
    import onnx
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny["llama"], dtype=torch.float32)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    tied = tmp_path / "tied"
    model.save_pretrained(tied, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(tiny["llama"]).save_pretrained(tied)

    model = transformers.AutoModelForCausalLM.from_pretrained(tied, dtype=torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    original = model.lm_head.weight.detach().clone()
    fake_quantize_model_int4(model, 32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    np.testing.assert_array_equal(
        model.model.embed_tokens.weight.detach().numpy(), ort_dequantized(original.numpy(), 32)
    )

    onnx_path = _build_int4(tied, tmp_path / "build")
    ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    assert "GatherBlockQuantized" in ops  # the builder quantizes the shared embedding too
    np.testing.assert_array_equal(
        matmulnbits_weights(onnx_path)["/lm_head/MatMul_Q4"], model.lm_head.weight.detach().numpy()
    )


def test_params():
    from pydantic import ValidationError

    from slimtune.passes.lora import LoRAParams

    off = LoRAParams(train_data_config="d").model_dump(mode="json")
    # every parameter is recorded (run.json) and keyed, defaults included
    assert off["quantization_aware"] is None and off["quantization_block_size"] == 32
    on = LoRAParams(train_data_config="d", quantization_aware="int4", quantization_block_size=64)
    assert on.model_dump(mode="json")["quantization_aware"] == "int4"
    assert on.model_dump(mode="json")["quantization_block_size"] == 64
    with pytest.raises(ValidationError, match="power of two"):
        LoRAParams(train_data_config="d", quantization_aware="int4", quantization_block_size=24)
    with pytest.raises(ValidationError, match="QLoRA"):
        LoRAParams(train_data_config="d", quantization_aware="int4", quant_type="nf4")
    with pytest.raises(ValidationError):
        LoRAParams(train_data_config="d", quantization_aware="int8")


def test_quantization_aware_lora_then_builder_end_to_end(tiny, tmp_path):
    """LoRA(quantization_aware int4) -> ModelBuilder int4 with the unmerged adapter; the ONNX model runs."""
    import onnxruntime_genai as og

    config = {
        "input_model": {"type": "HfModel", "model_path": str(tiny["llama"])},
        "data_configs": [emotion_data_config(None)],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 4,
                "alpha": 8,
                "train_data_config": "emotion",
                "quantization_aware": "int4",
                "quantization_block_size": 32,
                "training_args": {
                    "max_steps": 2,
                    "per_device_train_batch_size": 4,
                    "logging_steps": 1,
                    "save_steps": 2,
                },
            },
            "builder": {"type": "ModelBuilder", "precision": "int4", "int4_block_size": 32},
        },
        "cache_dir": "cache",
        "output_dir": "out",
    }
    record = run_config(tmp_path, config)
    passes = record["passes"]
    assert [p["type"] for p in passes] == ["LoRA", "ModelBuilder"]
    assert passes[0]["params"]["quantization_aware"] == "int4"

    onnx_dir = next(p for p in (tmp_path / "out").rglob("genai_config.json")).parent
    import onnx

    names = [n.name for n in onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph.node]
    assert any("/lora_A/" in n for n in names) and any(
        "/lora/Add" in n for n in names
    )  # adapter kept unmerged

    model = og.Model(str(onnx_dir))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=15, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens([1, 5, 6, 7, 8, 9, 10, 11, 12, 13])
    while not generator.is_done():
        generator.generate_next_token()
