"""Train/eval split that cannot leak: identical rows always land on the same side, and when the answer is a
label the held-out share of each label matches its share of the data (stratified). Deterministic per seed."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimtune.errors import DataError, UserError

if TYPE_CHECKING:
    import datasets


def row_key(row: dict[str, Any]) -> str:
    """The full content of a row, as one comparable string (column order does not matter)."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def row_keys(rows: Any) -> list[str]:
    return [row_key(row) for row in rows]


def duplicate_count(rows: Any) -> int:
    """Rows identical to an earlier row."""
    keys = row_keys(rows)
    return len(keys) - len(set(keys))


def dedupe(rows: datasets.Dataset) -> tuple[datasets.Dataset, int]:
    """(rows without exact duplicates, keeping the first of each; how many were removed)."""
    first: dict[str, int] = {}
    for index, key in enumerate(row_keys(rows)):
        first.setdefault(key, index)
    keep = sorted(first.values())
    return rows.select(keep), len(rows) - len(keep)


def overlap(train: Any, eval_rows: Any) -> int:
    """Eval rows whose full content also appears in train."""
    seen = set(row_keys(train))
    return sum(key in seen for key in row_keys(eval_rows))


def eval_count(eval_size: float, total: int) -> int:
    """eval_size < 1 is a share of the rows, >= 1 a row count."""
    if eval_size <= 0:
        raise UserError(f"eval_dataset_size must be > 0 (a share below 1 or a row count), got {eval_size}")
    count = round(eval_size * total) if eval_size < 1 else int(eval_size)
    if eval_size >= 1 and eval_size != int(eval_size):
        raise UserError(f"eval_dataset_size {eval_size} is neither a share (< 1) nor a whole row count")
    if not 1 <= count < total:
        raise UserError(
            f"eval_dataset_size {eval_size} leaves {count} of {total} rows for evaluation; "
            f"it needs at least 1 and must leave rows to train on"
        )
    return count


def split_rows(
    rows: datasets.Dataset, eval_size: float, label_column: str | None = None, seed: int = 0
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) rows; see split_indices."""
    train_idx, eval_idx = split_indices(rows, eval_size, label_column, seed)
    return rows.select(train_idx), rows.select(eval_idx)


def split_indices(
    rows: datasets.Dataset, eval_size: float, label_column: str | None = None, seed: int = 0
) -> tuple[list[int], list[int]]:
    """(train row indices, eval row indices). Groups of identical rows move together; with `label_column`,
    each label gives its share. Groups are taken in a seeded random order, each fitted while it does not
    overshoot the target."""
    if label_column is not None and label_column not in rows.column_names:
        raise DataError(
            f"cannot stratify by {label_column!r}: not a column; columns: {', '.join(rows.column_names)}",
            column=label_column,
        )
    target = eval_count(eval_size, len(rows))
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(row_keys(rows)):
        groups.setdefault(key, []).append(index)
    labels = rows[label_column] if label_column else None
    strata: dict[str, list[list[int]]] = {}
    for members in groups.values():  # dicts keep insertion order: strata and groups in first-seen order
        strata.setdefault(row_key(labels[members[0]]) if labels else "", []).append(members)
    quotas = _quotas({k: sum(map(len, g)) for k, g in strata.items()}, target, len(rows))
    rng = random.Random(seed)
    eval_idx: list[int] = []
    for key, stratum in strata.items():
        order = list(stratum)
        rng.shuffle(order)
        taken = 0
        for members in order:
            if taken + len(members) <= quotas[key]:
                eval_idx += members
                taken += len(members)
    chosen = set(eval_idx)
    if not chosen:
        raise UserError(
            f"eval_dataset_size {eval_size}: every duplicate group is larger than the eval share; "
            "raise eval_dataset_size or remove duplicates"
        )
    train_idx = [i for i in range(len(rows)) if i not in chosen]
    if not train_idx:
        raise UserError(f"eval_dataset_size {eval_size} leaves no rows to train on")
    return train_idx, sorted(chosen)


HELDOUT_FILE = "heldout.json"  # a training pass's record of its split, in its output folder


def write_heldout(folder: str | Path, data_config: str, train_idx: list[int], eval_idx: list[int]) -> dict:
    """Record the split in `folder`: evaluation reads these rows instead of computing the split again."""
    from slimtune.files import write_json_atomic

    record = {"data_config": data_config, "train_rows": len(train_idx), "eval_indices": eval_idx}
    write_json_atomic(Path(folder, HELDOUT_FILE), record)
    return record


def read_heldout(folder: str | Path) -> dict[str, Any]:
    return json.loads(Path(folder, HELDOUT_FILE).read_text())


def _quotas(sizes: dict[str, int], target: int, total: int) -> dict[str, int]:
    """Eval rows per stratum, proportional to its size, summing to target (largest remainder)."""
    exact = {k: target * n / total for k, n in sizes.items()}
    quotas = {k: math.floor(v) for k, v in exact.items()}
    short = target - sum(quotas.values())
    for k in sorted(exact, key=lambda k: (quotas[k] - exact[k], k))[:short]:
        quotas[k] += 1
    return quotas


def label_counts(rows: Any, column: str) -> dict[str, int]:
    """Rows per value of `column`, most frequent first."""
    counts = Counter(str(row[column]) for row in rows)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


LABEL_MAX_DISTINCT = 100


def label_column_for(rows: Any, answer_column: str | None) -> str | None:
    """The template's answer column when it holds labels (at most 100 distinct values, on average two rows or
    more per value); None for free-text answers. Splits stratify by it; inspect counts it."""
    if not answer_column or answer_column not in rows.column_names:
        return None
    distinct = len(set(map(str, rows[answer_column])))
    return answer_column if distinct <= min(LABEL_MAX_DISTINCT, max(1, len(rows) // 2)) else None
