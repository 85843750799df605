"""The LoRA / QLoRA / DoRA pass's run function: checks what this device can honour before any weights load,
then trains in this process or, over several GPUs, in one torchrun worker per GPU."""

from __future__ import annotations

from slimtune.models.ref import ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.lora.checks import check
from slimtune.passes.lora.params import LoRAParams


def run(ctx: PassContext, params: LoRAParams) -> ModelRef:
    check(ctx, params)
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
