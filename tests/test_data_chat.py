"""Conversations: the loss on every assistant turn, found by character offsets in the rendered text; the
prompt and reference of a conversation; the end-of-turn marker; a user's text wrapped as a user turn."""

from __future__ import annotations

import pytest
from test_data_fixtures import dataset, ids, word_tokenizer
from tiny_models import make_tokenizer

from slimtune.config.schema import PreProcessDataConfig
from slimtune.data.chat import assistant_spans, encode_conversation, token_mask, turn_end, wrap_prompt
from slimtune.data.template import Template
from slimtune.data.tokenize import tokenize_rows

X = -100
TALK = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Do you ship abroad?"},
    {"role": "assistant", "content": "Yes, to the EU."},
    {"role": "user", "content": "How long does it take?"},
    {"role": "assistant", "content": "Five days."},
]


@pytest.fixture(scope="module")
def tiny():
    return make_tokenizer()


def test_every_assistant_turn_is_a_span(tiny):
    text, spans = assistant_spans(tiny, TALK)
    assert [text[s:e] for s, e in spans] == ["Yes, to the EU.<|end|>\n", "Five days.<|end|>\n"]


def test_assistant_tokens_by_offsets_decode_to_the_turns(tiny):
    ids_, mask = encode_conversation(tiny, TALK)
    assert ids_ == tiny(tiny.apply_chat_template(TALK, tokenize=False), add_special_tokens=False)["input_ids"]
    learned = tiny.decode([i for i, m in zip(ids_, mask, strict=True) if m])
    assert learned == "Yes, to the EU.<|end|>\nFive days.<|end|>\n"


def test_slow_path_cuts_the_text_at_span_boundaries(tiny):
    class Slow:
        is_fast = False

        def __call__(self, text, add_special_tokens=False):
            return tiny(text, add_special_tokens=add_special_tokens)

    text, spans = assistant_spans(tiny, TALK)
    ids_, mask = token_mask(Slow(), text, spans)
    assert tiny.decode([i for i, m in zip(ids_, mask, strict=True) if m]) == (
        "Yes, to the EU.<|end|>\nFive days.<|end|>\n"
    )


def test_messages_train_on_every_assistant_turn_by_default():
    tok = word_tokenizer()
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Q one"},
                {"role": "assistant", "content": "yes"},
                {"role": "user", "content": "Q two"},
                {"role": "assistant", "content": "no"},
            ]
        }
    ]
    pre = PreProcessDataConfig(messages_col="messages", pad_to_max_len=False)  # loss_on_answer_only unset
    out = tokenize_rows(dataset(rows), pre, tok, Template(pre, tok, ["messages"]))
    assert out["input_ids"] == [ids("user Q one | assistant yes | user Q two | assistant no |")]
    assert out["labels"] == [[X] * 5 + ids("yes |") + [X] * 5 + ids("no |")]
    every = PreProcessDataConfig(messages_col="messages", pad_to_max_len=False, loss_on_answer_only=False)
    out = tokenize_rows(dataset(rows), every, tok, Template(every, tok, ["messages"]))
    assert out["labels"] == out["input_ids"]


def test_prompt_and_reference_of_a_conversation(tiny):
    pre = PreProcessDataConfig(messages_col="messages")
    template = Template(pre, tiny, ["messages"])
    row = {"messages": TALK + [{"role": "user", "content": "Thanks"}]}  # trailing user turn: not the prompt
    assert template.answer(row) == "Five days."
    assert template.prompt(row) == tiny.apply_chat_template(
        TALK[:-1], tokenize=False, add_generation_prompt=True
    )


def test_turn_end_and_wrapping(tiny):
    assert turn_end(tiny) == "<|end|>"
    assert wrap_prompt(tiny, "Hi") == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    assert wrap_prompt(tiny, "Hi", system="Be brief.").startswith("<|system|>\nBe brief.<|end|>\n<|user|>")
