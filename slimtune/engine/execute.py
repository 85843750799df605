"""Running one pass into an attempt folder and committing it to the cache: the same steps wherever the pass
runs (this process, or a worker of another system that received the pass as plain data, systems/job.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slimtune.engine.cache import Cache, Entry
from slimtune.engine.monitor import PeakMemory, Stopwatch
from slimtune.engine.resources import PassGuard
from slimtune.files import folder_size
from slimtune.passes.context import PassContext
from slimtune.passes.registry import PassSpec


def execute(
    spec: PassSpec,
    params: Any,
    ctx: PassContext,
    cache: Cache,
    key: str,
    attempt: Path,
    info: dict[str, Any],
    node: str | Callable[[], str],
    memory_advice: str = "Free memory or use a larger machine.",
    run: Callable[[PassContext, Any], Any] | None = None,
    watched: Sequence[Path] = (),
) -> Entry:
    """Run the pass on `ctx` (its output_dir is attempt/output), save its metadata, commit the attempt as the
    entry of `key` with `info` and what the run measured. On any failure the attempt folder goes. `run`: how
    the pass runs when not by its own run function (a system that starts its data-parallel ranks itself);
    `watched`: folders besides the cache whose disk running out is named."""
    watched = [cache.root, *watched]
    what = f"passes.{info.get('pass_name', spec.type)} ({spec.type})"
    guard = PassGuard(what, memory_advice, attempt, watched, folder_size(ctx.input.path))
    with guard, Stopwatch() as clock, PeakMemory() as memory:
        produced = (run or spec.load_run())(ctx, params)
    with guard:
        ctx.meta.save(ctx.output_dir)
    done = {
        **info,
        "kind": produced.kind,
        "base_path": produced.base_path,
        "wall_s": clock.seconds,
        "peak_rss_bytes": memory.peak_bytes,
        "metrics": ctx.metrics,
        "node": node() if callable(node) else node,  # a system that learns it from the run gives a function
    }
    with guard:
        return cache.commit(key, attempt, done)
