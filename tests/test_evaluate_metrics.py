"""Answer normalisation and the classification numbers, on hand-made predictions."""

from __future__ import annotations

import pytest

from slimtune.evaluate.accuracy import (
    classification_report,
    classify,
    invalid_examples,
    label_index,
    normalise,
    rank_labels,
)
from slimtune.evaluate.latency import summarize

LABELS = ["joy", "sadness", "fear", "surprise"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("joy", "joy"),
        ("Joy", "joy"),
        (" JOY!", "joy"),
        ("joy.\n### Text: more", "joy"),
        ("\n\nsadness", "sadness"),
        ("fear, mostly", "fear"),
        ('"surprise"', "surprise"),
        ("…joy…", "joy"),
        ("!!! joy", "joy"),
        ("", ""),
        ("  \n ", ""),
        ("joyful", "joyful"),
        ("don't", "don't"),
    ],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


def test_classify_maps_outputs_to_labels_or_none():
    outputs = ["Joy!", " sadness\n### Text", "joyful", "", "FEAR.", "surprise surprise"]
    assert classify(outputs, LABELS) == ["joy", "sadness", None, None, "fear", "surprise"]


def test_labels_that_normalise_alike_are_rejected():
    with pytest.raises(ValueError, match="both normalise"):
        label_index(["Joy", "joy!"])
    with pytest.raises(ValueError, match="no word"):
        label_index(["..."])


def test_report_numbers():
    gold = ["joy", "joy", "joy", "fear", "fear", "sadness"]
    pred = ["joy", "joy", "fear", "fear", None, "joy"]
    report = classification_report(gold, pred, ["joy", "fear", "sadness"])

    assert report["n"] == 6 and report["correct"] == 3 and report["invalid"] == 1
    assert report["accuracy"] == pytest.approx(0.5)
    assert report["confusion"] == {
        "labels": ["joy", "fear", "sadness"],
        "columns": ["joy", "fear", "sadness", "invalid"],
        "matrix": [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]],
    }
    joy, fear, sadness = (report["per_class"][k] for k in ("joy", "fear", "sadness"))
    assert joy == {
        "precision": pytest.approx(2 / 3),
        "recall": pytest.approx(2 / 3),
        "f1": pytest.approx(2 / 3),
        "support": 3,
    }
    assert fear["precision"] == pytest.approx(1 / 2) and fear["recall"] == pytest.approx(1 / 2)
    assert fear["f1"] == pytest.approx(1 / 2) and fear["support"] == 2
    assert sadness == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # never predicted
    assert report["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_report_perfect_and_unseen_labels():
    report = classification_report(["a", "b"], ["a", "b"], ["a", "b", "c"])
    assert report["accuracy"] == 1.0 and report["invalid"] == 0
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro_f1"] == 1.0  # classes without support do not drag the macro average down
    # a gold value outside the label set gets its own row and can never be right
    report = classification_report(["a", "z"], ["a", "a"], ["a"])
    assert report["confusion"]["labels"] == ["a", "z"] and report["accuracy"] == 0.5


def test_invalid_examples_and_ranking():
    examples = invalid_examples(
        ["joy", "meh", "??"], ["joy", "fear", "sadness"], ["joy", None, None], limit=1
    )
    assert examples == [{"output": "meh", "expected": "fear"}]
    assert rank_labels([[-3.0, -1.0, -2.0], [-0.5, -0.5, -9.0]], ["a", "b", "c"]) == ["b", "a"]


def test_latency_summary():
    stats = summarize([float(v) for v in range(1, 101)])
    assert stats["avg"] == pytest.approx(50.5)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["min"] == 1.0 and stats["max"] == 100.0
