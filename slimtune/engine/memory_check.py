"""Memory each pass will need, estimated before any pass runs, and a refusal when it cannot fit.

Estimates come from the input model's config.json and safetensors headers (no weights are loaded) and the
pass parameters. They are upper bounds for the configured shapes: training is estimated for a batch of
per_device_train_batch_size rows of max_seq_len tokens, the longest batch the run can meet. A run can skip
the check with `skip_memory_check: true` (top level, or under `engine` in the old schema) or
`slimtune run --no-memory-check`.

Training memory = libraries + frozen base weights + (adapter weights, gradients, AdamW moments: 16 bytes per
trainable parameter) + activations. Activations were measured on SmolLM2-135M (fp32, CPU, LoRA r 16 on every
linear layer, sdpa attention): peak RSS 1.37 GiB for 1 x 128 tokens and 4.87 GiB for 8 x 128 tokens, i.e.
about 3.9 MB per token, of which the fp32 logits and their loss take ~5 copies of vocab_size floats and each
of the 30 layers ~100 KB (about 16 x hidden + 10 x intermediate floats). The constants below reproduce those
two peaks within 10%.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimtune.errors import ResourceError

GiB = 2**30
LIBRARIES_BYTES = int(0.35 * GiB)  # torch + transformers + peft + datasets, imported (measured: 0.34 GiB RSS)
LAYER_FLOATS_PER_TOKEN = (16, 10)  # (x hidden_size, x intermediate_size) saved for backward, per layer
LOGIT_COPIES = 5  # logits, log-softmax, their gradients, the loss's working copy (fp32)
CHECKPOINTED_LAYER_FLOATS = 2  # x hidden_size per layer with gradient checkpointing (the layer inputs)
ADAM_BYTES_PER_TRAINABLE = 16  # fp32 weight + gradient + two AdamW moments
TRAINING_PASSES = ("LoRA", "QLoRA", "DoRA", "LoftQ")
OVERRIDE = "set skip_memory_check: true in the config, or run with --no-memory-check"


@dataclass
class Estimate:
    pass_name: str
    what: str
    total: int
    parts: dict[str, int]
    device: str  # where it must fit: "cpu" (RAM) or "cuda" (GPU memory)
    advice: str

    def describe(self) -> str:
        parts = ", ".join(f"{name} {_gib(n)}" for name, n in self.parts.items() if n)
        return f"{self.what} needs about {_gib(self.total)} ({parts})"


def _gib(n: float) -> str:
    if n >= 0.1 * GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else "<1 MiB"


def parameter_count(folder: Path) -> int:
    from slimtune.passes.model_builder_run import fp32_weight_bytes

    return fp32_weight_bytes(folder) // 4


def _model_shape(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    hidden = config.get("hidden_size") or config.get("n_embd") or config.get("d_model")
    if not hidden:
        return {}
    return {
        "hidden": hidden,
        "intermediate": config.get("intermediate_size") or config.get("n_inner") or 4 * hidden,
        "layers": config.get("num_hidden_layers") or config.get("n_layer") or 1,
        "heads": config.get("num_attention_heads") or config.get("n_head") or 1,
        "kv_heads": config.get("num_key_value_heads") or config.get("num_attention_heads") or 1,
        "vocab": config.get("vocab_size") or 32000,
    }


def _dtype_bytes(name: str | None, device: str) -> float:
    if name in (None, "auto"):
        return 2 if device == "cuda" else 4
    return {"float32": 4, "bfloat16": 2, "float16": 2}.get(name, 4)


def training_estimate(
    name: str, pass_type: str, params: Any, model: Path, seq_len: int | None, device: str
) -> Estimate | None:
    shape = _model_shape(model)
    count = parameter_count(model)
    if not shape or not count:
        return None
    args = dict(getattr(params, "training_args", None) or {})
    batch = int(args.get("per_device_train_batch_size", 8))
    seq = int(seq_len or 1024)
    quantized = bool(getattr(params, "quantized", False))
    weight_bytes = 0.6 if quantized else _dtype_bytes(getattr(params, "torch_dtype", "auto"), device)
    act_bytes = 4 if weight_bytes == 4 else 2  # activations in the compute dtype (bf16 for a 4-bit base)
    h, i, layers, heads = shape["hidden"], shape["intermediate"], shape["layers"], shape["heads"]
    kv = h * shape["kv_heads"] // heads
    rank = int(getattr(params, "r", 16))
    # every linear layer of a decoder block adapted (the default, all-linear): r x (in + out) each
    trainable = rank * layers * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
    tokens = batch * seq
    if args.get("gradient_checkpointing"):
        per_layer = CHECKPOINTED_LAYER_FLOATS * h * layers + LAYER_FLOATS_PER_TOKEN[0] * h
        per_layer += LAYER_FLOATS_PER_TOKEN[1] * i
    else:
        per_layer = layers * (LAYER_FLOATS_PER_TOKEN[0] * h + LAYER_FLOATS_PER_TOKEN[1] * i)
    parts = {
        "base weights": int(count * weight_bytes),
        "adapter + gradients + AdamW": trainable * ADAM_BYTES_PER_TRAINABLE,
        f"activations for {batch} x {seq} tokens": int(tokens * per_layer * act_bytes),
        "logits and loss": tokens * shape["vocab"] * 4 * LOGIT_COPIES,
        "libraries": LIBRARIES_BYTES if device == "cpu" else 0,
    }
    advice = (
        f"Lower training_args.per_device_train_batch_size (now {batch}; raise gradient_accumulation_steps to "
        f"keep the effective batch) or max_seq_len (now {seq})"
        + (
            ""
            if args.get("gradient_checkpointing")
            else ", or set training_args.gradient_checkpointing: true"
        )
    )
    return Estimate(name, f"{pass_type} training", sum(parts.values()), parts, device, advice)


def merge_estimate(name: str, params: Any, model: Path) -> Estimate | None:
    count = parameter_count(model)
    if not count:
        return None
    dtype = getattr(params, "save_dtype", "auto")
    weights = int(count * (4 if dtype in ("auto", "float32") else 2))
    parts = {"model": weights, "saving": weights, "libraries": LIBRARIES_BYTES}
    advice = "Set the merge's save_dtype to bfloat16 or float16, or free memory"
    return Estimate(name, "MergeAdapterWeights", sum(parts.values()), parts, "cpu", advice)


def builder_estimate(name: str, model: Path) -> Estimate | None:
    from slimtune.passes.model_builder_run import MEMORY_FACTOR, MEMORY_OVERHEAD, fp32_weight_bytes

    weights = fp32_weight_bytes(model)
    if not weights:
        return None
    parts = {f"{MEMORY_FACTOR:g} x fp32 weights": int(MEMORY_FACTOR * weights), "libraries": MEMORY_OVERHEAD}
    advice = "Free memory or build on a larger machine"
    return Estimate(name, "ModelBuilder", sum(parts.values()), parts, "cpu", advice)


def estimates(loaded: Any, model: Path, device: str) -> list[Estimate]:
    """One estimate per pass that holds a model in memory. Passes after the first see a model of the same
    architecture and size as the input (an adapter merged into it, or its ONNX export)."""
    found = []
    seq_lens = {d.name: d.pre_process_data_config.max_seq_len for d in loaded.config.data_configs}
    for plan in loaded.passes:
        params = plan.params
        if plan.type in TRAINING_PASSES:
            seq = seq_lens.get(getattr(params, "train_data_config", None))
            found.append(training_estimate(plan.name, plan.type, params, model, seq, device))
        elif plan.type == "MergeAdapterWeights":
            found.append(merge_estimate(plan.name, params, model))
        elif plan.type == "ModelBuilder":
            found.append(builder_estimate(plan.name, model))
    return [e for e in found if e is not None]


def available_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(loaded: Any, model_path: str | Path, device: str, cached: set[str] = frozenset()) -> None:
    """Refuse the run, before any pass, when a pass's estimate exceeds the memory available now. Passes
    named in `cached` (their output is in the cache) need no memory and are not checked."""
    if getattr(loaded.config, "skip_memory_check", False):
        return
    model = Path(model_path)
    if not model.is_dir():
        return
    for estimate in estimates(loaded, model, device):
        if estimate.pass_name in cached:
            continue
        available = available_bytes(estimate.device)
        if estimate.total > available:
            where = "GPU memory" if estimate.device == "cuda" else "memory"
            raise ResourceError(
                f"passes.{estimate.pass_name}: {estimate.describe()}, but only {_gib(available)} of {where} "
                f"is available. {estimate.advice}. To run anyway, {OVERRIDE}."
            )
