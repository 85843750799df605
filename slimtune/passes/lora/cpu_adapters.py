"""The adapters on the CPU: dropout masks drawn by a faster generator, inputs left in bf16 under autocast.

On the CPU, torch's dropout draws each element's keep/drop from the Mersenne Twister one element at a time:
3.6 ms for one 1024 x 576 activation on this project's 2-core Xeon, 120 times per 1024-token forward of
SmolLM2-135M with the source document's LoRA (q/k/v/o, dropout 0.1): about a sixth of the training step
(measured: 4.29 s per 1024-token forward + backward with dropout, 3.60 s without). This module draws the mask
from numpy's PCG64 as 16-bit integers (1.5 ms for the same activation) and keeps an element where its draw is
at or above round(p x 65536): the drop probability is p to within 2^-17, the kept values are scaled by the
inverse of the exact keep probability, so the expectation is unchanged, as with torch's dropout. The mask is
applied as a 0/1 tensor in the input's dtype: `torch.where` and products with a bool mask run several times
slower on the CPU than a bf16 x bf16 product (on the 2-core AMD EPYC: 3.05 ms forward + backward per
1024 x 576 bf16 activation with `torch.where`, 1.2 ms this way; 3.59 -> 3.46 s per 1024-token step).

The generator is seeded from torch's generator at every call: a run is reproducible from its seed, and a run
resumed from a checkpoint (whose torch generator state the Trainer restores) draws the masks the uninterrupted
run would have drawn. The masks themselves differ from torch's (another generator), as two seeds' would.

Under bf16 autocast peft casts each adapter's input from the bf16 base to the adapters' fp32 before the dropout,
and autocast casts it back to bf16 for the product: a copy there and back per adapter. `keep_input_dtype` leaves
the input in bf16, so the dropout reads and writes half the bytes; the numbers are the same (x times the dropout
scale, rounded to bf16 once, either way).
"""

from __future__ import annotations

from functools import cache
from typing import Any

KEEP_LEVELS = 65536  # the draws are 16-bit


@cache  # one class: torch is imported lazily, so the class is made on first use
def _module_class():
    import numpy as np
    import torch

    class FastDropout(torch.nn.Module):
        """Inverted dropout like `torch.nn.Dropout(p)`, its mask drawn by numpy from a seed drawn by torch."""

        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = float(p)
            drop = round(self.p * KEEP_LEVELS)
            self.threshold = drop - KEEP_LEVELS // 2  # compared with the draws read as signed 16-bit
            self.scale = KEEP_LEVELS / (KEEP_LEVELS - drop)

        def forward(self, x):
            if not self.training or self.p == 0.0 or x.numel() == 0:
                return x
            seed = int(torch.randint(0, 2**62, (1,)).item())
            words = np.random.default_rng(seed).bit_generator.random_raw(-(-x.numel() // 4))
            draws = torch.from_numpy(words.view(np.int16)[: x.numel()]).view(x.shape)
            # a 0/1 mask in x's dtype and two products: bf16 x bf16 products are vectorized, while
            # torch.where and products with a bool mask take several times longer on the CPU
            keep = (draws >= self.threshold).view(torch.uint8).to(x.dtype)
            return x.mul(self.scale).mul_(keep)

        def extra_repr(self) -> str:
            return f"p={self.p}"

    return FastDropout


def use_fast_dropout(model: Any) -> int:
    """Replace the adapters' `torch.nn.Dropout` modules (peft's `lora_dropout`) with FastDropout; the number
    replaced. Only for training on the CPU: on a GPU torch's own dropout is already fast."""
    import torch

    fast = _module_class()
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if type(dropout) is torch.nn.Dropout and dropout.p > 0:
                dropouts[name] = fast(dropout.p).train(dropout.training)
                replaced += 1
    return replaced


def keep_input_dtype(model: Any) -> int:
    """Under bf16 autocast: stop peft casting plain LoRA layers' inputs to the adapters' dtype (autocast casts
    them for the products anyway); the number of layers changed. Not for DoRA and other variants, whose
    extra arithmetic reads the input's dtype."""
    changed = 0
    for module in model.modules():
        if getattr(module, "cast_input_dtype_enabled", False) and not getattr(module, "lora_variant", None):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed
