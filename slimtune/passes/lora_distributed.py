"""Data-parallel LoRA over several GPUs of one machine: the pass starts one process per GPU with torchrun,
each runs `lora_train.train` (transformers Trainer wraps the model in torch DDP), and rank 0 saves the
adapter and hands its metrics back through a file in the pass's work folder."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

from slimtune.engine.context import PassContext
from slimtune.errors import UserError
from slimtune.models.ref import ModelRef
from slimtune.passes.lora import LoRAParams

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


def per_rank_params(params: LoRAParams, world: int, log) -> LoRAParams:
    """Keep the effective batch of the one-GPU run where the accumulation steps divide by the GPU count."""
    args = dict(params.training_args)
    accumulation = int(args.get("gradient_accumulation_steps", 1))
    if world == 1:
        log("      one GPU of several (distributed: off): one process through torchrun")
    elif accumulation % world == 0:
        args["gradient_accumulation_steps"] = accumulation // world
        log(
            f"      data-parallel over {world} GPUs: gradient accumulation {accumulation} -> "
            f"{accumulation // world} per GPU (same effective batch)"
        )
    else:
        log(
            f"      data-parallel over {world} GPUs: the effective batch is {world} times the one-GPU batch "
            f"(gradient_accumulation_steps {accumulation} does not divide by {world})"
        )
    return params.model_copy(update={"training_args": args})


def run_distributed(ctx: PassContext, params: LoRAParams, world: int) -> ModelRef:
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    job, result = ctx.work_dir / "ddp_job.pkl", ctx.work_dir / "ddp_result.pkl"
    result.unlink(missing_ok=True)
    job.write_bytes(
        pickle.dumps(
            {
                "input": ctx.input,
                "meta": ctx.meta,
                "output_dir": ctx.output_dir,
                "work_dir": ctx.work_dir,
                "run_config": ctx.run_config,
                "device": ctx.device,
                "execution_provider": ctx.execution_provider,
                "params": per_rank_params(params, world, ctx.log),
                "result": result,
            }
        )
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world}",
        "-m",
        "slimtune.passes.lora_distributed",
        str(job),
    ]
    done = subprocess.run(command, env={**os.environ, WORKER_ENV: "1"})
    if done.returncode != 0 or not result.is_file():
        raise UserError(
            f"data-parallel LoRA over {world} GPUs failed (exit code {done.returncode}); the log above names "
            "the cause. To train on one GPU, set distributed: off on the pass"
        )
    out = pickle.loads(result.read_bytes())
    ctx.metrics.update(out["metrics"], world_size=world)
    for name, value in vars(out["meta"]).items():
        setattr(ctx.meta, name, value)
    return out["ref"]


def _worker(job_path: Path) -> None:
    from slimtune.passes.lora_train import train

    job = pickle.loads(job_path.read_bytes())
    rank = int(os.environ.get("RANK", "0"))
    ctx = PassContext(
        input=job["input"],
        meta=job["meta"],
        output_dir=job["output_dir"],
        work_dir=job["work_dir"],
        run_config=job["run_config"],
        device=job["device"],
        execution_provider=job["execution_provider"],
        log=print if rank == 0 else (lambda _message: None),
    )
    ref = train(ctx, job["params"])
    if rank == 0:
        job["result"].write_bytes(pickle.dumps({"metrics": ctx.metrics, "meta": ctx.meta, "ref": ref}))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
