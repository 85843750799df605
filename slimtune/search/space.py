"""Search spaces written into pass configs: which parameters vary, and over which values.

A parameter's value may be a search space instead of a value:

    {"search": [v1, v2, ...]}                                   one of these values
    {"search": {"low": 1e-4, "high": 1e-3, "log": true}}        a number in a range (`step` makes it a grid;
                                                                integer bounds make integer values)
    {"olive_parameter_type": "SearchParameter", "type": "Categorical", "support": [...]}   Olive's form
    "SEARCHABLE_VALUES"                                         the pass's own default values (Olive)

and a pass may be a list of alternative configs (Olive), each of which may hold search values too. This
module only parses and enumerates; `slimtune.search.samplers` picks points and `slimtune.engine.search`
runs them.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any

SEARCHABLE_VALUES = "SEARCHABLE_VALUES"


@dataclass(frozen=True)
class Categorical:
    values: tuple[Any, ...]

    def first(self) -> Any:
        return self.values[0]

    def grid(self) -> list[Any]:
        return list(self.values)

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)

    def describe(self) -> str:
        return "{" + ", ".join(map(repr, self.values)) + "}"


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool = False
    step: float | None = None
    integer: bool = False

    def first(self) -> Any:
        return self._cast(self.low)

    def grid(self) -> list[Any] | None:
        """Every value, when the range is finite (a step, or integers on a linear scale); else None."""
        step = self.step if self.step is not None else (1 if self.integer and not self.log else None)
        if step is None:
            return None
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        return [self._cast(self.low + i * step) for i in range(count)]

    def sample(self, rng: random.Random) -> Any:
        grid = self.grid()
        if grid is not None:
            return rng.choice(grid)
        if self.log:
            return self._cast(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return self._cast(rng.uniform(self.low, self.high))

    def _cast(self, value: float) -> Any:
        return int(round(value)) if self.integer else float(value)

    def describe(self) -> str:
        extra = (", log" if self.log else "") + (f", step {self.step:g}" if self.step else "")
        return f"[{self.low:g} .. {self.high:g}{extra}]"


Dimension = Categorical | Range


@dataclass
class Alternative:
    """One config of a pass: fixed parameters plus the ones searched."""

    type: str
    fixed: dict[str, Any]
    dims: dict[str, Dimension] = field(default_factory=dict)

    def default_values(self) -> dict[str, Any]:
        return {name: dim.first() for name, dim in self.dims.items()}

    def grid(self) -> list[dict[str, Any]] | None:
        grids = {name: dim.grid() for name, dim in self.dims.items()}
        if any(g is None for g in grids.values()):
            return None
        names = list(grids)
        return [
            dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grids[n] for n in names))
        ]


@dataclass(frozen=True)
class Point:
    """Where one pass sits in its space: which alternative, and the searched parameters' values."""

    alternative: int
    values: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, alternative: int, values: dict[str, Any]) -> Point:
        return cls(alternative, tuple(sorted(values.items())))

    def as_dict(self, with_alternative: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"alternative": self.alternative} if with_alternative else {}
        out.update(self.values)
        return out


@dataclass
class PassSpace:
    alternatives: list[Alternative]

    @property
    def searched(self) -> bool:
        return len(self.alternatives) > 1 or any(a.dims for a in self.alternatives)

    def default(self) -> Point:
        return Point.of(0, self.alternatives[0].default_values())

    def points(self) -> list[Point] | None:
        """Every point in order, or None when some range is continuous."""
        out: list[Point] = []
        for index, alternative in enumerate(self.alternatives):
            grid = alternative.grid()
            if grid is None:
                return None
            out += [Point.of(index, values) for values in grid]
        return out

    def sample(self, rng: random.Random) -> Point:
        index = rng.randrange(len(self.alternatives))
        alternative = self.alternatives[index]
        return Point.of(index, {name: dim.sample(rng) for name, dim in alternative.dims.items()})

    def params_at(self, point: Point) -> dict[str, Any]:
        alternative = self.alternatives[point.alternative]
        return {**alternative.fixed, **dict(point.values)}

    def describe(self) -> list[str]:
        lines = []
        for index, alternative in enumerate(self.alternatives):
            head = f"alternative {index} ({alternative.type}): " if len(self.alternatives) > 1 else ""
            dims = ", ".join(f"{name} in {dim.describe()}" for name, dim in alternative.dims.items())
            lines.append(head + (dims or "fixed"))
        return lines


