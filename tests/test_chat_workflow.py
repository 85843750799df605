"""Chat data end to end on a tiny Llama: conversations train with the loss on the assistant turns, `validate`
shows the evaluation chosen for them, every stage is evaluated with exact match / token F1 / perplexity
through the chat template, the adapter's perplexity equals exp(final eval loss) of training on the same rows,
and `generate` wraps a prompt as a user turn. The data is written here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from slimtune.cli.main import main
from slimtune.data.chat import wrap_prompt
from slimtune.models.hf import HfModel, load_tokenizer

ANSWERS = {
    "ship": "Shipping is free over 30 euros.",
    "return": "Returns are free within 30 days.",
    "pay": "We take cards and PayPal.",
}
QUESTIONS = {
    "ship": ["Is shipping free?", "Do you offer free shipping?", "What does delivery cost?"],
    "return": ["Can I return a book?", "What is the return policy?", "Can I get a refund?"],
    "pay": ["How can I pay?", "Do you take PayPal?", "Which cards do you accept?"],
}


def conversations() -> list[dict]:
    rows = []
    for round_ in range(3):
        for topic, questions in QUESTIONS.items():
            for i, question in enumerate(questions):
                messages = [{"role": "system", "content": "Be brief."}] if (i + round_) % 2 else []
                messages += [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": ANSWERS[topic]},
                ]
                if round_ == 2:  # a second exchange: its assistant turn learns too
                    messages += [
                        {"role": "user", "content": f"Thanks! {i}"},
                        {"role": "assistant", "content": "You are welcome."},
                    ]
                rows.append({"messages": messages})
    return rows  # 27 conversations


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    from tiny_models import make_tiny_model

    root = tmp_path_factory.mktemp("chat")
    model = make_tiny_model("llama", root / "tiny")
    data = root / "talk.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in conversations()))
    config = {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "data_configs": [
            {
                "name": "talk",
                "load_dataset_config": {"data_name": "json", "data_files": str(data)},
                "pre_process_data_config": {
                    "messages_col": "messages",
                    "max_seq_len": 128,
                    "pad_to_max_len": False,
                },
            }
        ],
        "passes": {
            "lora": {
                "type": "LoRA",
                "r": 4,
                "alpha": 8,
                "lora_dropout": 0.1,  # off in evaluation: the identity below holds with it
                "train_data_config": "talk",
                "eval_dataset_size": 7,
                "training_args": {
                    "max_steps": 4,
                    "per_device_train_batch_size": 4,
                    "per_device_eval_batch_size": 3,  # batches of unequal token counts
                    "learning_rate": 0.003,
                    "logging_steps": 1,
                    "eval_steps": 2,
                    "save_steps": 2,
                },
            },
            "merge": {"type": "MergeAdapterWeights"},
        },
        "evaluate_input_model": True,
        "cache_dir": "cache",
        "output_dir": "out",
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_validate_shows_the_chat_metrics(chat_run, capsys):
    assert main(["validate", str(chat_run)]) == 0
    assert (
        "evaluation: exact match, token F1, perplexity, latency, size on 7 held-out conversations"
        in capsys.readouterr().out
    )


def test_chat_run_evaluates_every_stage_and_perplexity_matches_training(chat_run):
    assert main(["run", "--config", str(chat_run)]) == 0
    record = json.loads((chat_run.parent / "out" / "run.json").read_text())
    evaluation = record["evaluation"]
    assert evaluation["metrics"] == ["text_match", "perplexity", "latency", "size"]
    stages = {s["stage"]: s["metrics"] for s in evaluation["stages"]}
    assert set(stages) == {"input", "lora", "merge"}
    for metrics in stages.values():
        assert metrics["n"] == 7 and 0 <= metrics["exact_match"] <= 1 and 0 <= metrics["token_f1"] <= 1
        assert metrics["text_match"]["n"] == 7
    lora = next(p for p in record["passes"] if p["name"] == "lora")["metrics"]
    trained = math.exp(lora["eval_loss"])
    assert lora["eval_curve"][-1]["eval_loss"] == pytest.approx(lora["eval_loss"])
    # the same scored tokens (assistant turns), the same rows, the same weights: one number
    assert stages["lora"]["perplexity"] == pytest.approx(trained, rel=0.02)
    assert stages["merge"]["perplexity"] == pytest.approx(trained, rel=0.02)
    assert stages["input"]["perplexity"] > stages["lora"]["perplexity"]  # training lowered it, comparably
    meta = json.loads((chat_run.parent / "out" / "model" / "slimtune.json").read_text())
    assert meta["messages_col"] == "messages" and meta["loss_on_answer_only"] is True


def test_generate_wraps_the_prompt_for_a_chat_model(chat_run, capsys, monkeypatch):
    model = chat_run.parent / "out" / "model"
    if not model.is_dir():
        pytest.skip("needs the chat run")
    tokenizer = load_tokenizer(model)
    seen = []
    real = HfModel.generate

    def spy(self, prompt, max_new_tokens, **kw):
        seen.append((prompt, kw.get("stop_text")))
        return real(self, prompt, max_new_tokens, **kw)

    monkeypatch.setattr(HfModel, "generate", spy)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert (
        main(["generate", "--model", str(model), "--prompt", "Is shipping free?", "--max-new-tokens", "4"])
        == 0
    )
    assert seen[-1] == (ids(wrap_prompt(tokenizer, "Is shipping free?")), "<|end|>")
    assert (
        main(
            [
                "generate",
                "--model",
                str(model),
                "--prompt",
                "Hi",
                "--system",
                "Be brief.",
                "--max-new-tokens",
                "2",
            ]
        )
        == 0
    )
    assert seen[-1][0] == ids("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n")
    assert (
        main(
            [
                "generate",
                "--model",
                str(model),
                "--prompt",
                "line one\\nline two",
                "--raw",
                "--max-new-tokens",
                "2",
            ]
        )
        == 0
    )
    assert seen[-1] == ("line one\nline two", None)  # as given, with a real newline
    row = json.dumps({"messages": [{"role": "user", "content": "Do you take PayPal?"}]})
    assert main(["generate", "--model", str(model), "--input", row, "--max-new-tokens", "2"]) == 0
    assert seen[-1][0] == ids(wrap_prompt(tokenizer, "Do you take PayPal?"))
    capsys.readouterr()


def test_evaluate_cli_uses_the_chat_template_unasked(chat_run, capsys):
    model = chat_run.parent / "out" / "model"
    if not model.is_dir():
        pytest.skip("needs the chat run")
    data = Path(chat_run.parent / "talk.jsonl")
    assert main(["evaluate", "--model", str(model), "--data", str(data), "--max-rows", "3", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("\n{") + 1 :] if not out.startswith("{") else out)  # after lock notes
    assert result["metrics"] == ["text_match", "perplexity", "latency", "size"]
    assert result["text_match"]["n"] == 3 and result["perplexity"] > 1


def test_accuracy_asked_for_on_conversations_is_refused_before_training(chat_run, tmp_path, capsys):
    config = yaml.safe_load(chat_run.read_text())
    config["evaluators"] = {
        "quality": {"metrics": [{"name": "acc", "type": "accuracy", "data_config": "talk"}]}
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "accuracy needs answers that are labels" in err and "exact_match and token_f1" in err
    config["evaluators"]["quality"]["metrics"][0]["sub_types"] = [
        {"name": "exact_match"},
        {"name": "token_f1"},
    ]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 0
    assert "evaluation: exact match, token F1 on 7 held-out conversations" in capsys.readouterr().out
