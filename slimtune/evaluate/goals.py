"""Olive's metrics and goals over slimtune's evaluation results.

A config names metrics as Olive does (`{"name": "accuracy", "type": "accuracy", "sub_types": [{"name":
"accuracy_score", "goal": {...}}]}`); each sub-type reads one number from `evaluate_model`'s result. Goals
compare a stage's value with a baseline stage (Olive: the input model; `goal.baseline` may name a pass,
e.g. the merged model, so that the int4 model is held to the fine-tuned one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimtune.errors import UserError

# (metric type, sub-type) -> (path into evaluate_model's result, higher is better)
SUB_TYPES: dict[tuple[str, str], tuple[tuple[str, ...], bool]] = {
    ("accuracy", "accuracy_score"): (("accuracy",), True),
    ("accuracy", "accuracy"): (("accuracy",), True),
    ("accuracy", "likelihood_accuracy"): (("likelihood_accuracy",), True),
    ("accuracy", "f1_score"): (("macro_f1",), True),
    ("accuracy", "precision"): (("macro_precision",), True),
    ("accuracy", "recall"): (("macro_recall",), True),
    ("accuracy", "invalid_rate"): (("invalid_rate",), False),
    # free-text answers (evaluate/text_metrics.py): generated answer vs the reference
    ("accuracy", "exact_match"): (("exact_match",), True),
    ("accuracy", "token_f1"): (("token_f1",), True),
    ("latency", "avg"): (("latency", "e2e_ms", "avg"), False),
    ("latency", "mean"): (("latency", "e2e_ms", "avg"), False),
    ("latency", "p50"): (("latency", "e2e_ms", "p50"), False),
    ("latency", "p90"): (("latency", "e2e_ms", "p90"), False),
    ("latency", "p99"): (("latency", "e2e_ms", "p99"), False),
    ("latency", "ttft"): (("latency", "ttft_ms"), False),
    ("throughput", "avg"): (("latency", "decode_tokens_per_s"), True),
    ("throughput", "decode"): (("latency", "decode_tokens_per_s"), True),
    ("throughput", "prompt"): (("latency", "prompt_tokens_per_s"), True),
    ("perplexity", "perplexity"): (("perplexity",), False),
    ("size", "size"): (("size_bytes",), False),
    ("size", "bytes"): (("size_bytes",), False),
    ("memory", "peak"): (("peak_memory_bytes",), False),
    ("memory", "peak_memory"): (("peak_memory_bytes",), False),
}
# metric type -> what evaluate_model must compute
NEEDS = {
    "accuracy": "accuracy",
    "latency": "latency",
    "throughput": "latency",
    "perplexity": "perplexity",
    "size": "size",
    "memory": "memory",
}
TEXT_SUB_TYPES = {"exact_match", "token_f1"}
DEFAULT_SUB_TYPE = {
    "accuracy": "accuracy_score",
    "latency": "avg",
    "throughput": "avg",
    "perplexity": "perplexity",
    "size": "size",
    "memory": "peak",
}


@dataclass
class MetricRef:
    key: str  # Olive's result name, e.g. "accuracy-accuracy_score"
    path: tuple[str, ...]
    higher_is_better: bool
    priority: int
    goal: Any  # schema.Goal or None


def metric_refs(metrics: list[Any]) -> list[MetricRef]:
    """The sub-metrics of an evaluator's metric list; unknown ones are user errors naming valid choices."""
    refs: list[MetricRef] = []
    for metric in metrics:
        if metric.type == "custom":  # the user's function returns one value per sub-type (evaluate/custom.py)
            for sub in metric.sub_types:
                path = ("custom", metric.name, sub.name)
                refs.append(
                    MetricRef(
                        f"{metric.name}-{sub.name}", path, bool(sub.higher_is_better), sub.priority, sub.goal
                    )
                )
            continue
        sub_types = metric.sub_types or []
        if not sub_types:
            from slimtune.config.schema import SubMetric

            sub_types = [SubMetric(name=DEFAULT_SUB_TYPE[metric.type])]
        for sub in sub_types:
            found = SUB_TYPES.get((metric.type, sub.name))
            if found is None:
                valid = sorted(name for kind, name in SUB_TYPES if kind == metric.type)
                raise UserError(
                    f"metric `{metric.name}` ({metric.type}): unknown sub_type `{sub.name}`; "
                    f"one of {', '.join(valid)}"
                )
            path, higher = found
            if sub.higher_is_better is not None:
                higher = sub.higher_is_better
            refs.append(MetricRef(f"{metric.name}-{sub.name}", path, higher, sub.priority, sub.goal))
    return refs


