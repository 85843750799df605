"""One held-out split: the training pass computes it once and records it (heldout.json in its output, the
indices in run.json); evaluation scores exactly those rows, none of which was trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workflows import EMOTION_DATA, emotion_data_config, run_config

from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


def test_evaluated_rows_are_the_recorded_held_out_rows_and_never_trained_on(tiny, tmp_path):
    data = emotion_data_config(60)
    config = {
        "input_model": {"type": "HfModel", "model_path": str(tiny)},
        "data_configs": [data],
        "passes": {
            "lora": {
                "type": "LoRA",
                "train_data_config": "emotion",
                "eval_dataset_size": 0.25,
                "training_args": {"max_steps": 1},
            }
        },
        "cache_dir": "cache",
        "output_dir": "out",
    }
    record = run_config(tmp_path, config)
    split = record["passes"][0]["metrics"]["eval_split"]
    recorded = json.loads((Path(record["passes"][0]["output_path"]) / "heldout.json").read_text())
    assert recorded["eval_indices"] == split["eval_indices"] and recorded["data_config"] == "emotion"
    evaluation = record["evaluation"]["data"]
    assert evaluation["indices"] == split["eval_indices"]
    assert "held-out split" in evaluation["source"] and evaluation["rows"] == len(split["eval_indices"]) == 15

    rows = [json.loads(line) for line in EMOTION_DATA.read_text().splitlines() if line.strip()][:60]
    evaluated = {json.dumps(rows[i], sort_keys=True) for i in evaluation["indices"]}
    trained = {json.dumps(rows[i], sort_keys=True) for i in range(60) if i not in set(split["eval_indices"])}
    assert len(trained) > 0 and not evaluated & trained  # identical rows always land on the same side
    assert split["train_rows"] == 60 - 15
