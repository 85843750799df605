"""Serving latency of a backend: time to first token, prompt and decode throughput, end-to-end percentiles.

Each run greedily decodes exactly `new_tokens` tokens (EOS does not end it), so every stage of a run does the
same work on the same prompts and the numbers compare. Runs cycle through the given prompts; the first
`warmup` runs are not counted (allocator growth, lazy kernel choices). Time to first token includes the whole
prompt pass; decode throughput counts the tokens after the first over the time after the first. The timed
runs hold the measurement lock and record the machine's other load (slimtune.evaluate.conditions).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from slimtune.errors import UserError

if TYPE_CHECKING:
    from slimtune.models.runtime import OpenedModel

PERCENTILES = (50, 90, 99)


def summarize(values_ms: Sequence[float]) -> dict[str, float]:
    """{avg, p50, p90, p99, min, max} of a list of milliseconds (percentiles interpolate linearly)."""
    import numpy as np

    values = np.asarray(values_ms, dtype=float)
    out = {"avg": float(values.mean())}
    out.update({f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES})
    out.update({"min": float(values.min()), "max": float(values.max())})
    return out


def measure_latency(
    backend: OpenedModel,
    prompts: Sequence[list[int]],
    *,
    runs: int = 20,
    warmup: int = 3,
    new_tokens: int = 8,
    progress: Any = None,
) -> dict[str, Any]:
    """{ttft_ms, prompt_tokens_per_s, decode_tokens_per_s, e2e_ms: {avg, p50, p90, p99, ...}, ttft: {...},
    runs, warmup, new_tokens, prompt_tokens_avg, threads}."""
    if runs < 1:
        raise UserError(f"latency needs at least one run, got {runs}")
    if not prompts:
        raise UserError("latency needs at least one prompt")
    if new_tokens < 2:
        raise UserError(f"latency decodes at least 2 tokens (to time decoding), got {new_tokens}")
    from slimtune.evaluate.conditions import measuring_alone

    timings = []
    with measuring_alone() as conditions:  # no other slimtune process measures meanwhile; others' load noted
        for i in range(warmup):
            backend.timed_generate(prompts[i % len(prompts)], new_tokens)
            if progress is not None:
                progress.update(1)
        for i in range(runs):
            timings.append(backend.timed_generate(prompts[i % len(prompts)], new_tokens))
            if progress is not None:
                progress.update(1)
    ttft = [t.ttft_s * 1000 for t in timings]
    e2e = [t.total_s * 1000 for t in timings]
    prompt_tokens = sum(t.prompt_tokens for t in timings)
    decode_tokens = sum(len(t.new_ids) - 1 for t in timings)
    decode_s = sum(t.total_s - t.ttft_s for t in timings)
    ttft_stats = summarize(ttft)
    out = {
        "ttft_ms": ttft_stats["avg"],
        "ttft": ttft_stats,
        "prompt_tokens_per_s": prompt_tokens / (sum(ttft) / 1000),
        "decode_tokens_per_s": decode_tokens / decode_s if decode_s > 0 else float("inf"),
        "e2e_ms": summarize(e2e),
        "runs": runs,
        "warmup": warmup,
        "new_tokens": new_tokens,
        "prompt_tokens_avg": prompt_tokens / runs,
        "threads": backend.threads(),
        "conditions": conditions,
    }
    if conditions["contended"]:
        print(
            f"warning: latency measured while other processes used {conditions['other_cpu_share']:.0%} of the "
            "CPUs; the figure is marked, and measured again rather than reused next time",
            file=sys.stderr,
            flush=True,
        )
    setup = getattr(backend, "generator_setup_ms", None)
    if setup is not None:  # ONNX GenAI: creating a generator, paid once per request by a naive server
        out["generator_setup_ms"] = setup
    return out
