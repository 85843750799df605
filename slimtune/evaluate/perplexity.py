"""Perplexity with one definition everywhere: the tokens training's loss scores, laid out as training laid
them out. The rows go through the same tokenizing step as training (`data/tokenize.py`: the template or chat
template, BOS/EOS as `add_special_tokens` says, max_seq_len, the strategy), and a token is scored when its label
is not -100 and it is not a sample's first token: with the loss on the answer only (a messages column by
default), the answer or assistant tokens; otherwise every token after the first. One number over all samples:
exp(total negative log-likelihood / scored tokens), which is also how the LoRA pass computes its eval loss
(passes/lora/eval_loss.py), so a stage's perplexity and exp(eval_loss) of training agree on the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from slimtune.errors import UserError

if TYPE_CHECKING:
    from slimtune.models.runtime import OpenedModel

IGNORE = -100


def scored_samples(
    rows: Sequence[Any], pre: Any, tokenizer: Any, template: Any
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of each sample, exactly as training's tokenizing step makes them."""
    from slimtune.data.tokenize import tokenize_rows

    samples = tokenize_rows(list(rows), pre, tokenizer, template)
    return list(zip(samples["input_ids"], samples["labels"], strict=True))


def scored_spans(labels: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) runs of positions whose token is scored (label set, not the first position)."""
    spans, start = [], None
    for position, label in enumerate(labels):
        scored = position > 0 and label != IGNORE
        if scored and start is None:
            start = position
        elif not scored and start is not None:
            spans.append((start, position))
            start = None
    if start is not None:
        spans.append((start, len(labels)))
    return spans


def sample_perplexity(backend: OpenedModel, samples: Sequence[tuple[list[int], list[int]]]) -> dict[str, Any]:
    """{perplexity, nll (mean per scored token), tokens} over the scored tokens of `samples`."""
    pairs = [
        (list(ids[:start]), list(ids[start:end]))
        for ids, labels in samples
        for start, end in scored_spans(labels)
    ]
    if not pairs:
        raise UserError("perplexity: no token of these rows is scored (every answer cut off by max_seq_len?)")
    tokens = sum(len(continuation) for _, continuation in pairs)
    nll = -sum(backend.token_logprobs(pairs)) / tokens
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": tokens}


def perplexity_of(backend: OpenedModel, sequences: Sequence[list[int] | str]) -> dict[str, float | int]:
    """{perplexity, nll (mean per token), tokens} of whole sequences, every token after the first scored.
    Strings are encoded with BOS in front when the tokenizer has one."""
    tokenizer = backend.tokenizer
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = [
        bos + tokenizer(s, add_special_tokens=False)["input_ids"] if isinstance(s, str) else list(s)
        for s in sequences
    ]
    ids = [s for s in ids if len(s) > 1]
    if not ids:
        raise UserError("perplexity needs sequences of at least two tokens")
    return sample_perplexity(backend, [(s, s) for s in ids])
