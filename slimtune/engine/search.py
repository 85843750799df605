"""Search over pass options: run candidates, measure each, keep the best that meets the goals.

Every candidate is the whole chain of passes with one point per searched pass. Passes run through the
cache, so candidates that share a prefix (the same LoRA pass before different ModelBuilder options) share
its output: it runs once. Each candidate's final model is evaluated on the run's evaluation rows, together
with the stages its goals compare against.

Joint order (default) samples whole candidates. Pass-by-pass order searches one pass at a time, in order:
earlier passes fixed at their best point so far, later ones at their first value.

A candidate that fails (out of memory, the builder rejects an option combination, a crash inside a pass)
is recorded with its reason and the search goes on. A user error that no other candidate can escape (bad
config, missing data) stops the run at once.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from slimtune.config.load import PassPlan
from slimtune.engine.chain import Chain, Outcome, Session, run_chain
from slimtune.engine.evaluation import evaluate_chain
from slimtune.errors import PassFailed, ResourceError, SlimtuneError, UserError
from slimtune.evaluate.goals import MetricRef, pareto_front, rank_key, read
from slimtune.search.samplers import Candidate, candidate_key, make_sampler
from slimtune.systems import this_node

# ranking when no metric has a priority: accuracy first, then latency, then size
DEFAULT_RANKING = [
    MetricRef("accuracy", ("accuracy",), True, 1, None),
    MetricRef("latency-p50", ("latency", "e2e_ms", "p50"), False, 2, None),
    MetricRef("size", ("size_bytes",), False, 3, None),
]
PARETO = {
    "accuracy": ("accuracy",),
    "latency_p50_ms": ("latency", "e2e_ms", "p50"),
    "size_bytes": ("size_bytes",),
}
PARETO_HIGHER = {"accuracy": True, "latency_p50_ms": False, "size_bytes": False}


@dataclass
class Tried:
    id: int
    point: Candidate
    params: dict[str, dict[str, Any]]
    status: str = "failed"  # ok, goals_not_met, failed
    reason: str = ""
    chain: Chain | None = None
    evaluation: dict[str, Any] | None = None
    goals: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    failed_pass: dict[str, Any] | None = None  # the pass a failed candidate stopped in

    @property
    def final_metrics(self) -> dict[str, Any]:
        if not self.evaluation or not self.evaluation["stages"]:
            return {}
        return self.evaluation["stages"][-1]["metrics"]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "params": self.params,
            "status": self.status,
            "reason": self.reason,
            "metrics": self.final_metrics,
            "goals": self.goals,
            "passes": [
                {k: r.get(k) for k in ("name", "type", "key", "cache_hit", "node")}
                for r in (self.chain.records if self.chain else [])
            ]
            + ([self.failed_pass] if self.failed_pass else []),
            "wall_s": round(self.wall_s, 3),
        }


def run_search(session: Session) -> Outcome:
    loaded = session.loaded
    strategy = loaded.config.search_strategy
    if session.eval_plan is None:
        raise UserError(
            "a search compares candidates by their metrics, but this config evaluates nothing: add an "
            "evaluator (`evaluators` + `evaluator`), or a LoRA pass with `eval_dataset_size`"
        )
    ranking = ranking_for(session.eval_plan.refs)
    search = _Search(session, ranking)
    searched = [p for p in loaded.passes if p.searched]
    groups = [searched] if strategy.execution_order == "joint" else [[p] for p in searched]
    fixed: Candidate = {p.name: p.space.default() for p in searched}
    print(
        f"search: {strategy.sampler} sampler, {strategy.execution_order} order, seed {strategy.seed}",
        flush=True,
    )
    width = session.width()  # 1 here; on a cluster, as many candidates as its resources run at once
    if width > 1:
        print(f"search: up to {width} candidates at once", flush=True)
    for group in groups:
        sampler = make_sampler(
            strategy.sampler, {p.name: p.space for p in group}, strategy.seed, strategy.sampler_config
        )
        search.check_combinations(sampler, fixed)
        group_tried = search.run_group(sampler, fixed, width)
        best = search.best(group_tried)
        if best is not None:
            fixed.update({p.name: best.point[p.name] for p in group})
    return search.outcome()


def ranking_for(refs: list[MetricRef]) -> list[MetricRef]:
    """The config's prioritized metrics, then (to break ties: equal accuracy on a few hundred rows is common)
    the default ones it does not rank already, renumbered 1, 2, 3..."""
    prioritized = sorted((r for r in refs if r.priority > 0), key=lambda r: r.priority)
    ranked = prioritized + [d for d in DEFAULT_RANKING if d.path not in {r.path for r in prioritized}]
    return [replace(r, priority=i) for i, r in enumerate(ranked, 1)]


class _Search:
    def __init__(self, session: Session, ranking: list[MetricRef]) -> None:
        self.session = session
        self.ranking = ranking
        self.strategy = session.loaded.config.search_strategy
        self.tried: list[Tried] = []
        self.by_key: dict[tuple, Tried] = {}
        self.started = time.time()
        self.stopped = ""
        self.evaluating = threading.Lock()

    def should_stop(self) -> bool:
        if self.stopped:
            return True
        if self.strategy.max_iter is not None and len(self.tried) >= self.strategy.max_iter:
            self.stopped = f"max_iter {self.strategy.max_iter} reached"
        elif self.strategy.max_time is not None and time.time() - self.started >= self.strategy.max_time:
            self.stopped = f"max_time {self.strategy.max_time:g} s reached"
        return bool(self.stopped)

    def check_combinations(self, sampler, fixed: Candidate) -> None:
        """In a finite space, every combination is validated before anything runs: a value that only fails
        together with another (a cross-field rule) is a config error, not a failed candidate."""
        from slimtune.errors import ConfigError, ConfigIssue

        if sampler.size() is None:
            return
        issues = []
        for candidate in make_sampler("exhaustive", sampler.spaces, 0)._order:
            try:
                self.plans({**fixed, **candidate})
            except ValidationError as err:
                where = ", ".join(f"{k}={v!r}" for p in candidate.values() for k, v in p.values)
                first = err.errors()[0]
                issues.append(
                    ConfigIssue(f"passes ({where})", f"{'.'.join(map(str, first['loc']))}: {first['msg']}")
                )
        if issues:
            raise ConfigError(issues, str(self.session.loaded.file) if self.session.loaded.file else None)

    def plans(self, candidate: Candidate) -> list[PassPlan]:
        base = self.session.loaded.base_dir
        return [
            plan.at(candidate[plan.name], base) if plan.searched else plan
            for plan in self.session.loaded.passes
        ]

    def run_group(self, sampler, fixed: Candidate, width: int) -> list[Tried]:
        """Candidates from the sampler until it or the limits stop, `width` in flight at once (ask/tell: the
        sampler hears each result as it arrives and suggests the next one)."""
        group_tried: list[Tried] = []
        pending: dict[Future, tuple[Candidate, Tried]] = {}
        pool = ThreadPoolExecutor(width, thread_name_prefix="candidate") if width > 1 else _Inline()
        try:
            while True:
                while len(pending) < width and not self.should_stop():
                    suggestion = sampler.suggest()
                    if suggestion is None:
                        break
                    tried, new = self.add_candidate({**fixed, **suggestion})
                    group_tried.append(tried)
                    if new:
                        pending[pool.submit(self.run_candidate, tried)] = (suggestion, tried)
                    else:  # pass-by-pass: a later pass's first point repeats the best so far
                        sampler.tell(suggestion, self.objective(tried))
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    suggestion, tried = pending.pop(future)
                    future.result()  # a user error no candidate can escape stops the search here
                    sampler.tell(suggestion, self.objective(tried))
                    if self.strategy.stop_when_goals_met and tried.status == "ok" and tried.goals:
                        self.stopped = f"candidate #{tried.id} met every goal (stop_when_goals_met)"
                if width > 1:
                    self.progress(len(pending))
        finally:
            pool.shutdown(wait=not pending, cancel_futures=True)
        return group_tried

    def progress(self, running: int) -> None:
        failed = sum(t.status == "failed" for t in self.tried if t.wall_s)
        finished = sum(1 for t in self.tried if t.wall_s) - failed
        print(f"search: {running} running, {finished} done, {failed} failed", flush=True)

    def add_candidate(self, candidate: Candidate) -> tuple[Tried, bool]:
        """The candidate's record, numbered in the order the sampler suggested it (False: tried already)."""
        key = candidate_key(candidate)
        if key in self.by_key:
            return self.by_key[key], False
        params = {
            plan.name: _point_params(plan, candidate[plan.name])
            for plan in self.session.loaded.passes
            if plan.searched
        }
        tried = Tried(len(self.tried) + 1, candidate, params)
        self.tried.append(tried)
        self.by_key[key] = tried
        return tried, True

    def run_candidate(self, tried: Tried) -> Tried:
        text = ", ".join(f"{k}={v!r}" for p in tried.params.values() for k, v in p.items())
        print(f"\ncandidate #{tried.id}: {text}", flush=True)
        started = time.time()
        tried.chain = Chain()
        plans: list[PassPlan] = []
        try:
            plans = self.plans(tried.point)
            run_chain(self.session, plans, prefix=f"#{tried.id} ", chain=tried.chain)
            needed = {g.goal.baseline for g in self.session.eval_plan.refs if g.goal and g.goal.baseline}
            with self.evaluating:  # candidates in flight evaluate one at a time (latency is measured alone)
                tried.evaluation, tried.goals = evaluate_chain(
                    self.session, tried.chain, only=needed | {"input"}
                )
        except (PassFailed, ResourceError, ValidationError) as err:
            tried.reason = _first_line(err)
            tried.failed_pass = _failed_pass(plans, tried.chain, err)
        except SlimtuneError:
            raise  # bad config, missing data: no candidate can escape it
        except Exception as err:  # a crash inside one candidate's pass: record it, try the others
            tried.reason = f"{type(err).__name__}: {_first_line(err)}"
            tried.failed_pass = _failed_pass(plans, tried.chain, err)
        else:
            met = all(g["met"] for g in tried.goals)
            tried.status = "ok" if met else "goals_not_met"
            missed = [g["metric"] for g in tried.goals if not g["met"]]
            tried.reason = "" if met else f"goals not met: {', '.join(missed)}"
        tried.wall_s = max(time.time() - started, 1e-9)  # set: the candidate has finished
        verdict = {"ok": "ok", "goals_not_met": "goals not met", "failed": "FAILED"}[tried.status]
        print(f"candidate #{tried.id}: {verdict}{': ' + tried.reason if tried.reason else ''}", flush=True)
        return tried

    def objective(self, tried: Tried) -> float | None:
        """What TPE minimises: the first ranking metric, oriented (None when it failed)."""
        if tried.status == "failed":
            return None
        value = read(tried.final_metrics, self.ranking[0].path)
        if value is None:
            return None
        return -value if self.ranking[0].higher_is_better else value

    def order(self, candidates: list[Tried]) -> list[Tried]:
        """Best first: candidates that meet every goal before those that do not, then by the ranking."""
        usable = [t for t in candidates if t.status != "failed"]
        return sorted(usable, key=lambda t: (t.status != "ok", rank_key(self.ranking, t.final_metrics), t.id))

    def best(self, candidates: list[Tried]) -> Tried | None:
        ordered = self.order(candidates)
        return ordered[0] if ordered else None

    def outcome(self) -> Outcome:
        chosen = self.best(self.tried)
        if chosen is None:
            reasons = "\n".join(f"  #{t.id} {t.params}: {t.reason}" for t in self.tried)
            raise PassFailed(f"every candidate of the search failed:\n{reasons}")
        usable = [t for t in self.tried if t.status != "failed"]
        points = [{name: read(t.final_metrics, path) for name, path in PARETO.items()} for t in usable]
        front = {usable[i].id for i in pareto_front(points, PARETO_HIGHER)}
        # the chosen one, evaluated at every stage for the report (shared stages come from the eval cache)
        evaluation, goals = evaluate_chain(self.session, chosen.chain)
        candidates = []
        for t in self.tried:
            entry = t.to_json()
            entry.update(chosen=t is chosen, pareto=t.id in front)
            candidates.append(entry)
        why = self._why(chosen)
        print(f"\nchosen: candidate #{chosen.id} of {len(self.tried)} ({why})", flush=True)
        extra = {
            "candidates": candidates,
            "search": {
                "strategy": self.strategy.model_dump(mode="json"),
                "ranking": [{"metric": r.key, "higher_is_better": r.higher_is_better} for r in self.ranking],
                "chosen": chosen.id,
                "why": why,
                "stopped": self.stopped or "every candidate tried",
                "failed": sum(t.status == "failed" for t in self.tried),
                "pareto_front": sorted(front),
            },
        }
        return Outcome(chosen.chain, evaluation, goals, extra)

    def _why(self, chosen: Tried) -> str:
        first = self.ranking[0]
        value = read(chosen.final_metrics, first.path)
        shown = (
            "n/a" if value is None else (f"{value:.1%}" if first.path == ("accuracy",) else f"{value:.4g}")
        )
        order = ", then ".join(r.key for r in self.ranking)
        if chosen.status == "ok" and chosen.goals:
            head = f"meets all {len(chosen.goals)} goals"
        elif chosen.status == "ok":
            head = "no goals set"
        else:
            head = "no candidate met every goal; the best by ranking alone"
        return f"{head}; ranked by {order}; {first.key} {shown}"


