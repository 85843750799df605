"""Every strategy's exact token layout on a word-level tokenizer (ids: see test_data_fixtures.ID)."""

from __future__ import annotations

import random

import pytest
from test_data_fixtures import ID, dataset, ids, word_tokenizer

from slimtune.config.schema import PreProcessDataConfig
from slimtune.data.template import Template
from slimtune.data.tokenize import encode_prompt, tokenize_rows, tokenize_with_stats
from slimtune.errors import DataError, UserError

BOS, EOS, PAD, X = ID["<bos>"], ID["<eos>"], ID["<pad>"], -100
ROWS = [{"q": "one two", "a": "yes"}, {"q": "three", "a": "no"}, {"q": "four five six", "a": "yes"}]
R1 = [BOS, *ids("Q one two A yes"), EOS]  # 7 tokens
R2 = [BOS, *ids("Q three A no"), EOS]  # 6
R3 = [BOS, *ids("Q four five six A yes"), EOS]  # 8


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer()


def run(tok, rows=ROWS, **kw):
    pre = PreProcessDataConfig(text_template="Q {q} A {a}", **kw)
    template = Template(pre, tok, list(rows[0]))
    return tokenize_with_stats(dataset(rows), pre, tok, template)


def test_line_by_line_unpadded(tok):
    out, stats = run(tok, strategy="line-by-line", max_seq_len=16, pad_to_max_len=False)
    assert out["input_ids"] == [R1, R2, R3]
    assert out["labels"] == [R1, R2, R3]
    assert out["attention_mask"] == [[1] * 7, [1] * 6, [1] * 8]
    assert stats.lengths == [7, 6, 8] and stats.truncated == 0 and stats.samples == 3


def test_line_by_line_padded_and_truncated(tok):
    out, stats = run(tok, strategy="line-by-line", max_seq_len=7, pad_to_max_len=True)
    assert out["input_ids"] == [R1, R2 + [PAD], R3[:7]]
    assert out["labels"] == [R1, R2 + [X], R3[:7]]
    assert out["attention_mask"] == [[1] * 7, [1] * 6 + [0], [1] * 7]
    assert stats.truncated == 1


def test_no_special_tokens_no_attention_mask(tok):
    out, _ = run(
        tok, max_seq_len=16, pad_to_max_len=False, add_special_tokens=False, use_attention_mask=False
    )
    assert out.column_names == ["input_ids", "labels"]
    assert out["input_ids"][0] == ids("Q one two A yes")


def test_loss_on_answer_only_masks_the_prompt(tok):
    out, _ = run(tok, max_seq_len=9, pad_to_max_len=True, loss_on_answer_only=True)
    assert out["input_ids"][0] == R1 + [PAD, PAD]
    assert out["labels"][0] == [X, X, X, X, X, ID["yes"], EOS, X, X]
    assert out["labels"][1] == [X, X, X, X, ID["no"], EOS, X, X, X]


def test_loss_on_answer_only_drops_rows_whose_answer_is_cut_off(tok):
    out, stats = run(tok, max_seq_len=6, pad_to_max_len=False, loss_on_answer_only=True)
    assert out["labels"] == [[X, X, X, X, X, ID["yes"]], [X, X, X, X, ID["no"], EOS]]  # row 3 lost its answer
    assert stats.dropped == 1 and stats.truncated == 2


def test_prompt_ids_match_the_training_layout(tok):
    template = Template(PreProcessDataConfig(text_template="Q {q} A {a}"), tok)
    assert encode_prompt(tok, template, ROWS[0]) == R1[:5]


def test_join_blocks_drop_the_short_tail(tok):
    out, _ = run(tok, strategy="join", max_seq_len=5)
    stream = R1 + R2 + R3  # each row already ends with EOS: no extra separator
    assert out["input_ids"] == [stream[0:5], stream[5:10], stream[10:15], stream[15:20]]
    assert out["labels"] == out["input_ids"]
    assert out["attention_mask"] == [[1] * 5] * 4


def test_join_without_special_tokens_separates_rows_with_eos(tok):
    out, _ = run(tok, strategy="join", max_seq_len=5, add_special_tokens=False)
    stream = (
        ids("Q one two A yes") + [EOS] + ids("Q three A no") + [EOS] + ids("Q four five six A yes") + [EOS]
    )
    assert out["input_ids"] == [stream[0:5], stream[5:10], stream[10:15]]
    assert len(stream) == 18  # the last 3 tokens are a short tail, dropped


