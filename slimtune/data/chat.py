"""Conversations through the model's chat template: where each assistant turn lies in the rendered text, and
which tokens are assistant tokens.

A turn's span is found by rendering prefixes of the conversation: the text up to turn i with the generation
prompt (`<|im_start|>assistant\\n`) ends where the turn's content starts, and the text up to and including
turn i ends after the template's end-of-turn marker (`<|im_end|>\\n`): the span holds the content and the
marker, so the model learns to end its turn. A template that rewrites earlier turns once later ones follow
(so a prefix is not a prefix of the whole) falls back to finding the turn's content in the text. Tokens are
then picked by their character offsets (a fast tokenizer's offset mapping) or, without one, by tokenizing the
text piece by piece at the span boundaries. Nothing relies on a template's `{% generation %}` support.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slimtune.errors import DataError

Span = tuple[int, int]  # [start, end) character offsets into the rendered text


def render(tokenizer: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def last_assistant(messages: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the last assistant turn, or None."""
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "assistant"), None)


def assistant_spans(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[Span]]:
    """(the whole conversation rendered, the character span of every assistant turn in it)."""
    full = render(tokenizer, messages)
    spans: list[Span] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        span = _span_by_prefixes(tokenizer, messages, i, full, cursor) or _span_by_content(
            tokenizer, message, full, cursor
        )
        if span is None:
            raise DataError(
                f"assistant turn {i + 1} ({_short(message.get('content'))}) is not in the text the chat "
                "template renders; the template drops or rewrites it, so its tokens cannot be found"
            )
        spans.append(span)
        cursor = span[1]
    return full, spans


def _span_by_prefixes(tokenizer, messages, i, full, cursor) -> Span | None:
    try:
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[: i + 1])
    except Exception:  # a template may refuse a partial conversation (e.g. one that must start with a user)
        return None
    if i == 0 or not full.startswith(before) or not full.startswith(upto):
        return None
    start, end = len(before), len(upto)
    return (start, end) if cursor <= start < end else None


def _span_by_content(tokenizer, message, full, cursor) -> Span | None:
    content = str(message.get("content") or "")
    start = full.find(content, cursor) if content else -1
    if start < 0:
        return None
    end = start + len(content)
    marker = turn_end(tokenizer)
    if marker and full.startswith(marker, end):
        end += len(marker)
    return start, end


def turn_end(tokenizer: Any) -> str | None:
    """What the chat template writes right after an assistant turn's content (`<|im_end|>`, `<|end|>`), without
    trailing whitespace; None when it writes nothing recognisable. Generation of a chat answer stops there."""
    probe = "\u2063probe\u2063"
    try:
        text = render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}])
    except Exception:
        return None
    at = text.rfind(probe)
    tail = text[at + len(probe) :].strip() if at >= 0 else ""
    return tail.split()[0] if tail else None


def token_mask(tokenizer: Any, text: str, spans: Sequence[Span]) -> tuple[list[int], list[bool]]:
    """(ids of `text` without added special tokens, for each id whether it belongs to an assistant span)."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, mask = encoded["input_ids"], []
        for start, end in encoded["offset_mapping"]:
            if end <= start:  # a token with no width of its own: where it starts decides
                mask.append(any(s <= start < e for s, e in spans))
            else:
                mask.append(any(start < e and end > s for s, e in spans))
        return ids, mask
    ids, mask, position = [], [], 0  # a slow tokenizer: encode the pieces between span boundaries apart
    for s, e in spans:
        for piece, inside in ((text[position:s], False), (text[s:e], True)):
            if piece:
                piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += piece_ids
                mask += [inside] * len(piece_ids)
        position = e
    if position < len(text):
        tail = tokenizer(text[position:], add_special_tokens=False)["input_ids"]
        ids, mask = ids + tail, mask + [False] * len(tail)
    return ids, mask


def encode_conversation(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]]
) -> tuple[list[int], list[bool]]:
    """A conversation's ids as training sees them, and which of them are assistant tokens."""
    text, spans = assistant_spans(tokenizer, messages)
    return token_mask(tokenizer, text, spans)


def wrap_prompt(tokenizer: Any, text: str, system: str | None = None) -> str:
    """A user's text as one user turn (after an optional system turn), with the generation prompt."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    return render(tokenizer, messages, add_generation_prompt=True)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
