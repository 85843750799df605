"""Free-text answers against their reference: exact match after normalisation and token F1 (SQuAD's
definitions), and which metrics fit the answers a data set has.

Normalisation (`normalise_text`): lower-case, punctuation removed, whitespace collapsed, so "Yes, within 30
days." and "yes within 30 days" match. Token F1 is the harmonic mean of precision and recall of the
normalised words (a bag of words: order does not count), averaged over rows.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

_PUNCTUATION = str.maketrans("", "", string.punctuation + "“”‘’«»…–—¿¡")
EXAMPLES = 5
LABEL_MAX_WORDS = 3  # a label is a word or a short phrase ("joy", "very positive"), not a sentence


def normalise_text(text: str) -> str:
    return " ".join(str(text).lower().translate(_PUNCTUATION).split())


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalise_text(prediction).split(), normalise_text(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def text_report(outputs: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """{exact_match, token_f1, n, mismatch_examples}: means over rows."""
    matches = [normalise_text(o) == normalise_text(r) for o, r in zip(outputs, references, strict=True)]
    f1 = [token_f1(o, r) for o, r in zip(outputs, references, strict=True)]
    n = len(references)
    return {
        "exact_match": sum(matches) / n if n else 0.0,
        "token_f1": sum(f1) / n if n else 0.0,
        "n": n,
        "mismatch_examples": [
            {"output": o, "expected": r}
            for o, r, same in zip(outputs, references, matches, strict=True)
            if not same
        ][:EXAMPLES],
    }


def answers_are_labels(answers: Sequence[str]) -> bool:
    """Few distinct answers, each seen twice or more on average (the rule by which training stratifies its
    split, data/split.label_column_for), that label accuracy can tell apart by their first word: a
    classification task. A FAQ whose answers repeat but are sentences ("Yes, ...", "Yes, ...") is free text."""
    from slimtune.data.split import LABEL_MAX_DISTINCT
    from slimtune.evaluate.accuracy import label_index

    distinct = set(map(str, answers))
    if not 0 < len(distinct) <= min(LABEL_MAX_DISTINCT, max(1, len(answers) // 2)):
        return False
    if any(len(answer.split()) > LABEL_MAX_WORDS for answer in distinct):
        return False
    try:
        label_index(sorted(distinct))
    except ValueError:
        return False
    return True


def answer_kind(template: Any, rows: Sequence[Any]) -> str | None:
    """'labels', 'text' (free-text answers), or None when the rows have no answer to compare with (a template
    that does not end with an answer field; conversations with no assistant turn)."""
    if not template.answer_column and not template.messages_col:
        return None
    answers = [a for a in (template.answer(row) for row in rows) if a != ""]
    if not answers:
        return None
    return "labels" if answers_are_labels(answers) else "text"


METRIC_NAMES = {
    "accuracy": "label accuracy",
    "likelihood": "label likelihood accuracy",
    "text_match": "exact match, token F1",
    "perplexity": "perplexity",
    "latency": "latency",
    "size": "size",
    "memory": "memory",
}


def describe_metrics(metrics: Sequence[str]) -> str:
    return ", ".join(METRIC_NAMES.get(m, m) for m in metrics)
