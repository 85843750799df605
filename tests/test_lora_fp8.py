"""The frozen base in fp8 (slimtune.passes.lora.fp8): numerics against the bf16 product, which layers are
converted, when the LoRA pass turns it on, and (on a GPU with fp8 tensor cores) a training run with it.

torch's CPU build has `_scaled_mm` for float8 too, so everything but the GPU run is checked here."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from slimtune.errors import UserError  # noqa: E402
from slimtune.passes.lora import LoRAParams  # noqa: E402
from slimtune.passes.lora.fp8 import convert_frozen_linears, make_fp8_linear, quantize_rows  # noqa: E402
from slimtune.passes.lora.speed import speed_plan  # noqa: E402


def rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def test_quantize_rows_round_trips_within_e4m3_precision():
    t = torch.randn(32, 64) * torch.logspace(-3, 3, 32)[:, None]  # rows of very different magnitude
    q, scale = quantize_rows(t)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (32, 1)
    back = q.float() * scale
    assert rel(back, t) < 0.04  # 3 mantissa bits: ~2% rms per element
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((32,), 448.0))  # each row uses the full range


FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not FP8_GPU, reason="no fp8 GPU")]),
]


@pytest.mark.parametrize("device", DEVICES)  # cuda: torch._scaled_mm; cpu: the same arithmetic in fp32
@pytest.mark.parametrize("rows", [16, 7])  # 7: padded to the 16 rows _scaled_mm wants
def test_fp8_linear_forward_and_input_gradient_match_bf16(rows, device):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96, bias=True).bfloat16().requires_grad_(False).to(device)
    fp8 = make_fp8_linear(linear)
    x = torch.randn(2, rows, 64, dtype=torch.bfloat16, requires_grad=True, device=device)
    ref_x = x.detach().clone().requires_grad_(True)
    y, ref = fp8(x), linear(ref_x)
    assert y.shape == ref.shape == (2, rows, 96) and y.dtype == torch.bfloat16
    assert rel(y, ref) < 0.06
    grad = torch.randn_like(ref, dtype=torch.float32)
    (y.float() * grad).sum().backward()
    (ref.float() * grad).sum().backward()
    assert rel(x.grad, ref_x.grad) < 0.06
    # a wrong layout or scale would be off by far more than fp8 rounding: prove the check can fail
    assert rel(y, linear(ref_x * 1.5)) > 0.3


def test_fp8_linear_in_an_fp32_model_returns_fp32():
    """An fp32 base without autocast (training on the CPU, or torch_dtype float32): the layer hands back what
    nn.Linear would, so the rest of the model sees its own dtype."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).requires_grad_(False)
    fp8 = make_fp8_linear(linear)
    x = torch.randn(16, 64, requires_grad=True)
    y = fp8(x)
    assert y.dtype == torch.float32 and rel(y, linear(x)) < 0.06
    y.sum().backward()
    assert x.grad.dtype == torch.float32


def test_conversion_replaces_frozen_linears_only_and_the_adapter_still_learns(tmp_path):
    from peft import LoraConfig, get_peft_model
    from tiny_models import make_tiny_model
    from transformers import AutoModelForCausalLM

    path = make_tiny_model("phi3", tmp_path / "phi3")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    model.config.tie_word_embeddings = False
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["qkv_proj", "o_proj"]))
    frozen = [
        n for n, m in model.named_modules() if type(m) is torch.nn.Linear and not m.weight.requires_grad
    ]
    count = convert_frozen_linears(model)
    assert count == len(frozen) > 0
    kinds = {n: type(m).__name__ for n, m in model.named_modules()}
    assert all(kinds[n] == "Fp8FrozenLinear" for n in frozen)
    assert any("lora_A" in n and kinds[n] == "Linear" for n in kinds)  # adapters untouched
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ids = torch.randint(0, 300, (2, 16))
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
    assert torch.isfinite(loss)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed)


def test_tied_output_head_stays_bf16(tmp_path):
    from tiny_models import make_tiny_model
    from transformers import AutoModelForCausalLM

    path = make_tiny_model("llama", tmp_path / "llama")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).requires_grad_(False)
    model.get_output_embeddings().weight = model.get_input_embeddings().weight  # tied, as SmolLM2's is
    assert convert_frozen_linears(model) > 0
    assert type(model.get_output_embeddings()) is torch.nn.Linear
    untied = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).requires_grad_(False)
    convert_frozen_linears(untied)
    assert type(untied.get_output_embeddings()).__name__ == "Fp8FrozenLinear"


