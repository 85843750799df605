"""The physical ceiling of CPU decoding and where its time goes (the pure parts of benchmarks/cpu_decode.py).

Ceiling of decode tokens/s = memory read bandwidth / bytes read per decoded token, where

    bytes read per token = weight bytes read per token + KV-cache bytes per position x mean context length

- weight bytes read per token: every weight a matrix product reads (packed int4 / int8 values, their scales and
  zero points), counted in full; a table that is only looked up by token or position (an embedding not shared
  with the output head, the rotary cos / sin caches) counts one row. A model that ties its embedding to the
  output head reads that table in full, as the head.
- KV-cache bytes per position: 2 (keys and values) x layers x KV heads x head size x element bytes (fp32 in
  ONNX Runtime GenAI's CPU models, f16 in llama.cpp's default cache); decoding token t reads the cache of every
  position before it, so a run of N new tokens after a P-token prompt reads P + N / 2 positions on average.

Bandwidth: the best of several passes of a torch float32 sum over a 1 GiB tensor (far larger than any cache),
with the same number of threads as the decode it bounds. Caches hold part of a small model's weights between
tokens (32 MiB of L3 here against 80+ MiB of int4 weights), so a runtime can come near the ceiling but it is not
exact; anything well above it would mean the measurement is wrong.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

# onnx.TensorProto data types -> bytes per element (4-bit types: half a byte)
ONNX_ELEMENT_BYTES = {
    1: 4,
    2: 1,
    3: 1,
    4: 2,
    5: 2,
    6: 4,
    7: 8,
    9: 1,
    10: 2,
    11: 8,
    12: 4,
    13: 8,
    16: 2,
    21: 0.5,
    22: 0.5,
}
# (op type, input index) pairs that read one row of a table per token, not the table
ROW_LOOKUPS = {
    ("Gather", 0),
    ("GatherBlockQuantized", 0),
    ("GatherBlockQuantized", 2),
    ("GatherBlockQuantized", 3),
    ("GroupQueryAttention", 7),  # cos_cache: the current position's row
    ("GroupQueryAttention", 8),  # sin_cache
}
PASS_THROUGH = {"Reshape", "Cast", "Transpose", "Squeeze", "Unsqueeze"}
LLAMA_CPP_KV_BYTES = 2  # llama.cpp's default KV cache type is f16


def read_bandwidth(threads: int, size_bytes: int = 2**30, repeats: int = 7) -> float:
    """Bytes per second read from memory by a torch float32 sum over `size_bytes` with `threads` threads,
    best of `repeats` (the first pass also pages the tensor in)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = torch.ones(size_bytes // 4, dtype=torch.float32)
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            data.sum()
            best = max(best, data.numel() * 4 / (time.perf_counter() - start))
        return best
    finally:
        torch.set_num_threads(before)


def kv_bytes_per_position(config: dict, element_bytes: float) -> int:
    """KV-cache bytes of one position: keys and values of every layer, from a Hugging Face config.json."""
    heads = config["num_attention_heads"]
    head_size = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads") or heads
    return int(2 * config["num_hidden_layers"] * kv_heads * head_size * element_bytes)


def mean_context(prompt_tokens: int, new_tokens: int) -> float:
    """Positions whose KV cache a decode step reads, averaged over the new tokens after the first."""
    return prompt_tokens + new_tokens / 2


def ceiling(bandwidth: float, per_token: float) -> float:
    """Decode tokens/s the memory bandwidth allows when every token reads `per_token` bytes."""
    return bandwidth / per_token


def onnx_weights(model_file: Path) -> dict:
    """{bytes: weight bytes read per token, kv_element_bytes, quant: "int4 b32 level 4 x 211, ..."}, from the
    graph alone (external data is not loaded)."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    consumers: dict[str, list] = defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers[name].append((node, index))

    def looked_up_by_row(name: str) -> bool:
        uses = consumers.get(name, [])
        return bool(uses) and all(
            (node.op_type, index) in ROW_LOOKUPS
            or (node.op_type in PASS_THROUGH and index == 0 and looked_up_by_row(node.output[0]))
            for node, index in uses
        )

    total = 0.0
    for tensor in graph.initializer:
        if tensor.name not in consumers:
            continue
        count = 1
        for dim in tensor.dims:
            count *= dim
        size = count * ONNX_ELEMENT_BYTES.get(tensor.data_type, 4)
        total += size / tensor.dims[0] if looked_up_by_row(tensor.name) and tensor.dims else size
    quant = Counter()
    for node in graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            quant[
                f"int{attrs.get('bits', 4)} b{attrs.get('block_size')} level {attrs.get('accuracy_level', 0)}"
            ] += 1
    kv_type = next(
        (i.type.tensor_type.elem_type for i in graph.input if i.name.startswith("past_key_values")), 1
    )
    return {
        "bytes": int(total),
        "kv_element_bytes": ONNX_ELEMENT_BYTES.get(kv_type, 4),
        "quant": ", ".join(f"{name} x {n}" for name, n in quant.most_common()),
    }


def gguf_weights(gguf_file: Path) -> dict:
    """{bytes: weight bytes read per token, kv_element_bytes, quant: "Q4_K x 120, ..."} of a .gguf file."""
    from gguf import GGUFReader

    tensors = GGUFReader(str(gguf_file)).tensors
    tied = not any(t.name == "output.weight" for t in tensors)
    total = 0.0
    kinds = Counter()
    for tensor in tensors:
        kinds[tensor.tensor_type.name] += 1
        if tensor.name == "token_embd.weight" and not tied:
            rows = 1
            for dim in list(tensor.shape)[1:]:
                rows *= int(dim)
            total += int(tensor.n_bytes) / rows
        else:
            total += int(tensor.n_bytes)
    return {
        "bytes": int(total),
        "kv_element_bytes": LLAMA_CPP_KV_BYTES,
        "quant": ", ".join(f"{name} x {n}" for name, n in kinds.most_common() if name not in ("F32",)),
    }


def profile_summary(profile: Path, decode_wall_s: float, decode_tokens: int, top: int = 8) -> dict:
    """Where decode time goes, from an ONNX Runtime profile (a Chrome trace) that ends with a generation of
    `decode_tokens` + 1 tokens: its last `decode_tokens` model_run events decode one token each.

    Returns {per_token_ms: wall per decoded token, run_ms: ONNX Runtime's Run per token, outside_share: the part
    of the wall time outside Run (onnxruntime-genai's search, logits and KV handling, Python), ops: [(name,
    share of Run time, ms per token)], kernels_share: the kernels' sum over Run time}."""
    events = json.loads(profile.read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    if len(runs) <= decode_tokens:
        raise ValueError(
            f"{profile} has {len(runs)} model_run events, not a prompt and {decode_tokens} decodes"
        )
    runs = runs[-decode_tokens:]
    spans = [(e["ts"], e["ts"] + e["dur"]) for e in runs]
    run_us = sum(e["dur"] for e in runs)
    by_op: Counter = Counter()
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if not any(start <= event["ts"] <= end for start, end in spans):
            continue
        op = event.get("args", {}).get("op_name", "?")
        if op == "MatMulNBits" and "lm_head" in event["name"]:
            op = "MatMulNBits (output head)"
        elif op == "MatMulNBits":
            op = "MatMulNBits (layers)"
        by_op[op] += event["dur"]
    kernels = sum(by_op.values())
    per_token_ms = decode_wall_s * 1000 / decode_tokens
    run_ms = run_us / 1000 / len(runs)
    return {
        "per_token_ms": per_token_ms,
        "run_ms": run_ms,
        "median_run_ms": statistics.median(e["dur"] for e in runs) / 1000,
        "outside_share": max(0.0, 1 - run_ms / per_token_ms),
        "kernels_share": kernels / run_us,
        "ops": [(op, us / run_us, us / 1000 / len(runs)) for op, us in by_op.most_common(top)],
    }


def limit_fraction(decode_tps: float | None, limit_tps: float) -> str:
    return "-" if decode_tps is None else f"{decode_tps / limit_tps:.0%}"


def table(rows: dict[str, dict], limits: dict[int, float], thread_counts: list[int]) -> list[str]:
    """Markdown table lines. `rows`: name -> {accuracy, size, per_token, peak_memory, quant, and per thread count
    t: {prompt_tps, decode_tps, ttft_ms}}; a row with `limit_of` names the model whose bandwidth ceiling it shows.
    `limits`: thread count -> read bandwidth (bytes/s)."""
    head = ["variant", "held-out accuracy", "size MiB", "read/token MiB", "peak mem MiB"]
    for t in thread_counts:
        head += [f"prompt tok/s {t}T", f"decode tok/s {t}T", f"TTFT ms {t}T", f"of ceiling {t}T"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for name, row in rows.items():
        if "limit_of" in row:
            cells = [name, "-", "-", f"{row['per_token'] / 2**20:.1f}", "-"]
            for t in thread_counts:
                cells += ["-", f"**{ceiling(limits[t], row['per_token']):.0f}**", "-", "100%"]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        accuracy = row.get("accuracy")
        cells = [
            name,
            "-" if accuracy is None else f"{accuracy:.1%}",
            f"{row['size'] / 2**20:.0f}",
            "-" if row.get("per_token") is None else f"{row['per_token'] / 2**20:.1f}",
            "-" if row.get("peak_memory") is None else f"{row['peak_memory'] / 2**20:.0f}",
        ]
        for t in thread_counts:
            speed = row.get(t)
            if speed is None:
                cells += ["-"] * 4
                continue
            limit = ceiling(limits[t], row["per_token"])
            cells += [
                f"{speed['prompt_tps']:.0f}",
                f"{speed['decode_tps']:.1f}",
                f"{speed['ttft_ms']:.1f}",
                limit_fraction(speed["decode_tps"], limit),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def fastest_within(rows: dict[str, dict], reference: float, points: float, threads: int) -> str | None:
    """The timed row with the highest decode tokens/s at `threads` whose accuracy is at most `points` below
    `reference` (accuracy as a fraction, points in percentage points)."""
    eligible = [
        (row[threads]["decode_tps"], name)
        for name, row in rows.items()
        if threads in row and row.get("accuracy") is not None and row["accuracy"] >= reference - points / 100
    ]
    return max(eligible)[1] if eligible else None