def _point_params(plan: PassPlan, point) -> dict[str, Any]:
    """The parameters that make this point what it is: the searched values, and for a pass with several
    alternatives, which one plus the fixed values that tell the alternatives apart (e.g. `precision`)."""
    alternatives = plan.space.alternatives
    if len(alternatives) == 1:
        return point.as_dict(False)
    mine = alternatives[point.alternative].fixed
    differing = {
        k: v for k, v in mine.items() if any(k not in a.fixed or a.fixed[k] != v for a in alternatives)
    }
    return {**point.as_dict(True), **differing}


def _failed_pass(plans: list[PassPlan], chain: Chain, err: BaseException) -> dict[str, Any] | None:
    """The pass a candidate failed in (the first one without a record): it ran, and left no output; the node
    it failed on (a system sets it on the error; else this machine)."""
    if len(chain.records) >= len(plans):
        return None  # the passes finished; the evaluation failed
    plan = plans[len(chain.records)]
    node = getattr(err, "node", None) or this_node()
    return {
        "name": plan.name,
        "type": plan.type,
        "key": None,
        "cache_hit": False,
        "failed": True,
        "node": node,
    }


class _Inline:
    """Runs each candidate as it is submitted: the one-at-a-time search, in this thread."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:
            future.set_exception(err)
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:500] if text else type(err).__name__


def enumerate_candidates(loaded) -> list[Candidate]:
    """Every candidate of a finite search (joint order), in the order the exhaustive sampler tries them."""
    from slimtune.search.samplers import ExhaustiveSampler

    searched = {p.name: p.space for p in loaded.passes if p.searched}
    sampler = ExhaustiveSampler(searched, 0)
    if sampler.size() is None:
        raise UserError("the search space is continuous: its candidates are only known when sampled")
    return list(sampler._order)


def candidate_keys(session: Session, candidate: Candidate) -> list[str]:
    """The cache key of each pass of a candidate, computed without running anything."""
    from slimtune.engine.chain import chain_keys

    loaded = session.loaded
    plans = [
        plan.at(candidate[plan.name], loaded.base_dir) if plan.searched else plan for plan in loaded.passes
    ]
    return chain_keys(session, plans)
