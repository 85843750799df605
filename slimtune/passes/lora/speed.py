"""What makes the LoRA pass fast on a GPU: padding-free packed micro-batches, compiled decoder layers.

Packing: the examples of one micro-batch are laid end to end into as few rows of at most `row_len` tokens
as they fit in (best fit, longest first), with `position_ids` starting again at 0 for each example and no
attention mask. transformers (masking_utils) reads the restarts as a packed batch and masks attention
block-diagonally, so examples never attend to each other; the first label of each example is -100 so no
example is trained to predict the next one's first token. The micro-batch keeps the same examples, so the
optimisation (examples per step, loss averaged over labelled tokens) is the one the padded batch had:
only the padding work is gone.

Scored positions only: the output head (hidden x vocabulary, a fifth of a 135M model's work) and the loss
run only at the positions whose next token is scored. Answer-only rows score a few tokens of each row, so
most of the head's work, forward and backward, is skipped; the loss is the same sum over the same tokens.

The CPU's bf16 units: where the CPU has them (AVX-512 BF16, AMX), the frozen base is loaded in bf16 and
training runs under bf16 autocast with the adapters and optimizer state in fp32, about twice the fp32
product rate; elsewhere the CPU trains in fp32. The adapters' dropout on the CPU draws its masks with numpy
(cpu_adapters.py), and
under autocast the adapters' inputs stay in bf16: torch's CPU dropout draws one element at a time, a sixth of a small model's step.
Causal attention without a mask runs as blocks of batched products (cpu_attention.py), about 1.5x the speed
of sdpa's CPU flash kernel forward and backward.

Attention of packed rows on a GPU: the block-diagonal mask is an explicit mask, for which PyTorch's sdpa
picks cuDNN's attention on Hopper. Measured on an H200 (benchmarks/small_gpu_train.py --profile, the 135M
example, micro-batch 128): each cuDNN attention backward call cost ~10 ms of host time (forward ~2 ms) against
~0.17 ms on the GPU, half the step's host time, for a step whose GPU work is ~47 ms. While a packed run
trains, cuDNN's sdpa backend is switched off (`without_cudnn_attention`), which leaves sdpa's memory-efficient
kernel (arbitrary masks, little host work); the setting is restored when training ends.

Compilation: each decoder layer is compiled on its own (regional compilation): all layers share one
graph, so compiling costs about one layer's worth, and inductor fuses the norm, rotary, activation,
dropout and residual work around the matrix products.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

IGNORE = -100


def real_length(input_ids: Sequence[int], labels: Sequence[int], attention_mask, pad_id: int) -> int:
    """Tokens of a sample before its padding (pad_to_max_len pads to max_seq_len)."""
    if attention_mask is not None:
        n = len(attention_mask)
        while n and not attention_mask[n - 1]:
            n -= 1
        return n
    n = len(input_ids)
    while n and input_ids[n - 1] == pad_id and labels[n - 1] == IGNORE:
        n -= 1
    return n


def trimmed(sample: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """`sample` without the padding pad_to_max_len added (masked, unlabelled: it changes nothing learned)."""
    n = real_length(sample["input_ids"], sample["labels"], sample.get("attention_mask"), pad_id)
    if n == len(sample["input_ids"]):
        return sample
    return {k: v[:n] if k in ("input_ids", "labels", "attention_mask") else v for k, v in sample.items()}


def pack_rows(lengths: Sequence[int], row_len: int) -> list[list[int]]:
    """Indices of the examples in each row: best fit, longest first (rows never exceed row_len unless one
    example alone is longer)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        n = lengths[i]
        best = -1
        for r, free in enumerate(room):
            if n <= free and (best < 0 or free < room[best]):
                best = r
        if best < 0:
            rows.append([i])
            room.append(row_len - n)
        else:
            rows[best].append(i)
            room[best] -= n
    return rows


