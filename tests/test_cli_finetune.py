"""`slimtune finetune`: the template inferred from the columns, the config it writes (valid, with the command
in its header), errors for bad input, a light --help, and one end-to-end run on a tiny model."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from slimtune.cli.finetune import build_config, infer_pre_process, write_config
from slimtune.cli.main import main
from slimtune.config.load import load_config
from slimtune.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["billing", "shipping", "technical"]


def labelled_rows(text: str = "text", label: str = "label", n: int = 30) -> list[dict]:
    return [
        {text: f"ticket number {i} about the order of item {i * 7}", label: LABELS[i % 3]} for i in range(n)
    ]


@pytest.mark.parametrize(("text", "label"), [("phrase", "tone"), ("text", "label"), ("review", "sentiment")])
def test_text_and_label_columns_are_told_apart_by_distinct_values(text, label):
    rows = [{"id": i, **r} for i, r in enumerate(labelled_rows(text, label))]
    pre, note = infer_pre_process(rows, ["id", text, label], None, False, "f.jsonl")
    title = {"phrase": "Phrase", "text": "Text", "review": "Review"}[text]
    assert pre["text_template"] == f"### {title}: {{{text}}}\n### {label.capitalize()}:\n{{{label}}}"
    assert pre["loss_on_answer_only"] and pre["strategy"] == "line-by-line" and not pre["chat_template"]
    assert "3 distinct values" in note and "ignored: id" in note


def test_label_column_first_and_known_pairs():
    rows = [{"sentiment": r["label"], "review": r["text"]} for r in labelled_rows()]
    pre, _ = infer_pre_process(rows, ["sentiment", "review"], None, False, "f")
    assert pre["text_template"].endswith("{sentiment}") and "{review}" in pre["text_template"]
    qa = [{"question": f"what is {i} + {i}?", "answer": str(2 * i)} for i in range(30)]
    pre, note = infer_pre_process(qa, ["question", "answer"], None, False, "f")
    assert (
        pre["text_template"] == "### Question: {question}\n### Answer:\n{answer}"
        and "question -> answer" in note
    )


def test_a_csv_file_is_read(tmp_path):
    from slimtune.cli.finetune import _peek

    path = tmp_path / "reviews.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["review", "sentiment"])
        writer.writeheader()
        writer.writerows({"review": r["text"], "sentiment": r["label"]} for r in labelled_rows())
    rows, columns = _peek(path)
    pre, _ = infer_pre_process(rows, columns, None, False, path)
    assert pre["text_template"].endswith("### Sentiment:\n{sentiment}")


def test_chat_data_and_explicit_templates():
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    pre, note = infer_pre_process(rows, ["messages"], None, True, "f")
    assert pre["messages_col"] == "messages" and "text_template" not in pre and "chat template" in note
    pre, _ = infer_pre_process(labelled_rows(), ["text", "label"], None, True, "f")
    assert pre["chat_template"] is True and pre["text_template"].endswith("{label}")
    pre, note = infer_pre_process([], ["a", "b"], "Q: {a}\\nA: {b}", False, "f")
    assert pre["text_template"] == "Q: {a}\nA: {b}" and "--template" in note


def test_no_columns_to_infer_from_names_them_and_suggests_template():
    rows = [{"body": f"free text {i}", "notes": f"more text {i}"} for i in range(30)]
    with pytest.raises(UserError, match=r"columns body, notes; give --template"):
        infer_pre_process(rows, ["body", "notes"], None, False, "f.jsonl")


def test_bad_input_exits_2_without_traceback(tmp_path, capsys):
    assert main(["finetune", "--model", "m", "--data", str(tmp_path / "missing.jsonl")]) == 2
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps({"body": f"some text {i}"}) + "\n" for i in range(10)))
    assert main(["finetune", "--model", "m", "--data", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl: file not found" in err and "columns body" in err and "Traceback" not in err


def test_the_written_config_is_valid_and_says_its_command(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in labelled_rows()))
    pre, _ = infer_pre_process(labelled_rows(), ["text", "label"], None, False, data)
    args = argparse.Namespace(
        model="smollm2-135m-instruct", device="cpu", max_steps=5, cache_dir=str(tmp_path / "c")
    )
    out = tmp_path / "out"
    out.mkdir()
    path = out / "config.yaml"
    write_config(path, build_config(args, data, pre, out), "slimtune finetune --model smollm2-135m-instruct")
    assert path.read_text().startswith("# slimtune finetune --model smollm2-135m-instruct\n")
    loaded = load_config(path)
    lora, builder = (p.params for p in loaded.passes)
    assert (lora.r, lora.alpha, lora.eval_dataset_size, lora.quantization_aware) == (16, 32, 0.2, "int4")
    assert lora.target_modules is None  # every linear layer
    assert lora.training_args == {
        "learning_rate": 3e-4,
        "num_train_epochs": 1,
        "logging_steps": 10,
        "seed": 0,
        "max_steps": 5,
    }
    assert builder.precision == "int4" and builder.int4_block_size == lora.quantization_block_size
    assert [p.type for p in loaded.passes] == [
        "LoRA",
        "ModelBuilder",
    ]  # no merge: the adapter goes as trained
    assert loaded.config.data_configs[0].pre_process_data_config.loss_on_answer_only


def test_help_is_light_and_shows_examples():
    code = (
        "import sys\nfrom slimtune.cli.main import main\n"
        "try:\n    main(['finetune', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "--template '### Review: {review}" in result.stdout and "--chat" in result.stdout


@pytest.mark.slow
def test_finetune_a_tiny_model_end_to_end(tmp_path):
    from tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "tiny")
    data = tmp_path / "tickets.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in labelled_rows(n=40)))
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(model), "--data", str(data), "--output-dir", str(out)]
    assert main([*argv, "--max-steps", "2", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert load_config(out / "config.yaml").passes[0].params.training_args["max_steps"] == 2
    assert (out / "model" / "genai_config.json").is_file()
    record = json.loads((out / "run.json").read_text())
    lora = next(p for p in record["passes"] if p["type"] == "LoRA")
    assert lora["metrics"]["batch"]["automatic"] and lora["metrics"]["batch"]["seq_source"] == "longest row"
    stages = record["evaluation"]["stages"]
    assert [s["kind"] for s in stages] == ["hf", "adapter", "onnx"]  # input model, LoRA, int4 ONNX
    assert all("accuracy" in s["metrics"] for s in stages)
    assert record["evaluation"]["data"]["rows"] == 8  # the 20% held out of 40 rows