def test_join_with_joiner(tok):
    out, _ = run(tok, rows=ROWS[:2], strategy="join", max_seq_len=4, add_special_tokens=False, joiner="|")
    stream = ids("Q one two A yes | Q three A no |")
    assert out["input_ids"] == [stream[0:4], stream[4:8]]


def test_short_stream_is_one_sample(tok):
    out, _ = run(tok, rows=ROWS[:1], strategy="join", max_seq_len=10, pad_to_max_len=True)
    assert out["input_ids"] == [R1 + [PAD] * 3]
    assert out["labels"] == [R1 + [X] * 3]


def test_join_random_shuffles_rows_with_the_seed(tok):
    out, _ = run(tok, strategy="join-random", max_seq_len=21, random_seed=3)
    order = list(range(3))
    random.Random(3).shuffle(order)
    assert order != [0, 1, 2]
    pieces = [R1, R2, R3]
    assert out["input_ids"] == [[t for i in order for t in pieces[i]]]
    again, _ = run(tok, strategy="join-random", max_seq_len=21, random_seed=3)
    assert again["input_ids"] == out["input_ids"]


def test_sliding_window_masks_tokens_already_learned(tok):
    out, _ = run(tok, strategy="join-sliding-window", max_seq_len=8, stride=5, add_special_tokens=False)
    stream = (
        ids("Q one two A yes") + [EOS] + ids("Q three A no") + [EOS] + ids("Q four five six A yes") + [EOS]
    )
    assert len(stream) == 18
    assert out["input_ids"] == [stream[0:8], stream[5:13], stream[10:18]]
    assert out["labels"] == [stream[0:8], [X, X, X] + stream[8:13], [X, X, X] + stream[13:18]]


def unchecked(**kw) -> PreProcessDataConfig:
    """Options the config model refuses (so a config never gets this far), built without its validation:
    the tokenizer still refuses them for callers that build options in code."""
    return PreProcessDataConfig.model_construct(**{**PreProcessDataConfig().model_dump(), **kw})


def test_join_strategies_refuse_loss_on_answer_only(tok):
    with pytest.raises(ValueError, match="only with strategy line-by-line"):
        PreProcessDataConfig(text_template="Q {q} A {a}", strategy="join", loss_on_answer_only=True)
    pre = unchecked(text_template="Q {q} A {a}", strategy="join", loss_on_answer_only=True)
    with pytest.raises(UserError, match="only with strategy line-by-line"):
        tokenize_rows(dataset(ROWS), pre, tok, Template(pre, tok))


def test_loss_on_answer_only_needs_an_answer_field(tok):
    pre = PreProcessDataConfig(text_template="{q} and {a} .", loss_on_answer_only=True)
    with pytest.raises(UserError, match="ends with the answer field"):
        tokenize_rows(dataset(ROWS), pre, tok, Template(pre, tok))


def test_sliding_window_needs_a_stride(tok):
    with pytest.raises(ValueError, match="needs stride"):
        PreProcessDataConfig(text_template="Q {q} A {a}", strategy="join-sliding-window")
    pre = unchecked(text_template="Q {q} A {a}", strategy="join-sliding-window")
    with pytest.raises(UserError, match="needs stride"):
        tokenize_rows(dataset(ROWS), pre, tok, Template(pre, tok))


def test_null_value_names_the_row(tok):
    rows = [{"q": "one", "a": "yes"}, {"q": "two", "a": None}]
    with pytest.raises(DataError, match=r"row 2: .*no value \(null\) for \{a\}"):
        run(tok, rows=rows)


def test_chat_messages_loss_on_answer_only(tok):
    rows = [{"messages": [{"role": "user", "content": "Q one"}, {"role": "assistant", "content": "yes"}]}]
    pre = PreProcessDataConfig(messages_col="messages", loss_on_answer_only=True, pad_to_max_len=False)
    template = Template(pre, tok, ["messages"])
    out = tokenize_rows(dataset(rows), pre, tok, template)
    # "user Q one | assistant yes | ": the chat template carries its own markers, so no BOS/EOS are added
    assert out["input_ids"] == [ids("user Q one | assistant yes |")]
    assert out["labels"] == [[X] * 5 + ids("yes |")]


def test_chat_template_around_a_text_template(tok):
    pre = PreProcessDataConfig(text_template="Q {q} A {a}", chat_template=True, pad_to_max_len=False)
    template = Template(pre, tok, ["q", "a"])
    assert template.render(ROWS[1]) == "user Q three A | assistant no | "
    assert template.prompt(ROWS[1]) == "user Q three A | assistant "
    assert template.answer(ROWS[1]) == "no"
