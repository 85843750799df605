"""Sanity checks for the shipped emotion-classification example data.

examples/emotion/data.jsonl is the training set and
examples/emotion/heldout.jsonl the held-out evaluation set; the held-out
phrases must never appear in the training set.  Standard library only.
"""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "emotion" / "data.jsonl"
HELDOUT = ROOT / "examples" / "emotion" / "heldout.jsonl"

TONES = {"joy", "sadness", "fear", "surprise"}
MIN_SHARE, MAX_SHARE = 0.22, 0.28
MIN_WORDS, MAX_WORDS = 5, 16


def _load(path):
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            assert line.strip(), f"{path.name}:{lineno}: blank line"
            obj = json.loads(line)
            assert isinstance(obj, dict), f"{path.name}:{lineno}: not an object"
            rows.append((lineno, obj))
    return rows


def _norm(phrase):
    """Case- and whitespace-insensitive key."""
    return " ".join(phrase.lower().split())


def _loose(phrase):
    """Also ignores punctuation, to catch near-identical copies."""
    return " ".join(re.sub(r"[^\w\s]", " ", phrase.lower()).split())


@pytest.fixture(scope="module")
def data():
    return _load(DATA)


@pytest.fixture(scope="module")
def heldout():
    return _load(HELDOUT)


@pytest.mark.parametrize("which", ["data", "heldout"])
def test_rows_well_formed(which, request):
    rows = request.getfixturevalue(which)
    for lineno, obj in rows:
        where = f"{which}:{lineno}"
        assert list(obj) == ["phrase", "tone"], f"{where}: keys {list(obj)}"
        assert isinstance(obj["phrase"], str) and obj["phrase"].strip(), where
        assert obj["phrase"] == obj["phrase"].strip(), f"{where}: stray whitespace"
        assert obj["tone"] in TONES, f"{where}: tone {obj['tone']!r}"
        n = len(obj["phrase"].split())
        assert MIN_WORDS <= n <= MAX_WORDS, f"{where}: {n} words"


@pytest.mark.parametrize("which", ["data", "heldout"])
def test_no_duplicates_within_file(which, request):
    rows = request.getfixturevalue(which)
    for key in (_norm, _loose):
        counts = Counter(key(obj["phrase"]) for _, obj in rows)
        dups = sorted(p for p, c in counts.items() if c > 1)
        assert not dups, f"{which}: duplicate phrases {dups[:5]}"


def test_no_overlap_between_files(data, heldout):
    for key in (_norm, _loose):
        train = {key(obj["phrase"]) for _, obj in data}
        leaked = sorted(key(obj["phrase"]) for _, obj in heldout if key(obj["phrase"]) in train)
        assert not leaked, f"held-out phrases found in training data: {leaked[:5]}"


def test_training_counts_and_balance(data):
    assert len(data) >= 480
    counts = Counter(obj["tone"] for _, obj in data)
    assert set(counts) == TONES
    for tone, c in counts.items():
        share = c / len(data)
        assert MIN_SHARE <= share <= MAX_SHARE, f"{tone}: {share:.1%}"


def test_heldout_counts_and_balance(heldout):
    assert len(heldout) == 120
    counts = Counter(obj["tone"] for _, obj in heldout)
    assert counts == {tone: 30 for tone in TONES}