def required_metrics(metrics: list[Any]) -> list[str]:
    """What evaluate_model must compute for these metrics (label ranking only when a sub-type reads it)."""
    needed = set()
    for m in metrics:
        if m.type == "accuracy" and m.sub_types and all(s.name in TEXT_SUB_TYPES for s in m.sub_types):
            needed.add("text_match")  # exact match / token F1 only: no label set needed
        elif m.type == "accuracy" and any(s.name in TEXT_SUB_TYPES for s in m.sub_types):
            needed |= {"accuracy", "text_match"}
        elif m.type in NEEDS:
            needed.add(NEEDS[m.type])
    if any(
        m.type == "accuracy" and any(s.name == "likelihood_accuracy" for s in m.sub_types) for m in metrics
    ):
        needed.add("likelihood")
    return sorted(needed)


def read(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = result
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) else None


def check_goal(ref: MetricRef, actual: float | None, baseline: float | None) -> dict[str, Any]:
    """One goal's verdict: met or not, and the margin (positive: room left; negative: missed by)."""
    goal = ref.goal
    sign = 1 if ref.higher_is_better else -1
    out: dict[str, Any] = {
        "metric": ref.key,
        "type": goal.type,
        "value": goal.value,
        "actual": actual,
        "baseline": baseline,
        "higher_is_better": ref.higher_is_better,
    }
    if actual is None or (goal.type != "threshold" and baseline is None):
        out.update(met=False, margin=None, reason="not measured")
        return out
    if goal.type == "threshold":
        margin = sign * (actual - goal.value)
    elif goal.type == "max-degradation":
        margin = goal.value - sign * (baseline - actual)
    elif goal.type == "min-improvement":
        margin = sign * (actual - baseline) - goal.value
    else:
        change = sign * (actual - baseline) / abs(baseline) * 100 if baseline else 0.0
        margin = goal.value + change if goal.type == "percent-max-degradation" else change - goal.value
    out.update(met=margin >= -1e-12, margin=margin)
    return out


def describe_goal(result: dict[str, Any]) -> str:
    kind, value = result["type"], result["value"]
    base = result.get("baseline_stage") or "input"
    if kind == "threshold":
        what = f"{'>=' if result['higher_is_better'] else '<='} {value:g}"
    elif kind.startswith("percent"):
        what = f"{kind.replace('percent-', '')} {value:g}% vs {base}"
    else:
        what = f"{kind} {value:g} vs {base}"
    actual = "n/a" if result["actual"] is None else f"{result['actual']:.4g}"
    verdict = (
        "met"
        if result["met"]
        else (
            "MISSED"
            + (
                f" by {-result['margin']:.4g}"
                if result.get("margin") is not None
                else f" ({result.get('reason')})"
            )
        )
    )
    return f"{result['metric']}: {actual} ({what}): {verdict}"


def rank_key(refs: list[MetricRef], result: dict[str, Any]) -> tuple:
    """Sort key: metrics by priority (1 first), each oriented so that smaller sorts first."""
    ordered = sorted((r for r in refs if r.priority > 0), key=lambda r: r.priority)
    key = []
    for ref in ordered:
        value = read(result, ref.path)
        key.append(float("inf") if value is None else (-value if ref.higher_is_better else value))
    return tuple(key)


def pareto_front(points: list[dict[str, float | None]], higher_better: dict[str, bool]) -> list[int]:
    """Indices of the points no other point beats on every objective (None counts as worst)."""

    def oriented(p: dict[str, float | None], name: str) -> float:
        v = p.get(name)
        if v is None:
            return float("inf")
        return -v if higher_better[name] else v

    front = []
    for i, p in enumerate(points):
        dominated = False
        for j, q in enumerate(points):
            if i == j:
                continue
            better_or_equal = all(oriented(q, n) <= oriented(p, n) for n in higher_better)
            strictly = any(oriented(q, n) < oriented(p, n) for n in higher_better)
            if better_or_equal and strictly:
                dominated = True
                break
        if not dominated:
            front.append(i)
    return front
