"""Causal attention for bf16 training on the CPU (passes/lora/cpu_attention.py): as close to float32 attention
as sdpa's own bf16 kernel, used only for the calls it covers, installed only while training runs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from slimtune.passes.lora import cpu_attention  # noqa: E402
from slimtune.passes.lora.cpu_attention import MAX_KEPT_BYTES, block_attention, causal_block_attention, covers  # noqa: E402


def _inputs(batch, q_heads, kv_heads, length, dim=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v, grad = (
        torch.randn(batch, h, length, dim, generator=generator).to(torch.bfloat16)
        for h in (q_heads, kv_heads, kv_heads, q_heads)
    )
    return q, k, v, grad


def _attend(fn, q, k, v, grad, dtype):
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    out.backward(grad.to(dtype))
    return [out.detach().float()] + [t.grad.float() for t in leaves]


def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


@pytest.mark.parametrize(
    "shape",
    [(1, 9, 3, 300), (2, 4, 4, 128), (1, 2, 1, 77), (1, 4, 2, 129)],
    ids=["gqa-uneven-blocks", "batch-2-one-block", "short", "one-row-past-a-block"],
)
def test_output_and_gradients_are_as_close_to_float32_as_sdpas_bf16(shape):
    q, k, v, grad = _inputs(*shape)
    scale = q.shape[-1] ** -0.5
    reference = _attend(_sdpa, q, k, v, grad, torch.float32)
    ours = _attend(lambda a, b, c: causal_block_attention(a, b, c, scale), q, k, v, grad, torch.bfloat16)
    theirs = _attend(_sdpa, q, k, v, grad, torch.bfloat16)
    for name, mine, sdpa, ref in zip(("out", "dq", "dk", "dv"), ours, theirs, reference, strict=True):
        error = ((mine - ref).norm() / ref.norm()).item()
        sdpa_error = ((sdpa - ref).norm() / ref.norm()).item()
        # bf16 rounding of the inputs and outputs alone is ~2e-3 relative; a wrong mask or a missing term is ~1
        assert error < max(2 * sdpa_error, 5e-3), (name, error, sdpa_error)


def test_the_future_never_reaches_the_past():
    q, k, v, _ = _inputs(1, 2, 2, 200)
    out = causal_block_attention(q, k, v, 0.2)
    changed = v.clone()
    changed[:, :, 150:] += 10  # later values only
    again = causal_block_attention(q, k, changed, 0.2)
    assert torch.equal(out[:, :, :150], again[:, :, :150])
    assert not torch.equal(out[:, :, 150:], again[:, :, 150:])


def test_covers_only_the_calls_it_computes_the_same_way():
    q, k, v, _ = _inputs(1, 4, 2, 64)
    q.requires_grad_()
    assert covers(q, k, v, None, 0.0, {})
    mask = torch.ones(1, 1, 64, 64, dtype=torch.bool)
    refused = {
        "an explicit mask (padding, packed rows)": (q, k, v, mask, 0.0, {}),
        "attention dropout": (q, k, v, None, 0.1, {}),
        "not causal": (q, k, v, None, 0.0, {"is_causal": False}),
        "a window shorter than the sequence": (q, k, v, None, 0.0, {"sliding_window": 16}),
        "float32 inputs": (q.float(), k.float(), v.float(), None, 0.0, {}),
        "keys of another length (a cache)": (q, k[:, :, :32], v[:, :, :32], None, 0.0, {}),
        "sinks": (q, k, v, None, 0.0, {"s_aux": torch.zeros(4)}),
    }
    for why, args in refused.items():
        assert not covers(*args), why
    assert covers(q, k, v, None, 0.0, {"sliding_window": 64})
    with torch.no_grad():
        assert not covers(q, k, v, None, 0.0, {}), "evaluation keeps sdpa (nothing to keep for a backward)"
    long = torch.empty(1, 9, 8192, 64, dtype=torch.bfloat16, requires_grad=True)
    kv = torch.empty(1, 3, 8192, 64, dtype=torch.bfloat16)
    assert cpu_attention.kept_bytes(1, 9, 8192) > MAX_KEPT_BYTES
    assert not covers(long, kv, kv, None, 0.0, {}), "too much to keep: sdpa"


def test_training_uses_it_only_while_the_callback_is_on(tmp_path, monkeypatch):
    import transformers
    from tiny_models import make_tiny_model
    from transformers.modeling_utils import AttentionInterface

    folder = make_tiny_model("llama", tmp_path / "tiny")
    # the base in bf16, as the pass loads it on a CPU with bf16 units (a float32 base makes q float32 after rotary)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="sdpa", dtype=torch.bfloat16
    ).train()
    calls = []
    real = cpu_attention.causal_block_attention

    def counted(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(cpu_attention, "causal_block_attention", counted)
    original = AttentionInterface._global_mapping["sdpa"]
    callback = block_attention()
    ids = torch.randint(3, 200, (2, 24))

    def forward_backward(**batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False, **batch).loss
        loss.backward()
        return loss.item()

    before = forward_backward()
    assert calls == []  # not installed yet
    callback.on_train_begin(None, None, None)
    during = forward_backward()
    layers = model.config.num_hidden_layers
    assert len(calls) == layers
    assert during == pytest.approx(before, rel=2e-2)
    padded = torch.ones_like(ids)
    padded[0, -5:] = 0
    forward_backward(attention_mask=padded)
    assert len(calls) == layers, "a padding mask goes to sdpa"
    callback.on_train_end(None, None, None)
    assert AttentionInterface._global_mapping["sdpa"] is original
    forward_backward()
    assert len(calls) == layers
