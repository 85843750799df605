"""Two run records side by side: each pass (cache hit, time, final training loss) and each stage's metrics."""

from __future__ import annotations

from typing import Any


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def compare_runs(a: dict[str, Any], b: dict[str, Any], labels: tuple[str, str]) -> str:
    rows: list[tuple[str, str, str]] = []
    passes_a = {p["name"]: p for p in a.get("passes") or []}
    passes_b = {p["name"]: p for p in b.get("passes") or []}
    for name in [*passes_a, *(n for n in passes_b if n not in passes_a)]:
        pa, pb = passes_a.get(name) or {}, passes_b.get(name) or {}
        rows.append((f"{name} type", _cell(pa.get("type")), _cell(pb.get("type"))))
        rows.append((f"{name} same key", "", "yes" if pa.get("key") == pb.get("key") else "no"))
        rows.append((f"{name} time s", _cell(pa.get("original_wall_s")), _cell(pb.get("original_wall_s"))))
        loss_a = (pa.get("metrics") or {}).get("train_loss")
        loss_b = (pb.get("metrics") or {}).get("train_loss")
        if loss_a is not None or loss_b is not None:
            rows.append((f"{name} train_loss", _cell(loss_a), _cell(loss_b)))
    stages_a = {s["stage"]: s for s in (a.get("evaluation") or {}).get("stages") or []}
    stages_b = {s["stage"]: s for s in (b.get("evaluation") or {}).get("stages") or []}
    for stage in [*stages_a, *(s for s in stages_b if s not in stages_a)]:
        ma = _flat((stages_a.get(stage) or {}).get("metrics") or {})
        mb = _flat((stages_b.get(stage) or {}).get("metrics") or {})
        for metric in [*ma, *(m for m in mb if m not in ma)]:
            rows.append((f"{stage} {metric}", _cell(ma.get(metric)), _cell(mb.get(metric))))
    rows.append(("goals met", _cell(a.get("goals_met")), _cell(b.get("goals_met"))))
    header = ("", *labels)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines)
