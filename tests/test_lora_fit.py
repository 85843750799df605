"""The micro-batch the LoRA pass trains with (passes/lora/fit.py): the largest that fits the memory estimate
where the config leaves it to slimtune, the effective batch kept by gradient accumulation, an explicit setting
honoured; the sequence length from the data's longest row unless rows are joined into blocks."""

from __future__ import annotations

import json

import pytest
from test_memory_check import SMOLLM2, fake_model

from slimtune.config.schema import DataConfig
from slimtune.passes.lora import LoRAParams
from slimtune.passes.lora.fit import HEADROOM, plan_batch, sequence_length
from slimtune.passes.lora.memory import batch_choice, training_estimate
from slimtune.passes.memory import GiB, MemoryQuery


@pytest.fixture(autouse=True)
def fp32_cpu(monkeypatch):
    """The measured peaks and batch sizes here are of fp32 training on the CPU: the estimate is asked as for a
    CPU without bf16 units, whatever this machine has (with them, `auto` trains the base in bf16)."""
    monkeypatch.setattr("slimtune.passes.lora.speed.cpu_has_bf16", lambda: False)


def query(tmp_path, training_args=None, **pre) -> MemoryQuery:
    model = fake_model(tmp_path / "smollm2", SMOLLM2)
    params = LoRAParams(r=16, train_data_config="d", training_args=training_args or {})
    data = DataConfig(name="d", pre_process_data_config=pre)
    return MemoryQuery("lora", "LoRA", params, model, "cpu", {"train_data_config": data})


def test_a_minimal_config_fits_a_24_gib_machine_with_a_smaller_micro_batch(tmp_path):
    # the case: 8 x 1024 tokens needs ~31 GiB; 23 GiB are available
    q = query(tmp_path, strategy="join")
    assert training_estimate(q, available=10**15).total > 30 * GiB  # 8 rows: what the old default asked
    estimate = training_estimate(q, available=23 * GiB)
    choice = batch_choice(q, available=23 * GiB)
    assert choice.automatic and choice.seq_len == 1024 and choice.seq_source == "max_seq_len"
    assert (choice.micro_batch, choice.accumulation) == (4, 2)  # effective batch 8 kept
    assert estimate.total == choice.needed <= HEADROOM * 23 * GiB
    assert "micro-batch 4" in estimate.what


def test_nothing_fits_gives_micro_batch_one_and_the_check_refuses_with_advice(tmp_path):
    q = query(tmp_path, strategy="join")
    choice = batch_choice(q, available=2 * GiB)
    assert (choice.micro_batch, choice.accumulation) == (1, 8)
    estimate = training_estimate(q, available=2 * GiB)
    assert estimate.total > 2 * GiB  # the engine refuses it
    assert "already lowered the micro-batch to 1" in estimate.advice and "max_seq_len" in estimate.advice


def test_an_explicit_batch_is_honoured_even_when_it_does_not_fit(tmp_path):
    q = query(tmp_path, {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2}, strategy="join")
    choice = batch_choice(q, available=4 * GiB)
    assert not choice.automatic and (choice.micro_batch, choice.accumulation) == (8, 2)
    assert choice.training_args({"per_device_train_batch_size": 8}) == {"per_device_train_batch_size": 8}
    estimate = training_estimate(q, available=4 * GiB)
    assert estimate.total > 4 * GiB and "per_device_train_batch_size (now 8" in estimate.advice


def test_given_accumulation_scales_the_effective_batch(tmp_path):
    q = query(tmp_path, {"gradient_accumulation_steps": 4}, strategy="join")
    choice = batch_choice(q, available=23 * GiB)
    assert choice.effective == 32 and choice.micro_batch == 4
    args = choice.training_args({"gradient_accumulation_steps": 4, "learning_rate": 1e-4})
    assert args == {
        "gradient_accumulation_steps": 8,
        "learning_rate": 1e-4,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
    }


def test_line_by_line_rows_use_the_longest_row_not_max_seq_len(tmp_path):
    q = query(tmp_path)  # line-by-line, max_seq_len 1024 (defaults)
    choice = batch_choice(q, available=23 * GiB, longest=40)
    assert (choice.seq_len, choice.seq_source) == (40, "longest row") and choice.micro_batch == 8
    assert "8 x 40 tokens" in " ".join(training_estimate(q, available=23 * GiB, longest=40).parts)
    pre = DataConfig(name="d", pre_process_data_config={"max_seq_len": 64}).pre_process_data_config
    assert sequence_length(pre, 500) == (64, "max_seq_len")  # longer rows are cut to max_seq_len
    joined = DataConfig(name="d", pre_process_data_config={"strategy": "join"}).pre_process_data_config
    assert sequence_length(joined, 40) == (1024, "max_seq_len")


def test_the_longest_row_is_measured_from_the_data_with_the_models_tokenizer(tmp_path):
    from tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "tiny")
    rows = [
        {"text": "short", "label": "a"},
        {"text": "a much longer phrase than the first one", "label": "b"},
    ]
    data_file = tmp_path / "rows.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(
        name="d",
        load_dataset_config={"data_files": str(data_file)},
        pre_process_data_config={"text_template": "{text}\n{label}"},
    )
    params = LoRAParams(train_data_config="d")
    choice = batch_choice(
        MemoryQuery("lora", "LoRA", params, model, "cpu", {"train_data_config": data}), 23 * GiB
    )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    expected = (
        len(tokenizer(rows[1]["text"] + "\n" + "b", add_special_tokens=False)["input_ids"]) + 2
    )  # BOS, EOS
    assert (choice.seq_len, choice.seq_source) == (expected, "longest row")


@pytest.mark.parametrize(("available", "expected"), [(None, 8), (10**15, 8), (1, 1)])
def test_plan_batch_without_an_estimate_keeps_the_default(available, expected):
    need = None if available is None else (lambda b: b * 10)
    assert plan_batch({}, 128, "max_seq_len", need, available).micro_batch == expected
