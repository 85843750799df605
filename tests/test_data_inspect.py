"""`slimtune data inspect`: statistics on a small fixture, config files, and the seed data set's numbers."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from test_data_fixtures import word_tokenizer

from slimtune.cli.data import inspect_command, is_config_file
from slimtune.cli.main import main
from slimtune.errors import DataError, UserError

HERE = Path(__file__).parent
SMALL = HERE / "data_files" / "emotion_small.jsonl"
SEED_DATA = HERE.parent.parent / "shared" / "data" / "dataset-classification.json"
SEED_TEMPLATE = r"### Text: {phrase}\n### The tone is:\n{tone}"  # as typed in a shell: backslash-n


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wordtok")
    word_tokenizer().save_pretrained(folder)
    return str(folder)


def inspect(file, capsys, **kw):
    args = dict(
        file=str(file),
        data=None,
        template=None,
        text_cols=None,
        model=None,
        max_seq_len=None,
        eval_size=None,
        json=True,
    )
    args.update(kw)
    assert inspect_command(argparse.Namespace(**args)) == 0
    out = capsys.readouterr().out
    return json.loads(out) if args["json"] else out


def test_statistics_of_a_small_file(model, capsys):
    r = inspect(SMALL, capsys, template="Text {phrase} Tone {tone}", model=model, max_seq_len=10)
    assert r["rows"] == 12 and r["duplicate_rows"] == 2
    assert r["label_counts"] == {"joy": 5, "fear": 3, "sadness": 2, "surprise": 2}
    # words + "Text" "Tone" + the tone + BOS + EOS
    assert r["token_lengths"] == {"min": 7, "median": 9.5, "p95": 11, "max": 11}
    assert r["truncated_rows"] == 2
    assert r["example"] == {
        "text": "Text I love this sunny day Tone joy",
        "prompt": "Text I love this sunny day Tone ",
        "answer": "joy",
    }


def test_split_and_overlap(model, capsys):
    r = inspect(SMALL, capsys, template="Text {phrase} Tone {tone}", model=model, eval_size=0.25)
    split = r["split"]
    assert split["train"] + split["eval"] == 12 and split["eval"] >= 2
    assert split["overlap"] == 0 and split["stratified_by"] == "tone"


def test_text_report(model, capsys):
    out = inspect(SMALL, capsys, template=SEED_TEMPLATE, model=model, eval_size=0.25, json=False)
    for expected in (
        "rows            12",
        "duplicate rows  2 (16.7%)",
        "labels (tone)",
        "joy",
        "token lengths",
        "split",
        "example (row 1)",
        "    ### The tone is:",
    ):
        assert expected in out


def test_without_template_every_column_is_shown(model, capsys):
    r = inspect(SMALL, capsys, model=model)
    assert r["example"]["text"] == "I love this sunny day\njoy"


def test_config_file(tmp_path, model, capsys):
    shutil.copy(SMALL, tmp_path / "small.jsonl")
    config = {
        "input_model": {"type": "HfModel", "model_path": model},
        "data_configs": [
            {"name": "other", "load_dataset_config": {"data_files": "missing.jsonl"}},
            {
                "name": "train",
                "load_dataset_config": {"data_name": "json", "data_files": "small.jsonl"},
                "pre_process_data_config": {"text_template": "Text {phrase} Tone {tone}", "max_seq_len": 9},
            },
        ],
        "passes": {"lora": {"type": "LoRA", "train_data_config": "train", "eval_dataset_size": 0.25}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert is_config_file(path) and not is_config_file(SMALL)
    r = inspect(path, capsys, data="train")
    assert r["rows"] == 12 and r["truncated_rows"] == 6 and r["split"]["eval_size"] == 0.25
    with pytest.raises(UserError, match="no such data config.*other, train"):
        inspect(path, capsys, data="nope")
    with pytest.raises(DataError, match=r"missing\.jsonl: file not found"):
        inspect(path, capsys)  # the first data config


def test_missing_template_column_is_a_user_error(model, capsys):
    assert main(["data", "inspect", str(SMALL), "--template", "{phrase} {mood}", "--model", model]) == 2
    err = capsys.readouterr().err
    assert "emotion_small.jsonl" in err and "{mood}" in err and "columns: phrase, tone" in err


@pytest.mark.skipif(not SEED_DATA.exists(), reason="../shared/data/dataset-classification.json not present")
def test_seed_data_set_numbers(model, capsys):
    r = inspect(SEED_DATA, capsys, template=SEED_TEMPLATE, model=model, eval_size=0.2)
    assert r["rows"] == 1464 and r["duplicate_rows"] == 321
    assert set(r["label_counts"]) == {"joy", "surprise", "fear", "sadness"}
    assert r["example"]["prompt"].endswith("\n### The tone is:\n")
    assert r["split"]["overlap"] == 0 and r["split"]["eval"] == 293
