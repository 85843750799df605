"""Shared helpers for the data tests: a word-level tokenizer whose ids are easy to write down."""

from __future__ import annotations

WORDS = [
    "<pad>",
    "<bos>",
    "<eos>",
    "<unk>",
    "Q",
    "A",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "yes",
    "no",
    "|",
    "user",
    "assistant",
]
ID = {w: i for i, w in enumerate(WORDS)}  # <pad> 0, <bos> 1, <eos> 2, <unk> 3, Q 4, A 5, one 6 ... | 14

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} | {% endfor %}"
    "{% if add_generation_prompt %}assistant {% endif %}"
)


def word_tokenizer():
    """One id per whitespace-separated word (unknown words -> <unk>); BOS/EOS/PAD are <bos>/<eos>/<pad>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(ID), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def ids(text: str) -> list[int]:
    return [ID.get(w, ID["<unk>"]) for w in text.split()]


def dataset(rows: list[dict]):
    import datasets

    return datasets.Dataset.from_list(rows)
