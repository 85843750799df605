"""Passes by the type names configs use. A pass module declares its parameter model and registers it;
the model imports nothing heavy, and the work itself lives in the module's `run` function, which imports
torch and friends when called."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slimtune.config.base import Strict

# modules that register passes; imported on first lookup
PASS_MODULES = [
    "slimtune.passes.lora",
    "slimtune.passes.merge_adapter",
    "slimtune.passes.model_builder",
]


@dataclass(frozen=True)
class PassSpec:
    type: str  # the name configs use
    params: type[Strict]
    run: str  # "module:function", imported only when the pass runs
    version: int  # bump when the output for the same inputs changes (part of the cache key)
    summary: str
    input_kinds: tuple[str, ...] = ("hf",)
    output_kind: str = "hf"
    aliases: tuple[str, ...] = field(default=())

    def load_run(self) -> Callable[..., Any]:
        module, func = self.run.split(":")
        return getattr(importlib.import_module(module), func)


_REGISTRY: dict[str, PassSpec] = {}


def register_pass(spec: PassSpec) -> PassSpec:
    for name in (spec.type, *spec.aliases):
        if name in _REGISTRY and _REGISTRY[name] is not spec:
            raise ValueError(f"pass type {name!r} registered twice")
        _REGISTRY[name] = spec
    return spec


def _load_all() -> None:
    for module in PASS_MODULES:
        importlib.import_module(module)


def get_pass(type_name: str) -> PassSpec | None:
    _load_all()
    return _REGISTRY.get(type_name)


def all_passes() -> dict[str, PassSpec]:
    """Primary names only (aliases left out)."""
    _load_all()
    return {name: spec for name, spec in _REGISTRY.items() if spec.type == name}
