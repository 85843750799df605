"""The LoRA / QLoRA / DoRA pass's run function: checks what this device can honour before any weights load,
then trains in this process or, over several GPUs, in one torchrun worker per GPU."""

from __future__ import annotations

from slimtune.errors import UserError
from slimtune.models.ref import ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.lora.params import LoRAParams


def run(ctx: PassContext, params: LoRAParams) -> ModelRef:
    if ctx.input.kind != "hf":
        raise UserError(f"LoRA needs a Hugging Face model, got a {ctx.input.kind} model")
    if params.quantized:
        _check_qlora_possible(ctx)
    from slimtune.passes.lora.speed import speed_plan

    speed_plan(params, ctx.device)  # a setting this device cannot honour fails here, before any weights load
    from slimtune.passes.lora.distributed import in_worker, run_distributed, world_size

    world = world_size(params.distributed, ctx.device)
    if not in_worker() and (world > 1 or (ctx.device == "cuda" and _visible_gpus() > 1)):
        # also one GPU of several goes through torchrun: a plain process that sees several GPUs gets
        # torch DataParallel from the Trainer, which is slower than DDP and breaks compiled layers
        return run_distributed(ctx, params, world)
    from slimtune.passes.lora.train import train

    return train(ctx, params)


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


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
