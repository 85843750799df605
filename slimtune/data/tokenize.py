"""Rows -> training samples (input_ids, labels, attention_mask), by Olive's text-generation strategies.

Token layout of one row, as Olive writes it: `BOS text EOS` when `add_special_tokens` (the tokenizer's own
BOS/EOS, whether or not its post-processor would add them), the bare text otherwise; a chat-rendered row
carries its own special tokens, so nothing is added. Labels are the input ids (the model shifts them); -100
marks what must not be learned: padding, the prompt with `loss_on_answer_only`, and in sliding windows the
tokens an earlier window already learned.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slimtune.config.schema import PreProcessDataConfig
from slimtune.data.template import Template
from slimtune.errors import DataError, UserError

if TYPE_CHECKING:
    import datasets

IGNORE = -100


@dataclass
class TokenStats:
    lengths: list[int] = field(
        default_factory=list
    )  # tokens per row, special tokens included, before cutting
    truncated: int = 0  # rows longer than max_seq_len (line-by-line: cut; join: spread over blocks)
    dropped: int = 0  # rows whose answer was cut off entirely (loss_on_answer_only): left out
    samples: int = 0


@dataclass
class _Encoded:
    ids: list[int]
    prompt_len: int = 0  # leading tokens that are prompt (only counted with loss_on_answer_only)
    learn: list[bool] | None = None  # a conversation with the loss on its assistant turns: which ids learn


def answer_only(pre: PreProcessDataConfig, template: Template) -> bool:
    """Whether the loss is on the answer only: `loss_on_answer_only` when given; unset, on for conversations
    (a messages column, one row per sample: every assistant turn learns, the other turns do not) and off
    otherwise."""
    if pre.loss_on_answer_only is not None:
        return pre.loss_on_answer_only
    return bool(template.messages_col) and pre.strategy == "line-by-line"


def tokenize_rows(
    rows: Any, pre: PreProcessDataConfig, tokenizer: Any, template: Template
) -> datasets.Dataset:
    """Samples with columns input_ids, labels and (when use_attention_mask) attention_mask."""
    return tokenize_with_stats(rows, pre, tokenizer, template)[0]


def tokenize_with_stats(
    rows: Any, pre: PreProcessDataConfig, tokenizer: Any, template: Template
) -> tuple[datasets.Dataset, TokenStats]:
    import datasets

    check_options(pre, template)
    encoded = encode_rows(rows, pre, tokenizer, template)
    stats = TokenStats(lengths=[len(e.ids) for e in encoded])
    stats.truncated = sum(n > pre.max_seq_len for n in stats.lengths)
    if pre.strategy == "line-by-line":
        samples = _line_by_line(encoded, pre, stats)
    else:
        order = list(range(len(encoded)))
        if pre.strategy == "join-random":
            random.Random(pre.random_seed).shuffle(order)
        stream = _join([encoded[i].ids for i in order], pre, tokenizer)
        samples = _windows(stream, pre)
    if pre.max_samples:
        samples = samples[: pre.max_samples]
    if not samples:
        raise DataError(
            "no training samples are left after tokenizing (every answer was cut off by "
            f"max_seq_len {pre.max_seq_len}?)"
        )
    stats.samples = len(samples)
    columns: dict[str, list[list[int]]] = {
        "input_ids": [s[0] for s in samples],
        "labels": [s[1] for s in samples],
    }
    if pre.use_attention_mask:
        columns["attention_mask"] = [s[2] for s in samples]
    if pre.pad_to_max_len:
        _pad(columns, pre.max_seq_len, pad_id(tokenizer))
    return datasets.Dataset.from_dict(columns), stats


def check_options(pre: PreProcessDataConfig, template: Template) -> None:
    if answer_only(pre, template):
        if pre.strategy != "line-by-line":
            raise UserError(
                f"loss_on_answer_only works only with strategy line-by-line, not {pre.strategy!r}: "
                "joined blocks cut rows at arbitrary points, so prompts and answers no longer line up "
                "with samples; set strategy: line-by-line"
            )
        if not template.answer_column and not template.messages_col:
            raise UserError(
                "loss_on_answer_only needs a text_template that ends with the answer field (e.g. "
                f"'... {{tone}}'), or chat messages that end with the assistant's turn; got {template.describe()}"
            )
    if pre.strategy == "join-sliding-window":
        if not pre.stride:
            raise UserError(
                "strategy join-sliding-window needs stride (tokens between window starts, e.g. "
                f"{pre.max_seq_len // 2})"
            )
        if pre.stride > pre.max_seq_len:
            raise UserError(
                f"stride {pre.stride} is larger than max_seq_len {pre.max_seq_len}: windows would skip tokens"
            )


def special_ids(tokenizer: Any, template: Template, add_special_tokens: bool) -> tuple[list[int], list[int]]:
    """(prefix, suffix) added around each row: BOS and EOS, or nothing (chat rows carry their own)."""
    if not add_special_tokens or template.chat:
        return [], []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return ([bos] if bos is not None else []), ([eos] if eos is not None else [])


def encode_prompt(tokenizer: Any, template: Template, row: Any, add_special_tokens: bool = True) -> list[int]:
    """The ids a model continues at inference: laid out exactly as the prompt part of a training sample."""
    prefix, _ = special_ids(tokenizer, template, add_special_tokens)
    return prefix + tokenizer(template.prompt(row), add_special_tokens=False)["input_ids"]


def encode_rows(rows: Any, pre: PreProcessDataConfig, tokenizer: Any, template: Template) -> list[_Encoded]:
    prefix, suffix = special_ids(tokenizer, template, pre.add_special_tokens)
    rows = list(rows) if not isinstance(rows, list) else rows
    if answer_only(pre, template) and template.chat:
        conversations = _texts(rows, template.conversation)
        return [
            _Encoded(*_chat_ids(tokenizer, messages, number))
            for number, messages in enumerate(conversations, 1)
        ]
    if answer_only(pre, template):
        prompts = _texts(rows, template.prompt)
        completions = _texts(rows, template.completion)
        p_ids, c_ids = _plain(tokenizer, prompts), _plain(tokenizer, completions)
        return [
            _Encoded(prefix + p + c + suffix, len(prefix) + len(p)) for p, c in zip(p_ids, c_ids, strict=True)
        ]
    return [_Encoded(prefix + ids + suffix) for ids in _plain(tokenizer, _texts(rows, template.render))]


def _chat_ids(
    tokenizer: Any, messages: list[dict[str, Any]], number: int
) -> tuple[list[int], int, list[bool]]:
    from slimtune.data.chat import encode_conversation

    try:
        ids, learn = encode_conversation(tokenizer, messages)
    except DataError as err:
        raise DataError(f"row {number}: {err}") from None
    return ids, 0, learn


def row_token_lengths(rows: Any, pre: PreProcessDataConfig, tokenizer: Any, template: Template) -> list[int]:
    """Tokens per row as training lays it out (special tokens included, before truncation)."""
    return [len(e.ids) for e in encode_rows(rows, pre, tokenizer, template)]


def pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def _texts(rows: Sequence[Any], fn) -> list[str]:
    out = []
    for number, row in enumerate(rows, 1):
        try:
            out.append(fn(row))
        except DataError as err:
            if err.line is not None or err.file is not None:
                raise
            raise DataError(f"row {number}: {err}") from None
    return out


def _plain(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _line_by_line(encoded: list[_Encoded], pre: PreProcessDataConfig, stats: TokenStats):
    samples = []
    for e in encoded:
        ids = e.ids[: pre.max_seq_len]
        if e.learn is not None:
            labels = [i if learn else IGNORE for i, learn in zip(ids, e.learn, strict=False)]
        else:
            labels = [IGNORE] * min(e.prompt_len, len(ids)) + ids[e.prompt_len :]
        if (e.learn is not None or e.prompt_len) and all(label == IGNORE for label in labels):
            stats.dropped += 1
            continue
        samples.append((ids, labels, [1] * len(ids)))
    return samples


def _join(pieces: list[list[int]], pre: PreProcessDataConfig, tokenizer: Any) -> list[int]:
    """Rows' ids one after another, each followed by the joiner (default: EOS unless the row ends with it)."""
    eos = tokenizer.eos_token_id
    joiner = tokenizer(pre.joiner, add_special_tokens=False)["input_ids"] if pre.joiner else None
    stream: list[int] = []
    for ids in pieces:
        stream += ids
        if pre.joiner is not None:
            stream += joiner or []
        elif eos is not None and (not ids or ids[-1] != eos):
            stream.append(eos)
    return stream


def _windows(stream: list[int], pre: PreProcessDataConfig):
    """Blocks of max_seq_len; a short tail is dropped unless it is all there is. Sliding windows start every
    `stride` tokens, and their labels skip the tokens an earlier window has already learned."""
    size = pre.max_seq_len
    if len(stream) <= size:
        return [(stream, list(stream), [1] * len(stream))] if stream else []
    step = pre.stride if pre.strategy == "join-sliding-window" else size
    samples, seen = [], 0  # seen: stream position up to which labels were already given
    for begin in range(0, len(stream) - size + 1, step):
        ids = stream[begin : begin + size]
        overlap = max(0, seen - begin)
        samples.append((ids, [IGNORE] * overlap + ids[overlap:], [1] * size))
        seen = begin + size
    return samples


def _pad(columns: dict[str, list[list[int]]], size: int, pad: int) -> None:
    fill = {"input_ids": pad, "labels": IGNORE, "attention_mask": 0}
    for name, values in columns.items():
        for row in values:
            row.extend([fill[name]] * (size - len(row)))