def test_speed_plan_turns_fp8_on_only_where_it_runs():  # see test_lora_speed for the automatic choice
    params = LoRAParams(train_data_config="d")
    assert speed_plan(params, "cpu")["fp8_base"] is False
    with pytest.raises(UserError, match="fp8 tensor cores"):
        speed_plan(LoRAParams(train_data_config="d", fp8_base=True), "cpu")
    assert speed_plan(LoRAParams(train_data_config="d", fp8_base=False), "cpu")["fp8_base"] is False


@pytest.mark.parametrize("extra", [{"quant_type": "nf4"}, {"use_dora": True}, {"quantization_aware": "int4"}])
def test_fp8_base_is_refused_with_settings_that_need_another_base(extra):
    with pytest.raises(ValueError, match="fp8_base"):
        LoRAParams(train_data_config="d", fp8_base=True, **extra)


def test_fp8_base_is_recorded_at_its_default():
    """fp8 products change the trained weights: the setting is part of the record and the cache key."""
    assert LoRAParams(train_data_config="d").model_dump()["fp8_base"] is None
    assert LoRAParams(train_data_config="d", fp8_base=False).model_dump()["fp8_base"] is False


@pytest.mark.gpu
@pytest.mark.skipif(not FP8_GPU, reason="needs a CUDA GPU with fp8 tensor cores")
def test_lora_pass_trains_with_an_fp8_base_on_the_gpu(tmp_path):
    from tiny_models import make_tiny_model
    from workflows import emotion_data_config, run_config

    model = make_tiny_model("llama", tmp_path / "llama")  # the model test_gpu_lora trains
    config = {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "systems": {"gpu": {"type": "LocalSystem", "accelerators": [{"device": "gpu"}]}},
        "host": "gpu",
        "target": "gpu",
        "data_configs": [emotion_data_config(64, answer_only=False, pad=True)],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 4,
                "alpha": 8,
                "fp8_base": True,  # asked for: a run this short is not compiled, and the default ties fp8 to that
                "train_data_config": "emotion",
                "training_args": {"max_steps": 6, "per_device_train_batch_size": 4, "logging_steps": 1},
            }
        },
        "cache_dir": "cache",
        "output_dir": "out",
    }
    record = run_config(tmp_path, config)
    metrics = record["passes"][0]["metrics"]
    assert metrics["speed"]["fp8_base"] is True and metrics["speed"]["fp8_layers"] > 0
    assert metrics["speed"]["compile_layers"] is False  # 6 steps of a tiny model: not worth compiling
    losses = [p["loss"] for p in metrics["loss_curve"]]
    assert len(losses) == 6 and all(loss == loss for loss in losses)
    assert (Path(record["passes"][0]["output_path"]) / "adapter_model.safetensors").exists()


def test_the_fp8_layer_compiles_without_a_graph_break():
    """torch.compile traces the fp8 layer's forward in one graph (the autograd Function is built when the
    layer is made: a class defined inside the traced forward broke the compiled graph there)."""
    import torch

    from slimtune.passes.lora.fp8 import make_fp8_linear

    layer = make_fp8_linear(torch.nn.Linear(32, 48).requires_grad_(False))
    x = torch.randn(4, 32, requires_grad=True)
    explained = torch._dynamo.explain(lambda t: layer(t).sum())(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_layers_with_fp8_products_share_one_compiled_graph():
    """Compiled decoder layers whose linear layers are fp8 compile once for all layers: every fp8 layer is of
    one class (a class made per layer failed Dynamo's type guard at each layer: 32 compilations of Phi-3-mini's
    layer graph, the fp8 path's 68 s first step on an H200)."""
    import torch
    from torch._dynamo.testing import CompileCounter

    from slimtune.passes.lora.fp8 import make_fp8_linear

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = make_fp8_linear(torch.nn.Linear(32, 64).requires_grad_(False))
            self.down = make_fp8_linear(torch.nn.Linear(64, 32).requires_grad_(False))

        def forward(self, x):
            return x + self.down(torch.nn.functional.silu(self.up(x)))

    torch._dynamo.reset()
    counter = CompileCounter()
    blocks = [Block() for _ in range(4)]
    for block in blocks:
        block.compile(backend=counter)
    x = torch.randn(16, 32)
    for block in blocks:
        x = block(x)
    assert counter.frame_count == 1, f"{counter.frame_count} compilations for 4 layers of one shape"
    assert type(blocks[0].up) is type(blocks[3].down)
