"""The frozen base in fp8 while the LoRA adapters train: the base's matrix products at fp8 speed.

A LoRA run never updates the base weights, so its linear layers only ever do two products: the forward
`y = x Wᵀ` and, for the gradient that flows on to earlier layers, `dx = dy W`. On GPUs with fp8 tensor cores
(compute capability 8.9 and later: Ada, Hopper, Blackwell) both run as fp8 products (`torch._scaled_mm`) at
about twice the bf16 rate. Each weight is stored twice in float8_e4m3, once per product's layout, each with
one scale per row of that layout; the bf16 weight is dropped, so the base takes the memory it took in bf16.
Activations and incoming gradients are scaled per row (per token) to e4m3 just before each product.

What it changes: the base's products carry fp8 rounding (about 2-3% relative error per output element, as
fp8 inference does), the adapters, their products and everything else stay as they were (bf16 autocast,
fp32 adapter weights). The adapter is saved and merged against the original bf16/fp32 base as usual.
`fp8_base: false` on the LoRA pass turns it off.
"""

from __future__ import annotations

from functools import cache
from typing import Any

E4M3_MAX = 448.0
ALIGN = 16  # _scaled_mm wants both dimensions of each weight to be multiples of 16


def fp8_available(device: str) -> bool:
    """CUDA with fp8 tensor cores (compute capability 8.9 or later)."""
    if device != "cuda":
        return False
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def quantize_rows(t):
    """(e4m3 tensor, fp32 scale per row) with t ≈ q * scale[:, None]."""
    import torch

    amax = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    scale = amax / E4M3_MAX
    q = (t.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale


def _product(a, w_q, w_scale, out_dtype):
    """a (..., K) times the stored weight layout w_q (N, K)ᵀ, a scaled per row on the fly."""
    import torch

    lead = a.shape[:-1]
    a2 = a.reshape(-1, a.shape[-1])
    rows = a2.shape[0]
    pad = -rows % ALIGN
    if pad:
        a2 = torch.nn.functional.pad(a2, (0, 0, 0, pad))
    a_q, a_scale = quantize_rows(a2)
    if a_q.is_cuda:
        out = torch._scaled_mm(
            a_q, w_q.t(), scale_a=a_scale, scale_b=w_scale.view(1, -1), out_dtype=out_dtype
        )
    else:  # the same arithmetic for CPU tests (torch's CPU _scaled_mm takes one scale per tensor only)
        out = ((a_q.float() * a_scale) @ (w_q.float() * w_scale.view(-1, 1)).t()).to(out_dtype)
    if pad:
        out = out[:rows]
    return out.reshape(*lead, w_q.shape[0])


class _Fp8Product:
    """Built lazily so importing this module does not import torch; built when a layer is made, never in a
    forward (torch.compile cannot trace a class definition: it would break the compiled graph there)."""

    fn: Any = None

    @classmethod
    def get(cls):
        if cls.fn is None:
            import torch

            class Fn(torch.autograd.Function):
                @staticmethod
                def forward(ctx, x, w_fwd, s_fwd, w_bwd, s_bwd):
                    ctx.save_for_backward(w_bwd, s_bwd)
                    ctx.dtype = x.dtype
                    # bf16 out: what _scaled_mm writes with per-row scales (and the CPU stand-in rounds to)
                    return _product(x, w_fwd, s_fwd, torch.bfloat16)

                @staticmethod
                def backward(ctx, grad):
                    w_bwd, s_bwd = ctx.saved_tensors
                    return _product(grad, w_bwd, s_bwd, ctx.dtype), None, None, None, None

            cls.fn = Fn
        return cls.fn


@cache  # one class for every layer: torch is imported lazily, so the class is made on first use
def _layer_class():
    """The fp8 layer's class, made once. One class matters for compiled layers: Dynamo guards each compiled
    decoder layer's graph on the types of its modules, so a class made per layer failed the guard at every
    layer and compiled the graph again for each (32 compilations for Phi-3-mini instead of one)."""
    import torch

    class Fp8FrozenLinear(torch.nn.Module):
        def __init__(self, source: torch.nn.Linear) -> None:
            super().__init__()
            self.in_features, self.out_features = source.in_features, source.out_features
            w = source.weight.detach()
            w_fwd, s_fwd = quantize_rows(w)  # (out, in): y = x Wᵀ, one scale per output feature
            w_bwd, s_bwd = quantize_rows(w.t().contiguous())  # (in, out): dx = dy W, one per input feature
            for name, value in (("w_fwd", w_fwd), ("s_fwd", s_fwd), ("w_bwd", w_bwd), ("s_bwd", s_bwd)):
                self.register_buffer(name, value, persistent=False)
            self.bias = source.bias
            # read by code that asks a layer for its dtype/device (peft, transformers); never multiplied
            self.register_buffer("weight", torch.empty(0, dtype=w.dtype, device=w.device), persistent=False)
            _Fp8Product.get()

        def forward(self, x):
            # the dtype a plain linear layer would return here: autocast's, else the input's
            device = x.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
            y = _Fp8Product.get().apply(x, self.w_fwd, self.s_fwd, self.w_bwd, self.s_bwd).to(dtype)
            return y if self.bias is None else y + self.bias.to(dtype)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 (frozen)"

    return Fp8FrozenLinear


def make_fp8_linear(linear: Any) -> Any:
    """An nn.Module doing `linear`'s product in fp8 (frozen, no weight gradient); `linear`'s weight is not
    kept."""
    return _layer_class()(linear)


def convert_frozen_linears(model: Any, *, include_head: bool = True) -> int:
    """Replace every frozen nn.Linear (the base layers under the LoRA adapters included) by its fp8 form.
    Layers that train (adapters, modules_to_save) and odd-shaped layers stay as they are. Returns how
    many were replaced."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child.weight.requires_grad:
                continue
            if child.in_features % ALIGN or child.out_features % ALIGN:
                continue
            if child is head and not include_head:
                continue
            if child is head and _tied(model):
                continue  # the head shares its weight with the input embedding, which stays bf16
            setattr(parent, name, make_fp8_linear(child))
            count += 1
    return count


def _tied(model: Any) -> bool:
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return head is not None and embed is not None and head.weight is embed.weight
