"""Greedy decoding shared by every opened model: ids in, new ids (timed, or decoded and streamed as text) out.

A model class implements `_greedy` (one token at a time, so the first token's time can be marked) and has a
Hugging Face `tokenizer`; `GreedyDecoding` gives it `generate_ids`, `timed_generate` and `generate`.
`slimtune generate` and the evaluator both go through `generate_ids` with the same prompt ids, and both stop a
one-line answer where `answer_end` says it ends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

StopFn = Callable[[list[int]], bool]  # new ids so far -> stop now


@dataclass
class Timing:
    """One greedy generation, timed: ids start when the prompt ids are handed over."""

    new_ids: list[int]
    prompt_tokens: int
    ttft_s: float  # until the first new token is known (prompt processing included)
    total_s: float


def answer_end(text: str) -> int | None:
    """Where a one-line answer ends: the first newline after some non-blank text, or None if there is none yet.

    A model trained on a template whose answer is a single line (a label) may go on after it when it does not
    emit EOS; cutting here keeps the answer only. Leading newlines (the template's own) are not an end.
    """
    start = len(text) - len(text.lstrip())
    end = text.find("\n", start)
    return None if end < 0 or start == len(text) else end


class StreamCutter:
    """Forwards streamed text pieces to `callback`, stopping after the first line when `one_line` is set, and
    before `stop_text` (a chat template's end-of-turn marker that is no special token, e.g. `<|end|>`): text
    that may be the start of that marker is held back until it is known not to be."""

    def __init__(self, callback: Callable[[str], None] | None, one_line: bool, stop_text: str | None = None):
        self.callback, self.one_line, self.stop_text = callback, one_line, stop_text or None
        self.text = ""
        self.shown = 0  # characters of `text` passed to the callback
        self.done = False

    def feed(self, piece: str) -> bool:
        """Take one piece; returns True once the answer is complete (nothing more should be generated)."""
        if self.done or not piece:
            return self.done
        self.text += piece
        end = answer_end(self.text) if self.one_line else None
        if end is not None:
            self.text, self.done = self.text[:end], True
        if self.stop_text and self.stop_text in self.text:
            self.text, self.done = self.text.split(self.stop_text)[0], True
        self._show(len(self.text) if self.done else self._safe_length())
        return self.done

    def flush(self) -> None:
        """Generation ended: show what was held back."""
        self._show(len(self.text))

    def _safe_length(self) -> int:
        if not self.stop_text:
            return len(self.text)
        for keep in range(min(len(self.stop_text) - 1, len(self.text)), 0, -1):
            if self.stop_text.startswith(self.text[-keep:]):
                return len(self.text) - keep
        return len(self.text)

    def _show(self, upto: int) -> None:
        if self.callback and upto > self.shown:
            self.callback(self.text[self.shown : upto])
        self.shown = max(self.shown, upto)


def eos_ids(*candidates: Any) -> set[int]:
    """Token ids that end generation, from any mix of None, ints and lists of ints."""
    out: set[int] = set()
    for value in candidates:
        if value is None:
            continue
        out.update(int(v) for v in (value if isinstance(value, (list, tuple, set)) else [value]))
    return out


class GreedyDecoding:
    """Generation for a model class that implements `_greedy` and has `tokenizer`."""

    tokenizer: Any

    def _greedy(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        stop: StopFn | None,
        ignore_eos: bool,
        on_first: Callable[[], None] | None = None,
    ) -> list[int]:
        raise NotImplementedError

    def generate_ids(
        self, prompt_ids: list[int], max_new_tokens: int, *, stop: StopFn | None = None
    ) -> list[int]:
        """Greedy new ids after `prompt_ids`, EOS excluded; stops at EOS, `max_new_tokens` or `stop` (asked
        after every new id, the last one included)."""
        return self._greedy(prompt_ids, max_new_tokens, stop, ignore_eos=False)

    def timed_generate(self, prompt_ids: list[int], new_tokens: int) -> Timing:
        """Exactly `new_tokens` greedy tokens (EOS ignored), with time to first token and total time."""
        marks: list[float] = []
        start = time.perf_counter()
        ids = self._greedy(
            prompt_ids, new_tokens, None, ignore_eos=True, on_first=lambda: marks.append(time.perf_counter())
        )
        end = time.perf_counter()
        return Timing(ids, len(prompt_ids), marks[0] - start, end - start)

    def generate(
        self,
        prompt: str | list[int],
        max_new_tokens: int,
        stream_callback: Callable[[str], None] | None = None,
        stop_at_newline: bool = False,
        stop_text: str | None = None,
    ) -> str:
        """Greedy completion of `prompt` (ids, or text encoded with the tokenizer's own special tokens), decoded
        and streamed to `stream_callback` as it comes; the prompt itself is not returned. Stops at EOS, after
        `max_new_tokens`, with `stop_at_newline` at the end of the first non-blank line, and before
        `stop_text` when given."""
        tokenizer = self.tokenizer
        ids = tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
        cutter = StreamCutter(stream_callback, stop_at_newline, stop_text)
        shown = 0  # characters of the decoded answer fed to the cutter so far

        def feed(new_ids: list[int]) -> bool:
            nonlocal shown
            text = tokenizer.decode(new_ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # a character split over tokens: wait for its other bytes
                return cutter.done
            piece, shown = text[shown:], max(shown, len(text))
            return cutter.feed(piece)

        new_ids = self.generate_ids(ids, max_new_tokens, stop=feed)
        text = tokenizer.decode(new_ids, skip_special_tokens=True)
        cutter.feed(text[shown:])  # what was held back waiting for a character's other bytes
        cutter.flush()
        return cutter.text


def log_softmax(logits) -> Any:
    """Log-probabilities over the last axis, in float64."""
    import numpy as np

    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def physical_cores() -> int:
    """Physical cores (the thread count ONNX Runtime and llama.cpp are given unless told otherwise)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def logprobs_by_context(
    pairs: Sequence[tuple[list[int], list[int]]],
    feed_context: Callable[[list[int], int], Any],
    feed_after: Callable[[list[int]], Any],
) -> list[float]:
    """token_logprobs for a runtime with a KV cache: each distinct context is fed once and each continuation
    after it. `feed_context(context, longest continuation)` feeds a context and returns the logits predicting
    the next token; `feed_after(ids)` feeds ids after the context (dropping what an earlier call fed after it)
    and returns one row of logits per id."""
    from slimtune.errors import UserError

    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (context, _) in enumerate(pairs):
        groups.setdefault(tuple(context), []).append(index)
    out = [0.0] * len(pairs)
    for context, members in groups.items():
        if not context:
            raise UserError("token_logprobs: the context needs at least one token")
        longest = max(len(pairs[i][1]) for i in members)
        first = log_softmax(feed_context(list(context), longest))  # predicts a continuation's 1st token
        for i in members:
            continuation = list(pairs[i][1])
            if not continuation:
                continue
            total = float(first[continuation[0]])
            if len(continuation) > 1:
                rows = log_softmax(feed_after(continuation[:-1]))
                total += float(sum(rows[k, continuation[k + 1]] for k in range(len(continuation) - 1)))
            out[i] = total
    return out
