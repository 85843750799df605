"""Train/eval split: duplicates stay together, labels are stratified, the seed decides; and fingerprints."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from test_data_fixtures import dataset

from slimtune.config.schema import DataConfig
from slimtune.data.fingerprint import data_fingerprint, file_digest
from slimtune.data.split import dedupe, duplicate_count, label_column_for, overlap, row_keys, split_rows
from slimtune.errors import DataError, UserError


def rows_with_duplicates():
    rows = []
    for label, count in (("joy", 40), ("fear", 30), ("sadness", 20), ("surprise", 10)):
        rows += [{"phrase": f"{label} {i}", "tone": label} for i in range(count)]
    rows += [{"phrase": "joy 0", "tone": "joy"}] * 4 + [{"phrase": "fear 3", "tone": "fear"}] * 2
    return dataset(rows)


def test_duplicates_and_dedupe():
    rows = rows_with_duplicates()
    assert duplicate_count(rows) == 6
    unique, removed = dedupe(rows)
    assert removed == 6 and len(unique) == 100 and duplicate_count(unique) == 0
    assert row_keys([{"a": 1, "b": 2}]) == row_keys([{"b": 2, "a": 1}])  # column order does not matter


def test_split_keeps_duplicates_on_one_side():
    for seed in range(5):
        train, eval_rows = split_rows(rows_with_duplicates(), 0.2, "tone", seed=seed)
        assert overlap(train, eval_rows) == 0
        assert len(train) + len(eval_rows) == 106
        assert not set(row_keys(train)) & set(row_keys(eval_rows))


def test_split_is_stratified_by_label():
    rows = dedupe(rows_with_duplicates())[0]
    train, eval_rows = split_rows(rows, 0.2, "tone", seed=1)
    assert Counter(eval_rows["tone"]) == {"joy": 8, "fear": 6, "sadness": 4, "surprise": 2}
    assert len(train) == 80


def test_split_is_deterministic_per_seed():
    rows = rows_with_duplicates()
    first = split_rows(rows, 0.25, "tone", seed=7)[1]["phrase"]
    assert split_rows(rows, 0.25, "tone", seed=7)[1]["phrase"] == first
    assert split_rows(rows, 0.25, "tone", seed=8)[1]["phrase"] != first


def test_eval_size_as_a_row_count_without_labels():
    train, eval_rows = split_rows(rows_with_duplicates(), 10, None)
    assert len(eval_rows) == 10 and len(train) == 96


@pytest.mark.parametrize("size", [0, 106, 500, 2.5])
def test_bad_eval_sizes(size):
    with pytest.raises(UserError, match="eval_dataset_size"):
        split_rows(rows_with_duplicates(), size, None)


def test_unknown_label_column():
    with pytest.raises(DataError, match="cannot stratify by 'mood'"):
        split_rows(rows_with_duplicates(), 0.2, "mood")


def test_label_column_only_for_label_like_answers():
    rows = rows_with_duplicates()
    assert label_column_for(rows, "tone") == "tone"
    assert label_column_for(rows, "phrase") is None  # free text
    assert label_column_for(rows, None) is None


def test_fingerprint_follows_content_and_config(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n")
    config = DataConfig.model_validate({"name": "d", "load_dataset_config": {"data_files": str(path)}})
    first = data_fingerprint(config)
    assert len(first) == 64 and data_fingerprint(config) == first
    path.write_text(json.dumps({"text": "b"}) + "\n")
    os.utime(path, ns=(1, 1))  # a new mtime too: the per-process digest cache is keyed by it
    assert data_fingerprint(config) != first
    other = config.model_copy(deep=True)
    other.pre_process_data_config.max_seq_len = 64
    assert data_fingerprint(other) != data_fingerprint(config)
    assert file_digest(tmp_path / "missing") == "missing"


def test_fingerprint_of_remote_data_needs_its_content():
    """Remote data is fingerprinted by its content (so cache keys stay content-addressed): a datastore whose
    workspace is unknown cannot be read, and the fingerprint says which resource, with exit code 2."""
    from slimtune.storage import StorageError

    config = DataConfig.model_validate(
        {
            "name": "d",
            "load_dataset_config": {
                "data_files": {
                    "type": "azureml_datastore",
                    "datastore_name": "store",
                    "relative_path": "a.json",
                }
            },
        }
    )
    with pytest.raises(
        StorageError, match="azureml://datastores/store/paths/a.json: the workspace is not known"
    ) as err:
        data_fingerprint(config)
    assert err.value.exit_code == 2
