"""What the reports show, read out of a run record: plain rows of already formatted cells.

The record comes from disk and may be from an older or a failed run, so every reader here tolerates missing
or mistyped parts (a missing value renders as "–") instead of failing the whole report.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from slimtune import units

MISSING = "–"
# run statuses of a run that got to the end (its goals may still have failed); anything else stopped early
FINISHED = {"ok", "goals_not_met"}


def finished(record: dict[str, Any]) -> bool:
    return record.get("status") in FINISHED


def dig(value: Any, *path: str) -> Any:
    """`value[path[0]][path[1]]...`, or None where any step is missing or not a mapping."""
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def number(value: Any) -> float | None:
    """A finite number, or None: NaN and infinities (a diverged loss, say) cannot be placed on a chart."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def fmt_pct(value: Any) -> str:
    v = number(value)
    return MISSING if v is None else f"{v * 100:.1f}%"


def fmt_points(delta: float | None) -> str:
    """A change of a fraction in percentage points, signed: +1.0 pt."""
    return MISSING if delta is None else f"{delta * 100:+.1f} pt"


def fmt_num(value: Any, digits: int = 2) -> str:
    v = number(value)
    if v is None:
        return MISSING
    if isinstance(value, int):
        return f"{value:,}"
    return f"{v:,.{digits}f}"


def fmt_g(value: Any) -> str:
    v = number(value)
    return MISSING if v is None else f"{v:.4g}"


def fmt_bytes(value: Any) -> str:
    v = number(value)
    return MISSING if v is None else units.fmt_bytes(v)


def fmt_ms(value: Any) -> str:
    v = number(value)
    if v is None:
        return MISSING
    return f"{v / 1000:.2f} s" if v >= 10_000 else f"{v:.1f} ms"


