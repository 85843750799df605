"""Loading local data through datasets, and the errors bad data gives (file, line, column)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from slimtune.config.schema import AzureMLDatastore, LoadDatasetConfig
from slimtune.data.load import load_rows
from slimtune.errors import DataError, UserError

ROWS = [
    {"phrase": "so happy", "tone": "joy"},
    {"phrase": "so scared", "tone": "fear"},
    {"phrase": "wow", "tone": "surprise"},
    {"phrase": "yay", "tone": "joy"},
]


def write_jsonl(path: Path, rows=ROWS) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def load(data_files=None, **kw):
    config = LoadDatasetConfig(**kw)
    config.data_files = data_files  # a split mapping does not pass the schema's resource check yet
    return load_rows(config)


def test_json_lines_and_json_array(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl")
    (tmp_path / "b.json").write_text(json.dumps(ROWS, indent=2))
    assert load(data_files=jsonl).to_list() == ROWS
    assert load(data_files=str(tmp_path / "b.json")).to_list() == ROWS


def test_writes_nothing_next_to_the_data(tmp_path):
    write_jsonl(tmp_path / "a.jsonl")
    load(data_files=str(tmp_path / "a.jsonl"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_csv_parquet_text(tmp_path):
    (tmp_path / "a.csv").write_text("phrase,tone\nso happy,joy\nwow,surprise\n")
    assert load(data_name="csv", data_files=str(tmp_path / "a.csv"))["tone"] == ["joy", "surprise"]
    import datasets

    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "a.parquet"))
    assert load(data_name="parquet", data_files=str(tmp_path / "a.parquet")).to_list() == ROWS
    (tmp_path / "a.txt").write_text("line one\nline two\n")
    assert load(data_name="text", data_files=str(tmp_path / "a.txt"))["text"] == ["line one", "line two"]


def test_list_split_mapping_filters_and_max_samples(tmp_path):
    a, b = write_jsonl(tmp_path / "a.jsonl", ROWS[:2]), write_jsonl(tmp_path / "b.jsonl", ROWS[2:])
    assert len(load(data_files=[a, b])) == 4
    assert load(data_files={"train": a, "test": b}, split="test").to_list() == ROWS[2:]
    assert load(data_files=str(tmp_path / "*.jsonl"), col_filters={"tone": "joy"})["phrase"] == [
        "so happy",
        "yay",
    ]
    assert load(data_files=[a, b], max_samples=3).num_rows == 3
    with pytest.raises(UserError, match="split 'test' is not in data_files.*only the split 'train'"):
        load(data_files=a, split="test")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: file not found"):
        load(data_files=str(tmp_path / "nope.json"))


def test_invalid_json_line_gives_its_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"phrase": "a", "tone": "joy"}\n\n{"phrase": "b", "tone": "joy"\n{"phrase": "c"}\n')
    with pytest.raises(DataError) as err:
        load(data_files=str(path))
    assert f"{path}:3: invalid JSON line" in str(err.value) and err.value.line == 3


def test_invalid_json_array_gives_its_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2,}\n]\n')
    with pytest.raises(DataError, match=r"bad\.json:3: invalid JSON"):
        load(data_files=str(path))


def test_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"list\.jsonl:2: a JSON line must be an object"):
        load(data_files=str(path))


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"[]"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"empty\.json: .*(empty|only whitespace)"):
        load(data_files=str(path))


def test_csv_with_header_only_is_empty(tmp_path):
    path = tmp_path / "head.csv"
    path.write_text("phrase,tone\n")
    with pytest.raises(DataError, match=r"head\.csv: the data set has no rows"):
        load(data_name="csv", data_files=str(path))


def test_non_utf8_names_the_byte_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"phrase": "ok", "tone": "joy"}\n{"phrase": "café", "tone": "joy"}\n'.encode("latin-1"))
    with pytest.raises(DataError) as err:
        load(data_files=str(path))
    message = str(err.value)
    assert (
        f"{path}:2: not UTF-8" in message
        and "0xe9" in message
        and "byte offset 47 (line 2, character 16)" in message
    )


def test_unknown_filter_column(tmp_path):
    with pytest.raises(DataError, match=r"col_filters names column 'mood'.*columns: phrase, tone"):
        load(data_files=write_jsonl(tmp_path / "a.jsonl"), col_filters={"mood": "joy"})
    with pytest.raises(DataError, match="no row matches col_filters"):
        load(data_files=write_jsonl(tmp_path / "a.jsonl"), col_filters={"tone": "anger"})


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ("s3://bucket/data.jsonl", r"s3://bucket/data.jsonl: no AWS credential found"),
        ("https://example.invalid/data.jsonl", r"example.invalid/data.jsonl: unknown host example.invalid"),
        (
            AzureMLDatastore(
                type="azureml_datastore", datastore_name="workspaceblobstore", relative_path="d.json"
            ),
            r"azureml://datastores/workspaceblobstore/paths/d.json: the workspace is not known",
        ),
        ({"train": "az://container/d.json"}, r"az://container/d.json: no storage account"),
    ],
)
def test_remote_data_that_cannot_be_read_is_named(files, expected, tmp_path, monkeypatch):
    """Remote data is read (tests/test_storage.py, against real servers); here what stops before any data
    moves: no credential, no such host, no workspace, no account. Each names the resource (exit 2)."""
    for name in [k for k in os.environ if k.startswith(("AWS_", "AZURE_STORAGE_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    listening = socket.create_server(
        ("127.0.0.1", 0)
    )  # an S3 endpoint that answers: the credential is missing
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listening.getsockname()[1]}")
    monkeypatch.setenv("SLIMTUNE_DOWNLOADS", str(tmp_path / "downloads"))
    with pytest.raises(UserError, match=expected):
        load(data_files=files)
    listening.close()


def test_hub_data_name_is_not_implemented():
    with pytest.raises(
        UserError, match=r"data_name: remote data \(tatsu-lab/alpaca\) is not implemented yet"
    ):
        load(data_name="tatsu-lab/alpaca")
