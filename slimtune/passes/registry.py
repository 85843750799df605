"""Passes by the type names configs use.

A pass is one folder under `slimtune/passes/` (or a module of another installed package, registered through
the `slimtune.passes` entry-point group). Its `__init__` declares a PassSpec: the parameter model, where the
run function lives, and what the engine needs to know about the pass without running it (the data configs
it reads, its memory estimate, its out-of-memory advice, whether it trains). The engine reads these and never
names a pass type. Spec modules import nothing heavy; the run function imports torch and friends when called.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slimtune.config.base import Strict

# modules that register the built-in passes; imported on first lookup (one line per pass)
PASS_MODULES = [
    "slimtune.passes.lora",
    "slimtune.passes.merge",
    "slimtune.passes.model_builder",
    "slimtune.passes.extract_adapters",
    "slimtune.passes.gguf_export",
]
ENTRY_POINT_GROUP = "slimtune.passes"


@dataclass(frozen=True)
class Training:
    """Where a training pass's rows come from, so that evaluation scores other rows."""

    data: str  # the training data config
    eval_data: str | None = None  # a separate evaluation data config
    eval_size: float | None = None  # or a held-out share / row count split off `data`


@dataclass(frozen=True)
class PassSpec:
    type: str  # the name configs use
    params: type[Strict]
    run: str  # "module:function", imported only when the pass runs: run(ctx: PassContext, params) -> ModelRef
    version: int  # bump when the output for the same inputs changes (part of the cache key)
    summary: str
    input_kinds: tuple[str, ...] = ("hf",)
    output_kind: str = "hf"
    # parameter fields that name data configs: their content is part of the cache key, and the pass's
    # context carries them
    data_fields: tuple[str, ...] = ()
    # a training pass says where its rows come from: params -> Training (None: the pass does not train)
    training: Callable[[Any], Training | None] | None = None
    # memory the pass will need, before it runs: MemoryQuery -> passes.memory.Estimate (or None: unknown)
    memory: Callable[[Any], Any] | None = None
    # what to change when the pass runs out of memory: MemoryQuery -> sentence(s)
    memory_advice: Callable[[Any], str] | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")  # where it can run
    # distributions beyond the engine's own list whose versions shape this pass's output (in its cache key)
    libraries: tuple[str, ...] = ()
    # a pass that trains data-parallel: a module with rank_params(ctx, params, world) -> params (each rank's,
    # keeping the effective batch) and train_rank(ctx, params) -> {ref, metrics, meta} on rank 0 (None on the
    # others), run in each rank of a torch.distributed group that a system started (Ray Train)
    data_parallel: str | None = None
    # the smallest parameters that make a working pass (docs, `slimtune passes`, the contract test); data
    # config names in it stand for any data config
    example: dict[str, Any] = field(default_factory=dict)
    origin: str = "slimtune"  # the package that registered it ("name version" for a plugin)

    def load_run(self) -> Callable[..., Any]:
        module, func = self.run.split(":")
        return getattr(importlib.import_module(module), func)

    def data_names(self, params: Any) -> dict[str, str]:
        """{field: data config name} of the data configs these parameters name."""
        return {f: getattr(params, f) for f in self.data_fields if getattr(params, f, None)}

    def training_of(self, params: Any) -> Training | None:
        return self.training(params) if self.training else None


_REGISTRY: dict[str, PassSpec] = {}
_loaded = False


def register_pass(spec: PassSpec) -> PassSpec:
    if spec.type in _REGISTRY and _REGISTRY[spec.type] is not spec:
        raise ValueError(f"pass type {spec.type!r} registered twice")
    _REGISTRY[spec.type] = spec
    return spec


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in PASS_MODULES:
        importlib.import_module(module)
    _load_plugins()


def _load_plugins() -> None:
    """Passes of other installed packages: an entry point `NAME = "package.module"` in the `slimtune.passes`
    group names a module that registers its passes when imported (as the built-in ones do). A plugin that
    fails to import is reported and left out; it never breaks the built-in passes."""
    import sys
    from dataclasses import replace
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        before = set(_REGISTRY)
        try:
            point.load()
        except Exception as err:  # a third party's bug: say so, keep going
            print(
                f"warning: pass plugin {point.name!r} ({point.value}) failed to load: {type(err).__name__}: "
                f"{err}",
                file=sys.stderr,
            )
            continue
        origin = f"{point.dist.name} {point.dist.version}" if point.dist is not None else point.value
        for name in set(_REGISTRY) - before:
            _REGISTRY[name] = replace(_REGISTRY[name], origin=origin)


def get_pass(type_name: str) -> PassSpec | None:
    _load_all()
    return _REGISTRY.get(type_name)


def all_passes() -> dict[str, PassSpec]:
    _load_all()
    return dict(_REGISTRY)
