"""What the device of a LoRA run cannot honour, found before any weights load (the pass's run and each
data-parallel run started by a system check the same)."""

from __future__ import annotations

from slimtune.errors import UserError
from slimtune.passes.context import PassContext
from slimtune.passes.lora.params import LoRAParams


def check(ctx: PassContext, params: LoRAParams) -> None:
    """What this device cannot honour fails here, before any weights load."""
    if ctx.input.kind != "hf":
        raise UserError(f"LoRA needs a Hugging Face model, got a {ctx.input.kind} model")
    if params.quantized:
        _check_qlora_possible(ctx)
    if params.loftq_iter or params.init_lora_weights == "loftq":
        _check_loftq_possible()
    from slimtune.passes.lora.speed import speed_plan

    speed_plan(params, ctx.device)


def _check_qlora_possible(ctx: PassContext) -> None:
    """QLoRA needs bitsandbytes on CUDA: fail before loading any weights."""
    import importlib.util

    if ctx.device != "cuda":
        raise UserError(
            "QLoRA (a 4-bit base via bitsandbytes) needs a CUDA GPU, and this run's host is the CPU. Use a "
            'plain LoRA pass (drop double_quant / quant_type), or run on a system with accelerators ["gpu"].'
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("QLoRA needs the bitsandbytes package: pip install bitsandbytes")


def _check_loftq_possible() -> None:
    """peft's LoftQ initialisation quantizes the base with bitsandbytes: without it peft raises a ValueError
    mid-run, which reached users as an internal error (seen on an H200 without bitsandbytes, 2026-11-29)."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            "LoRA pass: loftq_iter (LoftQ initialisation) needs the bitsandbytes package, which is not "
            "installed here: pip install bitsandbytes, or leave loftq_iter (and init_lora_weights: loftq) out"
        )
