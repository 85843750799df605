"""Memory each pass will need, estimated before any pass runs, and a refusal when it cannot fit.

Each pass estimates its own need (PassSpec.memory) from the input model's config.json and safetensors headers
(no weights are loaded) and its parameters. A run can skip the check with `skip_memory_check: true` (top
level, or under `engine` in the old schema) or `slimtune run --no-memory-check`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimtune.errors import ResourceError
from slimtune.passes.memory import Estimate, MemoryQuery, gib

OVERRIDE = "set skip_memory_check: true in the config, or run with --no-memory-check"


def memory_query(plan: Any, loaded: Any, model: Path, device: str) -> MemoryQuery:
    from slimtune.passes.registry import get_pass

    spec = get_pass(plan.type)
    by_name = {d.name: d for d in loaded.config.data_configs}
    data = {key: by_name[name] for key, name in spec.data_names(plan.params).items() if name in by_name}
    return MemoryQuery(plan.name, plan.type, plan.params, model, device, data)


def estimates(loaded: Any, model: Path, device: str) -> list[Estimate]:
    """One estimate per pass that declares one. Passes after the first see a model of the same architecture
    and size as the input (an adapter merged into it, or its ONNX export)."""
    from slimtune.passes.registry import get_pass

    found = []
    for plan in loaded.passes:
        spec = get_pass(plan.type)
        if spec.memory is not None:
            found.append(spec.memory(memory_query(plan, loaded, model, device)))
    return [e for e in found if e is not None]


def available_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(loaded: Any, model_path: str | Path, device: str, cached: set[str] = frozenset()) -> None:
    """Refuse the run, before any pass, when a pass's estimate exceeds the memory available now. Passes
    named in `cached` (their output is in the cache) need no memory and are not checked."""
    if getattr(loaded.config, "skip_memory_check", False):
        return
    model = Path(model_path)
    if not model.is_dir():
        return
    for estimate in estimates(loaded, model, device):
        if estimate.pass_name in cached:
            continue
        available = available_bytes(estimate.device)
        if estimate.total > available:
            where = "GPU memory" if estimate.device == "cuda" else "memory"
            raise ResourceError(
                f"passes.{estimate.pass_name}: {estimate.describe()}, but only {gib(available)} of {where} "
                f"is available. {estimate.advice}. To run anyway, {OVERRIDE}."
            )
