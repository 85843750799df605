"""What a pass tells the engine about memory before it runs: an estimate (PassSpec.memory) and what to change
when it runs out anyway (PassSpec.memory_advice). Both get a MemoryQuery; neither loads weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GiB = 2**30
LIBRARIES_BYTES = int(0.35 * GiB)  # torch + transformers + peft + datasets, imported (measured: 0.34 GiB RSS)


@dataclass
class MemoryQuery:
    name: str  # the pass's key under `passes`
    type: str
    params: Any  # the pass's parameter model
    model: Path  # the model folder the pass will load (the run's input model: later ones are alike in size)
    device: str  # "cpu" or "cuda"
    data: dict[str, Any] = field(default_factory=dict)  # {field: DataConfig} of the data configs it names


@dataclass
class Estimate:
    pass_name: str
    what: str
    total: int
    parts: dict[str, int]
    device: str  # where it must fit: "cpu" (RAM) or "cuda" (GPU memory)
    advice: str

    def describe(self) -> str:
        parts = ", ".join(f"{name} {gib(n)}" for name, n in self.parts.items() if n)
        return f"{self.what} needs about {gib(self.total)} ({parts})"


def gib(n: float) -> str:
    if n >= 0.1 * GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else "<1 MiB"
