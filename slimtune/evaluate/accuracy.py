"""Task accuracy of a generation model on labelled rows: the generated answer, normalised, against the label;
per-class precision / recall / F1, the confusion matrix, and label ranking by likelihood.

Normalisation (`normalise`): lower-case, the first word, punctuation stripped from its ends, so "Joy.",
" joy\\n### Text" and "JOY!" all read "joy". A prediction whose normalised form is no normalised label is
invalid: it counts as wrong, and the confusion matrix gives it its own column.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

INVALID = "invalid"
INVALID_EXAMPLES = 5
_PUNCTUATION = string.punctuation + "“”‘’«»…–—¿¡"


def normalise(text: str) -> str:
    """Lower-case first word of `text`, without surrounding punctuation ('' when there is none)."""
    for word in str(text).lower().split():
        word = word.strip(_PUNCTUATION)
        if word:
            return word
    return ""


def label_index(labels: Sequence[str]) -> dict[str, str]:
    """normalised label -> label; two labels with the same normalised form cannot be told apart."""
    index: dict[str, str] = {}
    for label in labels:
        key = normalise(label)
        if not key:
            raise ValueError(f"label {label!r} has no word to compare with (it normalises to '')")
        if key in index and index[key] != label:
            raise ValueError(f"labels {index[key]!r} and {label!r} both normalise to {key!r}")
        index[key] = label
    return index


def classify(outputs: Sequence[str], labels: Sequence[str]) -> list[str | None]:
    """The label each output names, or None (invalid)."""
    index = label_index(labels)
    return [index.get(normalise(text)) for text in outputs]


def classification_report(
    gold: Sequence[str], predicted: Sequence[str | None], labels: Sequence[str]
) -> dict[str, Any]:
    """accuracy, n, invalid, per_class {label: precision, recall, f1, support}, confusion, macro_f1.

    Rows of `confusion.matrix` are true labels and columns predicted labels, in `confusion.labels` order,
    with a last column for invalid predictions. Precision of a label never predicted is 0, as is F1 then.
    """
    labels = list(labels)
    unknown = sorted({g for g in gold if g not in labels})
    if unknown:
        labels += unknown  # a gold value outside the label set still gets its row (it can never be right)
    position = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * (len(labels) + 1) for _ in labels]
    for truth, guess in zip(gold, predicted, strict=True):
        matrix[position[truth]][position[guess] if guess is not None else len(labels)] += 1
    per_class = {}
    for i, label in enumerate(labels):
        hits = matrix[i][i]
        support = sum(matrix[i])
        predicted_as = sum(row[i] for row in matrix)
        precision = hits / predicted_as if predicted_as else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    n = len(gold)
    correct = sum(matrix[i][i] for i in range(len(labels)))
    supported = [c["f1"] for c in per_class.values() if c["support"]]
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "invalid": sum(row[-1] for row in matrix),
        "macro_f1": sum(supported) / len(supported) if supported else 0.0,
        "per_class": per_class,
        "confusion": {"labels": labels, "columns": labels + [INVALID], "matrix": matrix},
    }


def rank_labels(scores: Sequence[Sequence[float]], labels: Sequence[str]) -> list[str]:
    """For each row's label scores (same order as `labels`), the best label (the first one on ties)."""
    return [labels[max(range(len(labels)), key=lambda k: row[k])] for row in scores]


def wrong_examples(
    outputs: Sequence[str],
    gold: Sequence[str],
    predicted: Sequence[str | None],
    limit: int = INVALID_EXAMPLES,
) -> list[dict[str, str]]:
    """Answers that name a label, but the wrong one (what a failed run's diagnosis shows beside the invalid)."""
    return _examples(
        outputs, gold, predicted, limit, lambda guess, truth: guess is not None and guess != truth
    )


def invalid_examples(
    outputs: Sequence[str],
    gold: Sequence[str],
    predicted: Sequence[str | None],
    limit: int = INVALID_EXAMPLES,
) -> list[dict[str, str]]:
    """Answers that name no label."""
    return _examples(outputs, gold, predicted, limit, lambda guess, truth: guess is None)


def _examples(outputs, gold, predicted, limit: int, keep) -> list[dict[str, str]]:
    return [
        {"output": text, "expected": truth}
        for text, truth, guess in zip(outputs, gold, predicted, strict=True)
        if keep(guess, truth)
    ][:limit]
