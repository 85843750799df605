"""Data-parallel training of a pass across Ray workers and nodes (Ray Train's TorchTrainer).

Each worker runs the pass's own rank function (PassSpec.data_parallel: for LoRA, the same loop that torchrun
starts on one machine) in the torch.distributed group Ray Train sets up: gloo on CPUs, NCCL on GPUs. The ranks
write checkpoints into the pass's work folder in the shared cache; when a worker or its node is lost, Ray Train
starts the group again (`max_failures`) and the loop resumes from the last complete checkpoint, not from step
0. Each rank's gradient accumulation is divided by the worker count, so the effective batch is the config's.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from slimtune.engine.cache import Cache
from slimtune.engine.execute import execute
from slimtune.errors import PassFailed
from slimtune.files import write_json_atomic
from slimtune.models.ref import ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.registry import PassSpec
from slimtune.systems import PassJob
from slimtune.systems.job import adopt_rank_result


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: rebuild the pass from plain data, run its rank, rank 0 hands back the result."""
    from slimtune.systems.ray import node_name

    module = importlib.import_module(config["data_parallel"])
    params_module, params_name = config["params_model"].split(":")
    params_model = getattr(importlib.import_module(params_module), params_name)
    ctx, params = PassContext.from_json(config["context"]), params_model.model_validate(config["params"])
    rank = int(os.environ.get("RANK", "0"))
    nodes = Path(config["nodes"])
    nodes.mkdir(parents=True, exist_ok=True)
    write_json_atomic(nodes / f"{rank}.json", {"node": node_name(), "pid": os.getpid()})
    out = module.train_rank(ctx, params)
    if out is not None:
        write_json_atomic(Path(config["result"]), out)


def train_data_parallel(runner: Any, job: PassJob, spec: PassSpec) -> dict[str, Any]:
    cache = Cache(job.cache_root)
    attempt = cache.new_attempt(job.key)
    ctx = PassContext.from_json({**job.context, "output_dir": str(attempt / "output")})
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    params = spec.params.model_validate(job.params)
    world = runner.workers
    ran_on: list[str] = []  # the nodes of the ranks, rank 0's first

    def run(ctx: PassContext, params: Any) -> ModelRef:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        module = importlib.import_module(spec.data_parallel)
        per_rank = module.rank_params(ctx, params, world)
        result, nodes = ctx.work_dir / "ray_result.json", ctx.work_dir / "ray_nodes"
        result.unlink(missing_ok=True)
        config = {
            "data_parallel": spec.data_parallel,
            "context": ctx.to_json(),
            "params_model": f"{type(per_rank).__module__}:{type(per_rank).__qualname__}",
            "params": per_rank.model_dump(mode="json"),
            "result": str(result),
            "nodes": str(nodes),
        }
        per_worker = {k: v for k, v in runner.need.items() if v > 0 and k != "GPU"}
        scaling = ScalingConfig(
            num_workers=world,
            use_gpu=runner.use_gpu,
            resources_per_worker={**per_worker, **({"GPU": runner.need["GPU"]} if runner.use_gpu else {})},
            placement_strategy=runner.system.placement_strategy or "PACK",
        )
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=config,
            torch_config=TorchConfig(backend="nccl" if runner.use_gpu else "gloo"),
            scaling_config=scaling,
            run_config=RunConfig(
                name=f"slimtune-{job.key[:16]}",
                storage_path=str(cache.root / "ray-train"),
                failure_config=FailureConfig(max_failures=runner.max_failures),
            ),
        )
        ctx.log(
            f"      Ray Train: {world} workers ({'NCCL' if runner.use_gpu else 'gloo'}), {scaling.placement_strategy}"
        )
        try:
            trainer.fit()
        except Exception as err:
            raise PassFailed(
                f"passes.{job.pass_name}: data-parallel training on {world} Ray workers failed after "
                f"{runner.max_failures} restarts (systems.{runner.name}.max_failures): {str(err).strip()[:500]}"
            ) from None
        if not result.is_file():
            raise PassFailed(f"passes.{job.pass_name}: Ray Train finished without rank 0's result")
        ranks = sorted(nodes.glob("*.json"), key=lambda p: int(p.stem))
        ran_on.extend(dict.fromkeys(json.loads(p.read_text())["node"] for p in ranks))
        return adopt_rank_result(ctx, json.loads(result.read_text()), world)

    entry = execute(spec, params, ctx, cache, job.key, attempt, job.info, lambda: ",".join(ran_on), run=run)
    return entry.info
