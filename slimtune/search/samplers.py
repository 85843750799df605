"""Samplers: which candidate to try next.

A candidate is one point per searched pass (`{pass name: Point}`). Every sampler is seeded, so the same
config tries the same candidates in the same order. `tell` reports a candidate's objective (smaller is
better) or None when it failed; only TPE learns from it.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from slimtune.search.space import Categorical, PassSpace, Point

Candidate = dict[str, Point]
MAX_REPEATS = 50  # suggestions in a row that repeat a tried candidate before a sampler calls it exhausted


def candidate_key(candidate: Candidate) -> tuple:
    return tuple(sorted((name, point) for name, point in candidate.items()))


class Sampler:
    def __init__(self, spaces: dict[str, PassSpace], seed: int) -> None:
        self.spaces = spaces
        self.seed = seed
        self.tried: set[tuple] = set()

    def suggest(self) -> Candidate | None:
        raise NotImplementedError

    def tell(self, candidate: Candidate, objective: float | None) -> None:
        """The candidate's objective (smaller is better), or None when it failed."""

    def size(self) -> int | None:
        """How many candidates the space holds (None: continuous)."""
        total = 1
        for space in self.spaces.values():
            points = space.points()
            if points is None:
                return None
            total *= len(points)
        return total


class ExhaustiveSampler(Sampler):
    """Every candidate, in the order the config lists the values (first values first)."""

    def __init__(self, spaces: dict[str, PassSpace], seed: int) -> None:
        super().__init__(spaces, seed)
        names = list(spaces)
        grids = [spaces[n].points() for n in names]
        self._order = iter([dict(zip(names, combo, strict=True)) for combo in itertools.product(*grids)])

    def suggest(self) -> Candidate | None:
        return next(self._order, None)


class RandomSampler(Sampler):
    """Uniformly random candidates without repeats; a finite space is walked in a shuffled order."""

    def __init__(self, spaces: dict[str, PassSpace], seed: int) -> None:
        super().__init__(spaces, seed)
        self.rng = random.Random(seed)
        self._order = None
        if self.size() is not None:
            everything = list(ExhaustiveSampler(spaces, seed)._order)
            self.rng.shuffle(everything)
            self._order = iter(everything)

    def suggest(self) -> Candidate | None:
        if self._order is not None:
            return next(self._order, None)
        for _ in range(MAX_REPEATS):
            candidate = {name: space.sample(self.rng) for name, space in self.spaces.items()}
            if candidate_key(candidate) not in self.tried:
                self.tried.add(candidate_key(candidate))
                return candidate
        return None


class TPESampler(Sampler):
    """Optuna's tree-structured Parzen estimator: learns from the objectives it is told."""

    def __init__(self, spaces: dict[str, PassSpace], seed: int, config: dict[str, Any] | None = None) -> None:
        import optuna

        super().__init__(spaces, seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        options = {"n_startup_trials": 4, **(config or {})}
        self._optuna = optuna
        self.study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, **options))
        self.trials: dict[tuple, Any] = {}
        self.results: dict[tuple, float | None] = {}
        self.limit = self.size()

    def suggest(self) -> Candidate | None:
        for _ in range(MAX_REPEATS):
            if self.limit is not None and len(self.results) + len(self.trials) >= self.limit:
                return None
            trial = self.study.ask()
            candidate = {name: self._point(trial, name, space) for name, space in self.spaces.items()}
            key = candidate_key(candidate)
            if key in self.results or key in self.trials:  # seen: tell optuna what it gave, ask again
                self._finish(trial, self.results.get(key))
                continue
            self.trials[key] = trial
            return candidate
        return None

    def tell(self, candidate: Candidate, objective: float | None) -> None:
        key = candidate_key(candidate)
        trial = self.trials.pop(key, None)
        self.results[key] = objective
        if trial is not None:
            self._finish(trial, objective)

    def _finish(self, trial: Any, objective: float | None) -> None:
        if objective is None:
            self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, objective)

    @staticmethod
    def _point(trial: Any, name: str, space: PassSpace) -> Point:
        index = 0
        if len(space.alternatives) > 1:
            index = trial.suggest_categorical(f"{name}:alternative", list(range(len(space.alternatives))))
        values = {}
        for key, dim in space.alternatives[index].dims.items():
            label = f"{name}:{index}:{key}"
            if isinstance(dim, Categorical):  # by index: optuna's choices must be plain scalars
                values[key] = dim.values[trial.suggest_categorical(label, list(range(len(dim.values))))]
            elif dim.integer:
                values[key] = trial.suggest_int(
                    label, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log
                )
            else:
                values[key] = trial.suggest_float(label, dim.low, dim.high, step=dim.step, log=dim.log)
        return Point.of(index, values)


SAMPLERS = {
    "exhaustive": ExhaustiveSampler,
    "sequential": ExhaustiveSampler,
    "random": RandomSampler,
    "tpe": TPESampler,
}


def make_sampler(name: str, spaces: dict[str, PassSpace], seed: int, config: dict | None = None) -> Sampler:
    if name == "tpe":
        return TPESampler(spaces, seed, config)
    return SAMPLERS[name](spaces, seed)