def split_search_values(
    params: dict[str, Any], defaults: dict[str, list[Any]], searching: bool
) -> tuple[dict[str, Any], dict[str, Dimension], list[tuple[tuple, str]]]:
    """Separate a pass config's fixed parameters from its search spaces.

    `defaults` holds the pass's own search values per parameter (for SEARCHABLE_VALUES). When `searching`
    is false, SEARCHABLE_VALUES means the parameter's default (Olive's behaviour without a search).
    Returns (fixed, dims, problems); each problem is (key path below the pass, message).
    """
    fixed: dict[str, Any] = {}
    dims: dict[str, Dimension] = {}
    problems: list[tuple[tuple, str]] = []
    for name, value in params.items():
        if value == SEARCHABLE_VALUES:
            if not searching:
                continue  # no search: the parameter keeps its default
            if name not in defaults:
                problems.append(
                    ((name,), 'this parameter has no default search values; write {"search": [value, ...]}')
                )
                continue
            dims[name] = Categorical(tuple(defaults[name]))
        elif isinstance(value, dict) and "search" in value and len(value) == 1:
            dim, problem = _parse_search(value["search"])
            if problem:
                problems.append(((name, "search"), problem))
            else:
                dims[name] = dim
        elif isinstance(value, dict) and value.get("olive_parameter_type") == "SearchParameter":
            dim, problem = _parse_olive(value)
            if problem:
                problems.append(((name,), problem))
            else:
                dims[name] = dim
        else:
            fixed[name] = value
    return fixed, dims, problems


def _parse_search(spec: Any) -> tuple[Dimension | None, str | None]:
    if isinstance(spec, list):
        if not spec:
            return None, "an empty list of values; give at least one"
        unique = []
        for value in spec:
            if value not in unique:
                unique.append(value)
        return Categorical(tuple(unique)), None
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - {"low", "high", "log", "step"})
        if unknown:
            return None, f"unknown key(s) {', '.join(unknown)}; a range takes low, high, log, step"
        low, high, step = spec.get("low"), spec.get("high"), spec.get("step")
        log = spec.get("log", False)
        if not _is_number(low) or not _is_number(high):
            return None, "a range needs numeric `low` and `high`"
        if step is not None and (not _is_number(step) or step <= 0):
            return None, f"`step` must be a positive number, got {step!r}"
        if not isinstance(log, bool):
            return None, f"`log` must be true or false, got {log!r}"
        if low > high:
            return None, f"`low` ({low}) is above `high` ({high})"
        if log and low <= 0:
            return None, "a log range needs `low` > 0"
        if log and step is not None:
            return None, "`log` and `step` cannot be combined"
        integer = all(isinstance(v, int) for v in (low, high, step) if v is not None)
        return Range(low, high, log, step, integer), None
    return None, 'a search is a list of values or a range {"low": .., "high": ..}'


def _parse_olive(spec: dict[str, Any]) -> tuple[Dimension | None, str | None]:
    kind = spec.get("type")
    if kind == "Boolean":
        return Categorical((True, False)), None
    if kind == "Categorical":
        support = spec.get("support")
        if not isinstance(support, list) or not support:
            return None, "a Categorical search parameter needs a non-empty `support` list"
        return Categorical(tuple(support)), None
    return None, f"search parameter type {kind!r} is not supported; use Categorical or Boolean"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
