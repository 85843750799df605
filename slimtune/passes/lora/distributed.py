"""Data-parallel LoRA over several GPUs of one machine: the pass starts one process per GPU with torchrun,
each runs `lora.train.train` (transformers Trainer wraps the model in torch DDP), and rank 0 saves the
adapter and hands its metrics back through a file in the pass's work folder.

The workers start from the JSON form of the pass context and parameters (ddp_job.json): the same plain data
that any other process or machine running a pass receives."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from slimtune.errors import PassFailed, UserError
from slimtune.files import write_json_atomic
from slimtune.models.ref import ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.lora.params import LoRAParams

WORKER_ENV = "SLIMTUNE_LORA_WORKER"


def world_size(setting: str | int, device: str) -> int:
    """How many GPUs the pass trains on: `distributed` is auto (every visible one), off, or a count."""
    if device != "cuda" or setting == "off":
        return 1
    import torch

    available = torch.cuda.device_count()
    if setting == "auto":
        return max(available, 1)
    if setting > available:
        raise UserError(
            f"distributed: {setting} asks for {setting} GPUs, and {available} are visible here; "
            f"set distributed to at most {available}, or to auto"
        )
    return max(int(setting), 1)


def in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1" or int(os.environ.get("WORLD_SIZE", "1")) > 1


def per_rank_params(params: LoRAParams, world: int, log, unit: str = "GPUs") -> LoRAParams:
    """Keep the effective batch of the one-GPU run where the accumulation steps divide by the GPU count."""
    args = dict(params.training_args)
    accumulation = int(args.get("gradient_accumulation_steps", 1))
    if world == 1:
        log("      one GPU of several (distributed: off): one process through torchrun")
    elif accumulation % world == 0:
        args["gradient_accumulation_steps"] = accumulation // world
        log(
            f"      data-parallel over {world} {unit}: gradient accumulation {accumulation} -> "
            f"{accumulation // world} per {unit.rstrip('s')} (same effective batch)"
        )
    else:
        log(
            f"      data-parallel over {world} {unit}: the effective batch is {world} times the one-process batch "
            f"(gradient_accumulation_steps {accumulation} does not divide by {world})"
        )
    return params.model_copy(update={"training_args": args})


def one_batch_for_all_ranks(ctx: PassContext, params: LoRAParams, world: int) -> LoRAParams:
    """Where the config leaves the micro-batch to slimtune, choose it once here for the smallest GPU: ranks
    choosing apart (from what each finds free) would run different step counts and wait on each other."""
    if "per_device_train_batch_size" in params.training_args:
        return params
    from slimtune.passes.lora.train import choose_batch

    smallest = None  # on the CPU: the memory available here
    if ctx.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return params  # the ranks run on other machines (a cluster's GPUs): each chooses on its own GPU
        here = range(min(max(world, 1), torch.cuda.device_count()))  # ranks on other nodes: the same VM size
        smallest = min(torch.cuda.get_device_properties(i).total_memory for i in here)
    choice = choose_batch(ctx, params, None, available=smallest)
    return params.model_copy(update={"training_args": choice.training_args(params.training_args)})


def run_distributed(ctx: PassContext, params: LoRAParams, world: int) -> ModelRef:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    job, result = ctx.work_dir / "ddp_job.json", ctx.work_dir / "ddp_result.json"
    result.unlink(missing_ok=True)
    rank_params = per_rank_params(one_batch_for_all_ranks(ctx, params, world), world, ctx.log)
    write_json_atomic(
        job,
        {
            "context": ctx.to_json(),
            "params_model": f"{type(rank_params).__module__}:{type(rank_params).__qualname__}",
            "params": rank_params.model_dump(mode="json"),
            "result": str(result),
        },
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world}",
        "-m",
        "slimtune.passes.lora.distributed",
        str(job),
    ]
    try:
        done = subprocess.run(command, env={**os.environ, WORKER_ENV: "1"})
    finally:
        job.unlink(
            missing_ok=True
        )  # it holds the parameters as given, tokens included: not left in the cache
    if done.returncode != 0 or not result.is_file():
        # a failed pass (like the same failure in one process), not a config error: a search goes on
        raise PassFailed(
            f"data-parallel LoRA over {world} GPUs failed (exit code {done.returncode}); the log above names "
            "the cause. To train on one GPU, set distributed: off on the pass"
        )
    out = json.loads(result.read_text())
    ctx.metrics.update(out["metrics"], world_size=world)
    for name, value in out["meta"].items():
        setattr(ctx.meta, name, value)
    return ModelRef.from_json(out["ref"])


def load_job(job_path: Path) -> tuple[PassContext, LoRAParams]:
    """The pass context and parameters of a job file, as a worker rebuilds them."""
    job = json.loads(job_path.read_text())
    module, name = job["params_model"].split(":")
    params_model = getattr(importlib.import_module(module), name)
    return PassContext.from_json(job["context"]), params_model.model_validate(job["params"])


def rank_params(ctx: PassContext, params: LoRAParams, world: int) -> LoRAParams:
    """Each rank's parameters for a data-parallel run that a system starts (PassSpec.data_parallel)."""
    from slimtune.passes.lora.checks import check

    check(ctx, params)
    return per_rank_params(one_batch_for_all_ranks(ctx, params, world), world, ctx.log, unit="workers")


def train_rank(ctx: PassContext, params: LoRAParams) -> dict | None:
    """One rank of a data-parallel run (torch.distributed set up, RANK in the environment): rank 0 saves the
    adapter and returns {ref, metrics, meta}; the others return None."""
    from slimtune.passes.lora.train import train

    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        ctx.log = lambda _message: None
    ref = train(ctx, params)
    if rank != 0:
        return None
    return {"metrics": ctx.metrics, "meta": asdict(ctx.meta), "ref": ref.to_json()}


def _worker(job_path: Path) -> None:
    ctx, params = load_job(job_path)
    out = train_rank(ctx, params)
    if out is not None:
        write_json_atomic(Path(json.loads(job_path.read_text())["result"]), out)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
