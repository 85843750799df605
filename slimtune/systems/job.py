"""Run a PassJob in this process: what a worker of another system does with the plain data it received."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimtune.engine.cache import Cache
from slimtune.engine.execute import execute
from slimtune.models.ref import ModelRef
from slimtune.passes.context import PassContext
from slimtune.passes.registry import get_pass
from slimtune.systems import PassJob


def run_job(job: PassJob, node: str) -> dict[str, Any]:
    """Run the pass into a fresh attempt folder of the shared cache and commit it there; the entry's
    information. The caller holds the key's lock (the driver, for as long as this runs), so earlier attempts
    at the key (a worker lost mid-way) are removed here: an entry is never half-written."""
    cache = Cache(job.cache_root)
    attempt = cache.new_attempt(job.key)
    ctx = PassContext.from_json({**job.context, "output_dir": str(attempt / "output")})
    Path(ctx.work_dir).mkdir(parents=True, exist_ok=True)
    spec = get_pass(job.pass_type)
    params = spec.params.model_validate(job.params)
    return execute(spec, params, ctx, cache, job.key, attempt, job.info, node).info


def adopt_rank_result(ctx: PassContext, out: dict[str, Any], world: int) -> ModelRef:
    """Rank 0's result of a data-parallel run (the pass's `train_rank`: {ref, metrics, meta}) as this pass's
    outcome: its metrics and metadata into `ctx`, its model."""
    ctx.metrics.update(out["metrics"], world_size=world)
    for name, value in out["meta"].items():
        setattr(ctx.meta, name, value)
    return ModelRef.from_json(out["ref"])
