"""Memory of LoRA / QLoRA / DoRA training, estimated from config.json and safetensors headers.

Estimates are upper bounds for the configured shapes: a batch of per_device_train_batch_size rows of
max_seq_len tokens, the longest batch the run can meet.

Training memory = libraries + frozen base weights + (adapter weights, gradients, AdamW moments: 16 bytes per
trainable parameter) + activations. Activations were measured on SmolLM2-135M (fp32, CPU, LoRA r 16 on every
linear layer, sdpa attention): peak RSS 1.37 GiB for 1 x 128 tokens and 4.87 GiB for 8 x 128 tokens, i.e.
about 3.9 MB per token, of which the fp32 logits and their loss take ~5 copies of vocab_size floats and each
of the 30 layers ~100 KB (about 16 x hidden + 10 x intermediate floats). The constants below reproduce those
two peaks within 10%.
"""

from __future__ import annotations

from slimtune.models.shape import model_shape, parameter_count
from slimtune.passes.memory import LIBRARIES_BYTES, Estimate, MemoryQuery

LAYER_FLOATS_PER_TOKEN = (16, 10)  # (x hidden_size, x intermediate_size) saved for backward, per layer
LOGIT_COPIES = 5  # logits, log-softmax, their gradients, the loss's working copy (fp32)
CHECKPOINTED_LAYER_FLOATS = 2  # x hidden_size per layer with gradient checkpointing (the layer inputs)
ADAM_BYTES_PER_TRAINABLE = 16  # fp32 weight + gradient + two AdamW moments
DEFAULT_BATCH = 8
DEFAULT_SEQ_LEN = 1024


def _dtype_bytes(name: str | None, device: str) -> float:
    if name in (None, "auto"):
        return 2 if device == "cuda" else 4
    return {"float32": 4, "bfloat16": 2, "float16": 2}.get(name, 4)


def _batch_and_seq(query: MemoryQuery) -> tuple[int, int]:
    args = query.params.training_args or {}
    data = query.data.get("train_data_config")
    seq = data.pre_process_data_config.max_seq_len if data is not None else None
    return int(args.get("per_device_train_batch_size", DEFAULT_BATCH)), int(seq or DEFAULT_SEQ_LEN)


def training_estimate(query: MemoryQuery) -> Estimate | None:
    shape = model_shape(query.model)
    count = parameter_count(query.model)
    if not shape or not count:
        return None
    params, device = query.params, query.device
    args = params.training_args or {}
    batch, seq = _batch_and_seq(query)
    weight_bytes = 0.6 if params.quantized else _dtype_bytes(params.torch_dtype, device)
    act_bytes = 4 if weight_bytes == 4 else 2  # activations in the compute dtype (bf16 for a 4-bit base)
    h, i, layers, heads = shape["hidden"], shape["intermediate"], shape["layers"], shape["heads"]
    kv = h * shape["kv_heads"] // heads
    # every linear layer of a decoder block adapted (the default, all-linear): r x (in + out) each
    trainable = params.r * layers * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 3)
    tokens = batch * seq
    checkpointing = args.get("activation_checkpointing") or args.get("gradient_checkpointing")
    if checkpointing:
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
        + ("" if checkpointing else ", or set training_args.activation_checkpointing: true")
    )
    return Estimate(query.name, f"{query.type} training", sum(parts.values()), parts, device, advice)


def out_of_memory_advice(query: MemoryQuery) -> str:
    batch = (query.params.training_args or {}).get("per_device_train_batch_size", DEFAULT_BATCH)
    data = query.data.get("train_data_config")
    seq = f" (now {data.pre_process_data_config.max_seq_len})" if data is not None else ""
    name = f" of data config `{data.name}`" if data is not None else ""
    return (
        f"Lower training_args.per_device_train_batch_size (now {batch}; raise gradient_accumulation_steps to "
        f"keep the effective batch), lower max_seq_len{name}{seq}, or set training_args.activation_checkpointing: "
        "true. Complete checkpoints are kept: a re-run with the same settings resumes from them."
    )
