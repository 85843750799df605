"""The adapters on the CPU (passes/lora/cpu_adapters.py): torch's dropout in distribution, drawn faster; inputs
left in bf16 under autocast with the same numbers."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from slimtune.passes.lora.cpu_adapters import KEEP_LEVELS, _module_class, keep_input_dtype, use_fast_dropout  # noqa: E402


def _dropout(p: float):
    return _module_class()(p).train()


def test_drops_the_asked_share_and_keeps_the_expectation():
    x = torch.ones(1000, 1000)
    torch.manual_seed(0)
    y = _dropout(0.1)(x)
    dropped = (y == 0).float().mean().item()
    # 1e6 draws: the share's standard deviation is 3e-4
    assert abs(dropped - 0.1) < 2e-3
    assert abs(y.mean().item() - 1.0) < 5e-3
    kept = y[y != 0]
    assert torch.allclose(kept, torch.full_like(kept, KEEP_LEVELS / (KEEP_LEVELS - round(0.1 * KEEP_LEVELS))))


def test_the_mask_follows_torchs_generator():
    x = torch.randn(64, 96)
    layer = _dropout(0.3)
    torch.manual_seed(5)
    first = layer(x)
    torch.manual_seed(5)
    again = layer(x)
    torch.manual_seed(6)
    other = layer(x)
    assert torch.equal(first, again)  # a resumed run (its torch generator restored) draws the same masks
    assert not torch.equal(first, other)
    assert not torch.equal(layer(x), layer(x))  # each call a new mask


def test_the_gradient_passes_through_the_kept_elements_scaled():
    x = torch.randn(32, 48, requires_grad=True)
    torch.manual_seed(1)
    y = _dropout(0.5)(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.equal(x.grad[~kept], torch.zeros_like(x.grad[~kept]))
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 2.0))


def test_evaluation_and_zero_p_leave_the_input_alone():
    x = torch.randn(8, 8)
    assert torch.equal(_dropout(0.1).eval()(x), x)
    assert torch.equal(_dropout(0.0)(x), x)
    assert _dropout(0.1)(torch.empty(0, 4)).shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keeps_the_dtype(dtype):
    assert _dropout(0.2)(torch.randn(4, 4, dtype=dtype)).dtype == dtype


def _tiny_lora(tmp_path, dropout: float, dtype=None, **lora_kwargs):
    import transformers
    from peft import LoraConfig, get_peft_model
    from tiny_models import make_tiny_model

    folder = make_tiny_model("llama", tmp_path / "llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    lora = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "v_proj"], **lora_kwargs
    )
    return get_peft_model(model, lora, autocast_adapter_dtype=True)


def test_replaces_the_adapters_dropouts_and_trains(tmp_path):
    model = _tiny_lora(tmp_path, 0.1)
    layers = model.base_model.model.config.num_hidden_layers
    assert use_fast_dropout(model) == 2 * layers
    assert use_fast_dropout(model) == 0  # nothing left to replace
    names = {type(m).__name__ for m in model.modules()}
    assert "FastDropout" in names and "Dropout" not in names
    model.train()
    ids = torch.randint(3, 100, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bf16_inputs_under_autocast_give_the_same_numbers(tmp_path):
    """A bf16 base with fp32 adapters under bf16 autocast, as the pass trains on CPUs with bf16 units: the loss
    and every adapter gradient are bit for bit those of peft's own input cast."""
    model = _tiny_lora(tmp_path, 0.0, dtype=torch.bfloat16, init_lora_weights=False)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    ids = torch.randint(3, 100, (2, 16), generator=torch.Generator().manual_seed(0))

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    loss_cast, grads_cast = loss_and_grads()
    assert keep_input_dtype(model) == 2 * model.base_model.model.config.num_hidden_layers
    loss_kept, grads_kept = loss_and_grads()
    assert torch.equal(loss_cast, loss_kept)
    assert grads_cast.keys() == grads_kept.keys()
    assert all(torch.equal(grads_cast[n], grads_kept[n]) for n in grads_cast)


def test_dora_layers_keep_peft_s_cast(tmp_path):
    model = _tiny_lora(tmp_path, 0.0, use_dora=True)
    assert keep_input_dtype(model) == 0
