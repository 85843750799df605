"""Memory of LoRA / QLoRA / DoRA training, estimated from config.json and safetensors headers.

Estimates are upper bounds for the shapes training will use (fit.py): a micro-batch of
per_device_train_batch_size rows (chosen to fit when the config leaves it out) of the longest row's tokens
(max_seq_len for joined blocks), the longest micro-batch the run can meet.

Training memory = libraries + frozen base weights + (adapter weights, gradients, AdamW moments: 16 bytes per
trainable parameter) + activations. Activations were measured on SmolLM2-135M (fp32, CPU, LoRA r 16 on every
linear layer, sdpa attention): peak RSS 1.37 GiB for 1 x 128 tokens and 4.87 GiB for 8 x 128 tokens, i.e.
about 3.9 MB per token, of which the fp32 logits and their loss take ~5 copies of vocab_size floats and each
of the 30 layers ~100 KB (about 16 x hidden + 10 x intermediate floats). The constants below reproduce those
two peaks within 10%.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from slimtune.models.shape import model_shape, parameter_count
from slimtune.passes.memory import LIBRARIES_BYTES, Estimate, MemoryQuery

if TYPE_CHECKING:
    from slimtune.passes.lora.fit import BatchChoice

LAYER_FLOATS_PER_TOKEN = (16, 10)  # (x hidden_size, x intermediate_size) saved for backward, per layer
LOGIT_COPIES = 5  # logits, log-softmax, their gradients, the loss's working copy (fp32)
CHECKPOINTED_LAYER_FLOATS = 2  # x hidden_size per layer with gradient checkpointing (the layer inputs)
ADAM_BYTES_PER_TRAINABLE = 16  # fp32 weight + gradient + two AdamW moments
DEFAULT_SEQ_LEN = 1024


def _dtype_bytes(name: str | None, device: str) -> float:
    if name in (None, "auto"):
        from slimtune.passes.lora.speed import cpu_has_bf16

        return 2 if device == "cuda" or (device == "cpu" and cpu_has_bf16()) else 4
    return {"float32": 4, "bfloat16": 2, "float16": 2}.get(name, 4)


def _sequence(query: MemoryQuery, longest: int | None) -> tuple[int, str]:
    from slimtune.passes.lora.fit import longest_row, sequence_length

    data = query.data.get("train_data_config")
    if data is None:
        return DEFAULT_SEQ_LEN, "max_seq_len"
    if longest is None:
        longest = longest_row(data, str(query.model))
    return sequence_length(data.pre_process_data_config, longest)


def _parts(query: MemoryQuery, batch: int, seq: int, shape: dict, count: int) -> dict[str, int]:
    params, device = query.params, query.device
    args = params.training_args or {}
    weight_bytes = 0.6 if params.quantized else _dtype_bytes(params.torch_dtype, device)
    act_bytes = 4 if weight_bytes == 4 else 2  # activations in the compute dtype (bf16 for a 4-bit base)
    h, i, layers, heads = shape["hidden"], shape["intermediate"], shape["layers"], shape["heads"]
    kv = h * shape["kv_heads"] // heads
    # every linear layer of a decoder block adapted (the default, all-linear): r x (in + out) each
    trainable = params.r * layers * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
    tokens = batch * seq
    if args.get("activation_checkpointing") or args.get("gradient_checkpointing"):
        per_layer = CHECKPOINTED_LAYER_FLOATS * h * layers + LAYER_FLOATS_PER_TOKEN[0] * h
        per_layer += LAYER_FLOATS_PER_TOKEN[1] * i
    else:
        per_layer = layers * (LAYER_FLOATS_PER_TOKEN[0] * h + LAYER_FLOATS_PER_TOKEN[1] * i)
    return {
        "base weights": int(count * weight_bytes),
        "adapter + gradients + AdamW": trainable * ADAM_BYTES_PER_TRAINABLE,
        f"activations for {batch} x {seq} tokens": int(tokens * per_layer * act_bytes),
        "logits and loss": tokens * shape["vocab"] * 4 * LOGIT_COPIES,
        "libraries": LIBRARIES_BYTES if device == "cpu" else 0,
    }


def batch_choice(query: MemoryQuery, available: int | None = None, longest: int | None = None) -> BatchChoice:
    """The micro-batch and sequence length training will use (fit.py): `available` bytes (default: what
    this machine has free now), `longest` row in tokens (default: measured from the data config)."""
    from slimtune.passes.lora.fit import available_bytes, plan_batch

    seq, source = _sequence(query, longest)
    shape, count = model_shape(query.model), parameter_count(query.model)
    need = None
    if shape and count:

        def need(batch: int) -> int:
            return sum(_parts(query, batch, seq, shape, count).values())

    args = query.params.training_args or {}
    if available is None and need is not None and "per_device_train_batch_size" not in args:
        available = available_bytes(query.device)
    return plan_batch(args, seq, source, need, available)


def training_estimate(
    query: MemoryQuery, available: int | None = None, longest: int | None = None
) -> Estimate | None:
    shape, count = model_shape(query.model), parameter_count(query.model)
    if not shape or not count:
        return None
    choice = batch_choice(query, available, longest)
    args = query.params.training_args or {}
    parts = _parts(query, choice.micro_batch, choice.seq_len, shape, count)
    checkpointing = (
        ""
        if args.get("activation_checkpointing") or args.get("gradient_checkpointing")
        else ", or set training_args.activation_checkpointing: true"
    )
    if choice.automatic:
        advice = (
            f"slimtune already lowered the micro-batch to {choice.micro_batch} (gradient accumulation keeps the "
            f"effective batch {choice.effective}); lower max_seq_len (now {choice.seq_len} tokens per row, "
            f"{choice.seq_source}){checkpointing}"
        )
    else:
        advice = (
            f"Lower training_args.per_device_train_batch_size (now {choice.micro_batch}; raise "
            f"gradient_accumulation_steps to keep the effective batch, or leave both out and slimtune picks a "
            f"micro-batch that fits) or max_seq_len (now {choice.seq_len}, {choice.seq_source}){checkpointing}"
        )
    what = f"{query.type} training (micro-batch {choice.micro_batch})"
    return Estimate(query.name, what, sum(parts.values()), parts, query.device, advice)


def out_of_memory_advice(query: MemoryQuery) -> str:
    batch = (query.params.training_args or {}).get("per_device_train_batch_size")
    batch = (
        batch if batch is not None else "chosen by slimtune to fit the estimate: see the `batch:` log line"
    )
    data = query.data.get("train_data_config")
    seq = f" (now {data.pre_process_data_config.max_seq_len})" if data is not None else ""
    name = f" of data config `{data.name}`" if data is not None else ""
    return (
        f"Lower training_args.per_device_train_batch_size (now {batch}; raise gradient_accumulation_steps to "
        f"keep the effective batch), lower max_seq_len{name}{seq}, or set training_args.activation_checkpointing: "
        "true. Complete checkpoints are kept: a re-run with the same settings resumes from them."
    )