class PackedCollator:
    """Collates one micro-batch of samples into packed rows (see the module docstring)."""

    def __init__(self, pad_id: int, row_len: int) -> None:
        self.pad_id = pad_id
        self.row_len = row_len

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        pieces = []
        for s in samples:
            n = real_length(s["input_ids"], s["labels"], s.get("attention_mask"), self.pad_id)
            pieces.append((list(s["input_ids"][:n]), list(s["labels"][:n])))
        rows = pack_rows([len(p[0]) for p in pieces], self.row_len)
        width = max(sum(len(pieces[i][0]) for i in row) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                ids, lab = pieces[i]
                n = len(ids)
                input_ids[r, at : at + n] = torch.tensor(ids)
                labels[r, at : at + n] = torch.tensor(lab)
                labels[r, at] = IGNORE  # never learn an example's first token from the one before it
                position_ids[r, at : at + n] = torch.arange(n)
                at += n
            # the padding tail restarts its positions too, so it is a sequence of its own
            position_ids[r, at:] = torch.arange(width - at)
        batch = {"input_ids": input_ids, "labels": labels, "use_cache": False}
        if any(len(row) > 1 for row in rows) or width > min(len(pieces[r[0]][0]) for r in rows):
            # transformers finds the example boundaries from the restarts; a batch of one example per row
            # with no padding needs none (and skips that search, which waits for the GPU)
            batch["position_ids"] = position_ids
        return batch


# below this share of scored positions the head runs on the scored ones only (gathering them costs a copy)
SCORED_SHARE_MAX = 0.75


class ScoredOnly:
    """Wraps a collator: where few positions are scored, adds `logits_to_keep` (the positions, across the
    batch's rows, whose next label is scored) and `shift_labels` at those positions, so the model computes
    the head and the loss there only. Made on the host, so nothing waits for the GPU."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = self.inner(samples)
        labels = batch.get("labels")
        if labels is None or "shift_labels" in batch:
            return batch
        following = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE)
        keep = following.ne(IGNORE).any(dim=0).nonzero().flatten()
        if len(keep) > SCORED_SHARE_MAX * labels.shape[1]:
            return batch
        batch["logits_to_keep"] = keep
        batch["shift_labels"] = following[:, keep].contiguous()
        return batch


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the (peft-wrapped) causal LM's forward selects head positions by `logits_to_keep`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX on x86, BF16 on Arm)."""
    import platform
    from pathlib import Path

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    if platform.machine() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def decoder_layers(model: Any) -> list[Any]:
    """The repeated transformer blocks of a (peft-wrapped) causal LM."""
    import torch

    best: list[Any] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            if all(type(m) is type(module[0]) for m in module):
                best = list(module)
    return best


def use_compile_cache(folder: str | Path) -> Path:
    """Keep inductor's and Triton's compiled artifacts (the FX graph and AOTAutograd caches, the kernels)
    under `folder` (the run's cache_dir/compiled), one subfolder per torch version: a later run of the same
    shapes loads them instead of compiling again, on this machine or wherever the cache goes with it. Returns
    the folder used."""
    import os

    import torch
    import torch._functorch.config
    import torch._inductor.config

    where = Path(folder) / f"torch-{torch.__version__}"
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(where / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(where / "triton")
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    # the fp8 product (fp8.py) is a custom autograd.Function; its code comes with the pass version, which is
    # in the cache key of every output, and changes with slimtune, whose version is in this folder's path
    torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True
    return where


def compile_layers(model: Any) -> int:
    """Compile each decoder layer in place (regional compilation); returns how many."""
    import torch

    layers = decoder_layers(model)
    # one graph serves all layers; room for the train/eval variants and a dynamic-shape recompile
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in layers:
        layer.compile()
    return len(layers)


# Compiling the decoder layers costs 15-75 s before the first step on an H200 (Phi-3-mini: 15 s bf16, 75 s with
# the fp8 base) and then saves a third or more of every step; for the 135M example (122 short steps) the compiled
# run took 141 s against 51 s eager, recompiling as the packed shapes changed. So the automatic setting compiles
# only runs with at least this much work, counted as parameters x training tokens (3.8B x 2.6M tokens, 135M x
# 74M tokens), where minutes of training are at stake.
COMPILE_MIN_WORK = 1e16


def training_work(model: Any, train_set: Any, args: Any, pad_id: int, sample: int = 2000) -> float:
    """Parameters x the tokens this run will train on (the mean real length of up to `sample` rows times the
    rows the steps or epochs will take)."""
    import os

    n = len(train_set)
    if not n:
        return 0.0
    step = max(1, n // sample)
    lengths = [
        real_length(row["input_ids"], row["labels"], row.get("attention_mask"), pad_id)
        for row in (train_set[i] for i in range(0, n, step))
    ]
    mean = sum(lengths) / len(lengths)
    if args.max_steps and args.max_steps > 0:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rows = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    else:
        rows = n * args.num_train_epochs
    return float(sum(p.numel() for p in model.parameters())) * mean * rows


# The automatic fp8 base needs a model at least this wide. Measured on one H200 (benchmarks/loss_real_weights.py,
# 2026-11-29): on SmolLM2-135M's real weights (hidden size 576) the fp8 base's held-out loss was 0.1356 against
# 0.1131 for the bf16 baseline, 12.6x the seed-to-seed difference, and its first steps' loss was higher from the
# start. Its speed gain was measured on Phi-3-mini's shape (hidden 3072; random weights, so no loss evidence);
# a small model's GPU step is bound by host work, which fp8 does not shorten.
FP8_MIN_HIDDEN = 2048


def speed_plan(
    params: Any, device: str, work: float | None = None, hidden: int | None = None
) -> dict[str, bool]:
    """Which speed features this run uses. `None` settings: packing on for CUDA; compiled layers on for CUDA
    when the run is long enough to repay the compile (`work` >= COMPILE_MIN_WORK, or `work` unknown) and the
    base is not 4-bit; the fp8 base where the GPU has fp8 tensor cores, the layers are compiled (the fp8
    path was measured compiled) and the model's `hidden` size is at least FP8_MIN_HIDDEN, for plain LoRA.
    Off on the CPU."""
    on_gpu = device == "cuda"
    pack = params.pack_sequences if params.pack_sequences is not None else on_gpu
    long_run = work is None or work >= COMPILE_MIN_WORK
    # bitsandbytes' 4-bit layers are left to run eagerly unless asked for
    compile_ = params.compile_layers
    if compile_ is None:
        compile_ = on_gpu and not params.quantized and long_run
    compile_ = bool(compile_) and on_gpu
    from slimtune.passes.lora.fp8 import fp8_available

    plain = not (params.quantized or params.use_dora or params.quantization_aware)
    fp8 = params.fp8_base
    if fp8 is None:
        fp8 = plain and compile_ and (hidden or 0) >= FP8_MIN_HIDDEN and fp8_available(device)
    if fp8 and not fp8_available(device):
        from slimtune.errors import UserError

        raise UserError(
            f"LoRA pass: fp8_base: true needs a CUDA GPU with fp8 tensor cores (compute capability 8.9 or "
            f"later: Ada, Hopper, Blackwell), and this run trains on {_device_name(device)}; leave fp8_base "
            "out to use fp8 only where the GPU has it"
        )
    return {"pack_sequences": bool(pack), "compile_layers": compile_, "fp8_base": bool(fp8)}


def _device_name(device: str) -> str:
    if device != "cuda":
        return "the CPU"
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (compute capability {major}.{minor})"


def without_cudnn_attention():
    """A TrainerCallback that switches PyTorch's cuDNN sdpa backend off while training runs and restores the
    setting after (see the module docstring)."""
    import torch
    from transformers import TrainerCallback

    class WithoutCudnnAttention(TrainerCallback):
        before: bool | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.before = torch.backends.cuda.cudnn_sdp_enabled()
            torch.backends.cuda.enable_cudnn_sdp(False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.before is not None:
                torch.backends.cuda.enable_cudnn_sdp(self.before)
                self.before = None

    return WithoutCudnnAttention()
