"""User code named by the plugin tests' configs: data pre/post-processing and two custom metrics."""

from pathlib import Path


def keep_tones(rows, keep, column="tone"):
    """pre_process_data_config.type: keep the rows whose `column` is one of `keep`."""
    return rows.filter(lambda row: row[column] in keep)


def always(outputs, answer):
    """post_process_data_config.type: every answer becomes `answer` (makes accuracy predictable)."""
    return [answer for _ in outputs]


def inspect_model(model, rows, marker="MARKER.txt"):
    """evaluate_func: how many rows it was given, and whether the stage's folder carries the plugin's marker."""
    return {
        "rows": len(rows),
        "marked": float(Path(model.path, marker).is_file()),
        "hf": float(model.kind == "hf"),
    }


def exact_match(outputs, targets, strip=True):
    """metric_func: share of answers equal to their targets."""
    clean = (lambda s: s.strip()) if strip else (lambda s: s)
    return sum(clean(o) == clean(t) for o, t in zip(outputs, targets, strict=True)) / len(targets)
