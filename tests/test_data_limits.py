"""Rows longer than the limits: a few are named in a warning, most rows or a row beyond the model's context
are refused (slimtune.passes.lora.data.check_answers_fit, run by the LoRA pass before the weights load)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_data_fixtures import dataset, word_tokenizer

from slimtune.config.schema import PreProcessDataConfig
from slimtune.data.template import Template
from slimtune.errors import DataError
from slimtune.passes.lora.data import check_answers_fit

SHORT = {"q": "one two", "a": "yes"}  # BOS Q one two A yes EOS: 7 tokens
LONG = {"q": "one " * 20, "a": "no"}  # 25 tokens


def check(rows, context=None, **options):
    pre = PreProcessDataConfig(text_template="Q {q} A {a}", max_seq_len=10, **options)
    data = SimpleNamespace(name="train", load_dataset_config=SimpleNamespace(data_files="rows.jsonl"))
    said: list[str] = []
    tok = word_tokenizer()
    check_answers_fit(dataset(rows), pre, tok, Template(pre, tok), data, context, log=said.append)
    return said


def test_all_rows_fit_says_nothing():
    assert check([SHORT] * 4) == []


def test_a_few_long_rows_are_named_in_a_warning():
    (line,) = check([SHORT, LONG, SHORT, SHORT])
    assert "warning" in line and "1 of 4 rows" in line and "row 2, 25 tokens" in line and "{a}" in line


def test_most_rows_long_is_refused():
    with pytest.raises(DataError, match=r"3 of 4 rows are longer than max_seq_len 10 .*Refused"):
        check([LONG, LONG, SHORT, LONG])


def test_a_row_beyond_the_model_context_is_refused_even_alone():
    with pytest.raises(
        DataError, match=r"row 3 has 25 tokens, more than the model's whole context \(20 tokens"
    ):
        check([SHORT, SHORT, LONG, SHORT, SHORT], context=20)


def test_joined_blocks_and_free_text_are_not_checked():
    assert check([LONG] * 3, strategy="join") == []  # rows are spread over blocks, not cut
    pre = PreProcessDataConfig(text_template="{q}", max_seq_len=10)  # no answer field: nothing to lose
    tok = word_tokenizer()
    data = SimpleNamespace(name="t", load_dataset_config=SimpleNamespace(data_files="x"))
    check_answers_fit(dataset([LONG] * 3), pre, tok, Template(pre, tok), data, 5)
