"""Perplexity of a model on whole rows, laid out as training saw them: `BOS text EOS` (with
add_special_tokens), each token after the first scored given those before it. One number over all rows:
exp(total negative log-likelihood / scored tokens), so long rows weigh more than short ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from slimtune.errors import UserError

if TYPE_CHECKING:
    from slimtune.models.runtime import OpenedModel


def row_sequences(
    tokenizer: Any, template: Any, rows: Sequence[Any], add_special_tokens: bool = True
) -> list[list[int]]:
    """The ids of each row's full rendered text, as the tokenizing step of training lays them out."""
    from slimtune.data.tokenize import special_ids

    prefix, suffix = special_ids(tokenizer, template, add_special_tokens)
    texts = [template.render(row) for row in rows]
    if not texts:
        return []
    return [prefix + ids + suffix for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def perplexity_of(backend: OpenedModel, sequences: Sequence[list[int] | str]) -> dict[str, float | int]:
    """{perplexity, nll (mean per token), tokens}. Strings are encoded with BOS in front when the tokenizer
    has one."""
    tokenizer = backend.tokenizer
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = [
        bos + tokenizer(s, add_special_tokens=False)["input_ids"] if isinstance(s, str) else list(s)
        for s in sequences
    ]
    ids = [s for s in ids if len(s) > 1]
    if not ids:
        raise UserError("perplexity needs sequences of at least two tokens")
    logprobs = backend.token_logprobs([(s[:1], s[1:]) for s in ids])
    tokens = sum(len(s) - 1 for s in ids)
    nll = -sum(logprobs) / tokens
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": tokens}