def fmt_duration(value: Any) -> str:
    v = number(value)
    if v is None:
        return MISSING
    if v < 60:
        return f"{v:.1f} s"
    minutes, seconds = divmod(int(round(v)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s"


def fmt_time(value: Any) -> str:
    v = number(value)
    if v is None:
        return MISSING
    return dt.datetime.fromtimestamp(v, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def model_label(name: Any, path: Any) -> str:
    """A model as the config named it, with the folder it resolved to beside it when that differs."""
    name, path = (str(x) if x else None for x in (name, path))
    if not name or not path or name == path:
        return name or path or MISSING
    return f"{name} ({path})"


def fmt_params(params: Any) -> str:
    """Search parameters as `a=1, b=2`, nested mappings flattened with dots."""
    flat: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat.append(f"{prefix}={value}")

    walk("", as_dict(params))
    return ", ".join(flat) or MISSING


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    align_right: set[int] = field(default_factory=set)  # numeric columns


@dataclass
class Stage:
    """One evaluated stage: raw numbers for charts, formatted cells for tables."""

    name: str
    label: str
    kind: str
    metrics: dict[str, Any]

    @property
    def accuracy(self) -> float | None:
        return number(self.metrics.get("accuracy"))

    @property
    def p50_ms(self) -> float | None:
        return number(dig(self.metrics, "latency", "e2e_ms", "p50"))

    @property
    def size_bytes(self) -> float | None:
        return number(self.metrics.get("size_bytes"))


def stages(record: dict[str, Any]) -> list[Stage]:
    found = []
    for i, raw in enumerate(as_list(dig(record, "evaluation", "stages"))):
        if not isinstance(raw, dict):
            continue
        name = str(raw.get("stage") or f"stage {i}")
        found.append(
            Stage(
                name,
                str(raw.get("label") or name),
                str(raw.get("kind") or MISSING),
                as_dict(raw.get("metrics")),
            )
        )
    return found


def latency_notes(found: list[Stage]) -> list[str]:
    """When and under what load each stage's latency was measured (a figure taken under load is flagged)."""
    notes = []
    for stage in found:
        conditions = as_dict(as_dict(stage.metrics.get("latency")).get("conditions"))
        if not conditions:
            continue
        share = number(conditions.get("other_cpu_share"))
        load = "" if share is None else f", other processes used {share:.0%} of the CPUs"
        flag = " (under load: measured again on the next run)" if conditions.get("contended") else ""
        notes.append(
            f"{stage.label}: latency measured {conditions.get('measured_at') or MISSING}{load}{flag}"
        )
    return notes


def stage_table(found: list[Stage]) -> Table:
    table = Table(
        [
            "stage",
            "kind",
            "accuracy",
            "Δ accuracy",
            "likelihood acc.",
            "invalid",
            "perplexity",
            "latency p50",
            "latency p90",
            "decode tok/s",
            "size",
            "peak memory",
        ],
        align_right=set(range(2, 12)),
    )
    previous: float | None = None
    for stage in found:
        m = stage.metrics
        accuracy = stage.accuracy
        delta = accuracy - previous if accuracy is not None and previous is not None else None
        invalid, n = number(m.get("invalid")), number(m.get("n"))
        table.rows.append(
            [
                stage.label,
                stage.kind,
                fmt_pct(accuracy),
                fmt_points(delta),
                fmt_pct(m.get("likelihood_accuracy")),
                MISSING if invalid is None else (f"{int(invalid)} / {int(n)}" if n else f"{int(invalid)}"),
                fmt_num(m.get("perplexity")),
                fmt_ms(dig(m, "latency", "e2e_ms", "p50")),
                fmt_ms(dig(m, "latency", "e2e_ms", "p90")),
                fmt_num(dig(m, "latency", "decode_tokens_per_s"), 1),
                fmt_bytes(m.get("size_bytes")),
                fmt_bytes(m.get("peak_memory_bytes")),
            ]
        )
        if accuracy is not None:
            previous = accuracy
    return table


def goal_verdict(goal: dict[str, Any]) -> str:
    if goal.get("met"):
        return "met"
    margin = number(goal.get("margin"))
    if margin is not None:
        return f"MISSED by {-margin:.4g}"
    return f"MISSED ({goal.get('reason') or 'not measured'})"


def goals_table(record: dict[str, Any]) -> Table:
    table = Table(["metric", "goal", "baseline", "actual", "result", "margin"], align_right={2, 3, 5})
    for goal in as_list(record.get("goals")):
        if not isinstance(goal, dict):
            continue
        kind, value = str(goal.get("type") or "?"), goal.get("value")
        against = "" if kind == "threshold" else f" vs {goal.get('baseline_stage') or 'input'}"
        value_text = fmt_g(value) + ("%" if kind.startswith("percent") else "")
        table.rows.append(
            [
                str(goal.get("metric") or "?") + (" (default)" if goal.get("default") else ""),
                f"{kind} {value_text}{against}",
                fmt_g(goal.get("baseline")),
                fmt_g(goal.get("actual")),
                goal_verdict(goal),
                fmt_g(goal.get("margin")),
            ]
        )
    return table


def passes_table(record: dict[str, Any]) -> Table:
    table = Table(
        ["pass", "type", "cache", "time", "peak memory", "output size", "cache key"], align_right={3, 4, 5}
    )
    for p in as_list(record.get("passes")):
        if not isinstance(p, dict):
            continue
        hit = p.get("cache_hit")
        took = fmt_duration(p.get("original_wall_s", p.get("wall_s")))
        table.rows.append(
            [
                str(p.get("name") or "?"),
                str(p.get("type") or "?"),
                MISSING if hit is None else ("hit" if hit else "run"),
                f"{took} (cached)" if hit else took,
                fmt_bytes(p.get("peak_rss_bytes")),
                fmt_bytes(p.get("output_size_bytes")),
                str(p.get("key") or "")[:16],
            ]
        )
    return table


def training_passes(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Passes that trained: they logged a loss."""
    found = []
    for p in as_list(record.get("passes")):
        metrics = as_dict(dig(p, "metrics"))
        if metrics.get("loss_curve") or number(metrics.get("train_loss")) is not None:
            found.append(p)
    return found


def curve(points: Any, y_key: str) -> list[tuple[float, float]]:
    out = []
    for point in as_list(points):
        x, y = number(dig(point, "step")), number(dig(point, y_key))
        if x is not None and y is not None:
            out.append((x, y))
    return out


def training_table(record: dict[str, Any]) -> Table:
    table = Table(
        [
            "pass",
            "steps",
            "train samples",
            "eval samples",
            "train loss",
            "eval loss",
            "final eval ppl",
            "tokens/s",
            "trainable params",
        ],
        align_right=set(range(1, 9)),
    )
    for p in training_passes(record):
        m = as_dict(p.get("metrics"))
        trainable, total = number(m.get("trainable_params")), number(m.get("total_params"))
        share = f" ({trainable / total * 100:.2f}%)" if trainable is not None and total else ""
        table.rows.append(
            [
                str(p.get("name") or "?"),
                fmt_num(m.get("steps")),
                fmt_num(m.get("train_samples")),
                fmt_num(m.get("eval_samples")),
                fmt_num(m.get("train_loss"), 4),
                fmt_num(m.get("eval_loss"), 4),
                fmt_num(m.get("eval_perplexity"), 3),
                fmt_num(m.get("tokens_per_s"), 1),
                fmt_num(m.get("trainable_params")) + share,
            ]
        )
    return table


@dataclass
class Confusion:
    stage: str
    labels: list[str]
    columns: list[str]
    matrix: list[list[int]]


def final_confusion(found: list[Stage]) -> Confusion | None:
    """The confusion matrix of the last stage that has one (the final model's, normally)."""
    for stage in reversed(found):
        raw = as_dict(stage.metrics.get("confusion"))
        labels, columns = as_list(raw.get("labels")), as_list(raw.get("columns"))
        matrix = as_list(raw.get("matrix"))
        if not labels or len(matrix) != len(labels):
            continue
        columns = columns or labels
        rows = [[int(number(c) or 0) for c in as_list(r)][: len(columns)] for r in matrix]
        rows = [r + [0] * (len(columns) - len(r)) for r in rows]
        return Confusion(stage.label, [str(x) for x in labels], [str(x) for x in columns], rows)
    return None


def candidate_value(metrics: dict[str, Any], what: str) -> float | None:
    """A candidate's accuracy / p50 latency / size, in evaluate's nested form or Olive's flat `name-sub` keys."""
    nested = {"accuracy": ("accuracy",), "p50": ("latency", "e2e_ms", "p50"), "size": ("size_bytes",)}[what]
    flat = {
        "accuracy": ("accuracy-accuracy_score", "accuracy-accuracy"),
        "p50": ("latency-p50",),
        "size": ("size-size", "size-bytes"),
    }[what]
    value = number(dig(metrics, *nested))
    for key in flat:
        if value is None:
            value = number(metrics.get(key))
    return value


def candidates_table(record: dict[str, Any]) -> Table:
    table = Table(
        ["id", "chosen", "Pareto", "parameters", "status", "accuracy", "latency p50", "size"],
        align_right={5, 6, 7},
    )
    for c in as_list(record.get("candidates")):
        if not isinstance(c, dict):
            continue
        m = as_dict(c.get("metrics"))
        table.rows.append(
            [
                str(c.get("id", "?")),
                "yes" if c.get("chosen") else "",
                "yes" if c.get("pareto") else "",
                fmt_params(c.get("params")),
                _candidate_status(c),
                fmt_pct(candidate_value(m, "accuracy")),
                fmt_ms(candidate_value(m, "p50")),
                fmt_bytes(candidate_value(m, "size")),
            ]
        )
    return table


def search_summary(record: dict[str, Any]) -> str:
    """One sentence on the search: how many candidates, which was chosen and why, why it stopped."""
    search = as_dict(record.get("search"))
    if not search:
        return ""
    count = len(as_list(record.get("candidates")))
    failed = search.get("failed") or 0
    front = ", ".join(f"#{i}" for i in as_list(search.get("pareto_front")))
    return (
        f"{count} candidates tried ({failed} failed); chosen: #{search.get('chosen')} ({search.get('why')}). "
        f"Stopped: {search.get('stopped')}. Pareto front (accuracy, latency p50, size): {front or 'none'}."
    )


def _candidate_status(candidate: dict[str, Any]) -> str:
    status = str(candidate.get("status") or "ok").replace("_", " ")
    reason = str(candidate.get("reason") or "")
    if status == "failed" and reason:
        return f"failed: {reason[:120]}{'...' if len(reason) > 120 else ''}"
    return status


def summary(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs for the top of the report."""
    machine = as_dict(record.get("machine"))
    final = as_dict(record.get("final_model"))
    data = as_dict(dig(record, "evaluation", "data"))
    goals_met = record.get("goals_met")
    rows = [
        ("status", str(record.get("status") or "unknown")),
        ("goals", "none set" if goals_met is None else ("all met" if goals_met else "MISSED")),
        ("started", fmt_time(record.get("started"))),
        ("wall time", fmt_duration(record.get("wall_s"))),
        ("config", str(record.get("config_file") or MISSING)),
        (
            "input model",
            f"{model_label(dig(record, 'input_model', 'name'), dig(record, 'input_model', 'path'))}, "
            f"{dig(record, 'input_model', 'kind') or '?'}",
        ),
        (
            "final model",
            f"{final.get('path') or MISSING} ({final.get('kind') or '?'}, {fmt_bytes(final.get('size_bytes'))})"
            if final
            else MISSING,
        ),
        (
            "evaluation data",
            f"{data.get('source') or MISSING}, {fmt_num(data.get('rows'))} rows" if data else "not evaluated",
        ),
        ("machine", _machine(machine)),
        ("slimtune", str(record.get("slimtune_version") or MISSING)),
    ]
    error = record.get("error")
    if error:
        rows.insert(1, ("error", str(error)))
    return rows


def _machine(machine: dict[str, Any]) -> str:
    parts = [str(machine["platform"])] if machine.get("platform") else []
    if machine.get("python"):
        parts.append(f"Python {machine['python']}")
    if machine.get("cpu_count"):
        parts.append(f"{machine['cpu_count']} CPUs")
    if machine.get("device"):
        provider = machine.get("execution_provider")
        parts.append(f"device {machine['device']}" + (f" ({provider})" if provider else ""))
    return ", ".join(parts) or MISSING


@dataclass
class Diagnosis:
    """Why a fine-tune did not learn (run.json `diagnosis`, written by the engine's advice module)."""

    summary: str
    examples: Table
    causes: list[str]
    fix: str


def diagnosis(record: dict[str, Any]) -> Diagnosis | None:
    raw = as_dict(record.get("diagnosis"))
    if not raw.get("summary"):
        return None
    examples = Table(["stage", "model's answer", "expected"])
    for e in as_list(raw.get("examples")):
        if isinstance(e, dict):
            examples.rows.append(
                [str(e.get("stage", "")), repr(str(e.get("output", ""))), str(e.get("expected", ""))]
            )
    causes = [str(c) for c in as_list(raw.get("causes"))]
    return Diagnosis(str(raw["summary"]), examples, causes, str(raw.get("fix") or ""))


def versions(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in sorted(as_dict(record.get("library_versions")).items())]


def key_mappings(record: dict[str, Any]) -> list[str]:
    return [str(m) for m in as_list(record.get("key_mappings"))]
