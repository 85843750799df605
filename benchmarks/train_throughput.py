"""LoRA training speed: Olive-style Trainer + peft baselines against slimtune's LoRA pass path, one run.

    python benchmarks/train_throughput.py                       # all rows, Phi-3-mini shape, on a GPU
    python benchmarks/train_throughput.py --tiny --steps 8 --warmup 2   # a smoke run of the script on the CPU
    torchrun --nproc_per_node 2 benchmarks/train_throughput.py --rows slimtune   # data-parallel scaling

No download: the model is `transformers.Phi3Config()` (Phi-3-mini's shape) with random bf16 weights, the
data a synthetic token stream (a sparse Markov chain, so the loss can fall) cut into 1024-token sequences,
as Olive's corpus strategy joins rows. The LoRA settings are the source document's: r 64, alpha 64,
dropout 0.1 on qkv_proj + o_proj. Every row trains from the same weights on the same sequences in the same
order, for the same number of tokens, with the same optimiser settings (lr 1e-4 constant after 3% warm-up,
max_grad_norm 0.3, adam_beta2 0.999); the effective batch is the seed's 4 sequences except in the `-b8` rows.

Rows:
  olive-seed      Olive's LoRA pass as it configures Trainer + peft (olive/passes/pytorch/lora.py): model
                  and adapters in bf16 without autocast, paged_adamw_32bit (adamw_torch without
                  bitsandbytes), sdpa attention, the seed's batch 1 x accumulation 4, no gradient checkpointing
  olive-b4        the same with batch 4 x accumulation 1
  plain-b4, -b8   the best plain Trainer + peft set-ups found: bf16 autocast with fp32 adapters, fused AdamW,
                  sdpa, no per-step NaN check; batch 4 or 8
  plain-b8-compile, plain-b8-liger   plain-b8 plus what a Trainer user gets by configuration alone:
                  torch_compile=True (the whole model compiled), use_liger_kernel=True (Liger's Triton
                  kernels: fused linear + cross-entropy, RMSNorm, SwiGLU, rope; needs liger-kernel). Liger
                  patches transformers' modeling_phi3 for the whole process: it is restored after each row
  slimtune, -b8   slimtune's LoRA pass path (lora_train.attach_adapter / training_arguments_for /
                  make_trainer) as it runs a long job: packed collator, compiled decoder layers (the default
                  compiles runs of >= 1e16 parameter-tokens, e.g. this model on 2.6M tokens; the rows time a
                  163k-token sample of such a run, so they set compile_layers on), the frozen base's products
                  in fp8 where the GPU has fp8 tensor cores (slimtune.passes.lora.fp8); batch 4 or 8
  slimtune-bf16, -bf16-b8   the same with fp8_base off (every product in bf16)
  slimtune-eager  the same path with compile_layers and fp8_base off

Reported: tokens/s over the steps after warm-up, the first step's time (compilation included) and the
end-to-end time of a 2.6M-token job (first step + the remaining tokens at the steady speed), MFU (4 x parameters x tokens / time / peak bf16 FLOP/s,
989 TFLOP/s for an H100 / H200, per GPU), peak GPU memory (torch max_memory_allocated), the training loss
of the last logged 5 steps and the loss on 8 held-out sequences after the same number of tokens, and each
row's throughput as a ratio of the best baseline's. Under torchrun the rows are data-parallel (DDP, the
batch is per GPU) and rank 0 reports.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import append_section, machine, now, versions  # noqa: E402

PEAK_BF16 = 989e12
# row -> (micro-batch, gradient accumulation)
SHAPES = {
    "olive-seed": (1, 4),
    "olive-b4": (4, 1),
    "plain-b4": (4, 1),
    "plain-b8": (8, 1),
    "plain-b8-compile": (8, 1),
    "plain-b8-liger": (8, 1),
    "slimtune": (4, 1),
    "slimtune-b8": (8, 1),
    "slimtune-bf16": (4, 1),
    "slimtune-bf16-b8": (8, 1),
    "slimtune-eager": (4, 1),
}
BASELINES = ("olive-seed", "olive-b4", "plain-b4", "plain-b8", "plain-b8-compile", "plain-b8-liger")
DDP_TRAINING_ARGS: dict = {}  # --ddp-bucket-mb: DDP settings tried on the slimtune rows under torchrun
JOB_TOKENS = 2.6e6  # the end-to-end column: first step (compilation, warm-up) + the rest at the steady speed
ROWS = tuple(SHAPES)
TARGETS = ["qkv_proj", "o_proj"]


def make_config(tiny: bool):
    import transformers

    if tiny:
        return transformers.Phi3Config(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            original_max_position_embeddings=1024,
            pad_token_id=0,
        )
    return transformers.Phi3Config()


def make_model(config, device: str):
    import torch
    import transformers

    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation="sdpa"
        )
    model.config.use_cache = False
    return model


def make_sequences(n: int, seq: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """A token stream from a sparse Markov chain (each token is followed by one of 4), cut into blocks."""
    import random

    rng = random.Random(seed)
    states = min(vocab - 2, 2000)
    follow = [[rng.randrange(2, states + 2) for _ in range(4)] for _ in range(states + 2)]
    token = 2
    out = []
    for _ in range(n):
        block = []
        for _ in range(seq):
            token = rng.choice(follow[token])
            block.append(token)
        out.append(block)
    return out


class Timer:
    """TrainerCallback: wall time of each optimizer step, synchronized with the GPU."""

    def __init__(self, device: str, profile_from: int | None = None) -> None:
        import transformers

        self.device = device
        self.start_step = 0
        self.profile_from = profile_from
        self.profiler = None
        self.times: list[float] = []
        self.losses: list[float] = []
        outer = self

        class _Callback(transformers.TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if outer.profile_from is not None and state.global_step == outer.profile_from:
                    import torch

                    outer.profiler = torch.profiler.profile(
                        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                    )
                    outer.profiler.__enter__()

            def on_step_end(self, args, state, control, **kwargs):
                # synchronize only where the clock is read for the result: a wait at every step would stop
                # the host from queueing the next step's work while the GPU runs this one
                if state.global_step in (outer.start_step, outer.profile_from or state.max_steps):
                    outer._sync()
                outer.times.append(time.perf_counter())
                if outer.profiler is not None and state.global_step == outer.profile_from + 2:
                    outer.profiler.__exit__(None, None, None)
                    averages = outer.profiler.key_averages()
                    gpu_us = sum(e.self_device_time_total for e in averages)
                    wall = outer.times[-1] - outer.times[-3] if len(outer.times) >= 3 else float("nan")
                    print(
                        f"rank {os.environ.get('RANK', '0')}: profiled 2 steps: {wall:.3f} s wall, {gpu_us / 1e6:.3f} s of GPU kernel time"
                    )
                    for key in ("self_cuda_time_total", "self_cpu_time_total"):
                        if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0's tables only
                            print(averages.table(sort_by=key, row_limit=18, max_name_column_width=60))
                    outer.profiler = None

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    outer.losses.append(float(logs["loss"]))

        self.callback = _Callback()

    def _sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()


def olive_collate(batch, pad_id: int):
    """Olive's LoRABase.collate_batch: pad_sequence on input_ids, attention_mask, labels."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    ids = [torch.tensor(b["input_ids"]) for b in batch]
    mask = [torch.tensor(b["attention_mask"]) for b in batch]
    labels = [torch.tensor(b["labels"]) for b in batch]
    return {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_id),
        "attention_mask": pad_sequence(mask, batch_first=True, padding_value=0),
        "labels": pad_sequence(labels, batch_first=True, padding_value=-100),
    }


def common_args(micro: int, accumulation: int, steps: int) -> dict:
    return {
        "seed": 0,
        "data_seed": 42,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_checkpointing": False,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 0.03,
        "max_steps": steps,
        "max_grad_norm": 0.3,
        "adam_beta2": 0.999,
        "logging_steps": 5,
        "save_strategy": "no",
        "report_to": [],
        "disable_tqdm": True,
        "remove_unused_columns": False,
    }


def baseline_trainer(row: str, model, train, steps: int, device: str, out: Path, callbacks):
    import importlib.util

    import transformers
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    micro, accumulation = SHAPES[row]
    for p in model.parameters():
        p.requires_grad = False
    lora = LoraConfig(
        r=64, lora_alpha=64, lora_dropout=0.1, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"
    )
    args = common_args(micro, accumulation, steps)
    if row.startswith("olive"):
        peft_model = get_peft_model(model, lora)
        for module in peft_model.modules():  # Olive casts the adapters to the model's dtype
            if isinstance(module, LoraLayer):
                module.to(peft_model.dtype)
        has_bnb = device == "cuda" and importlib.util.find_spec("bitsandbytes") is not None
        args["optim"] = "paged_adamw_32bit" if has_bnb else "adamw_torch"
    else:
        peft_model = get_peft_model(model, lora)  # adapters stay fp32 under bf16 autocast
        args["bf16"] = device == "cuda"
        args["optim"] = "adamw_torch_fused" if device == "cuda" else "adamw_torch"
        args["logging_nan_inf_filter"] = False  # its check waits for the GPU at every micro-batch
        args["torch_compile"] = "compile" in row
        args["use_liger_kernel"] = "liger" in row
    args["use_cpu"] = device == "cpu"
    training_args = transformers.TrainingArguments(output_dir=str(out), **args)
    trainer = transformers.Trainer(
        model=peft_model,
        args=training_args,
        train_dataset=train,
        data_collator=lambda b: olive_collate(b, 0),
        callbacks=callbacks,
    )
    trainer.remove_callback(transformers.PrinterCallback)
    return trainer, peft_model


def slimtune_trainer(
    row: str, model, train, steps: int, device: str, out: Path, callbacks, compiled_dir: Path | None = None
):
    from slimtune.passes.lora import LoRAParams
    from slimtune.passes.lora.train import attach_adapter, make_trainer, training_arguments_for

    training = common_args(*SHAPES[row], steps)
    for key in (
        "save_strategy",
        "report_to",
        "disable_tqdm",
        "remove_unused_columns",
        "gradient_checkpointing",
    ):
        training.pop(key)  # slimtune sets these itself
    params = LoRAParams(
        r=64,
        alpha=64,
        lora_dropout=0.1,
        target_modules=TARGETS,
        train_data_config="bench",
        training_args={**training, **DDP_TRAINING_ARGS, "save_strategy": "no"},
        # on: the default compiles runs of >= 1e16 parameter-tokens, of which these rows time a sample
        compile_layers=not row.endswith("eager"),
        fp8_base=False if ("bf16" in row or row.endswith("eager")) else None,
    )
    peft_model, _, _ = attach_adapter(model, params)
    args = training_arguments_for(params, out, device, has_eval=False, n_train=len(train))

    class _Tokenizer:  # the pad id is all make_trainer reads
        pad_token_id, eos_token_id = 0, 0

    trainer, plan = make_trainer(
        peft_model,
        _Tokenizer(),
        train,
        None,
        params,
        args,
        device,
        1024,
        callbacks=callbacks,
        compiled_dir=compiled_dir,
    )
    return trainer, peft_model, plan


def held_out_loss(model, held, device: str) -> float:
    import torch

    model.eval()
    total = 0.0
    stance = getattr(torch.compiler, "set_stance", None)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        ctx = stance("force_eager") if stance else None
        if ctx is not None:
            ctx.__enter__()
        try:
            for block in held:
                ids = torch.tensor([block], device=model.device)
                total += float(model(input_ids=ids, labels=ids, use_cache=False).loss)
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)
    return total / len(held)


def attention_backend(name: str, device: str):
    """The sdpa kernel to use ('' leaves PyTorch's own choice)."""
    import contextlib

    if not name or device != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, name.upper())])


def module_state(module) -> dict:
    """What Liger (or anything) may patch in a module: its names and the attributes of its classes."""
    classes = {
        name: dict(vars(value))
        for name, value in vars(module).items()
        if isinstance(value, type) and value.__module__ == module.__name__
    }
    return {"names": dict(vars(module)), "classes": classes}


def restore_module(module, state: dict) -> None:
    for name, value in state["names"].items():
        if vars(module).get(name) is not value:
            setattr(module, name, value)
    for name, attrs in state["classes"].items():
        cls = state["names"][name]
        for attr, value in attrs.items():
            if attr not in ("__dict__", "__weakref__") and vars(cls).get(attr) is not value:
                setattr(cls, attr, value)


def run_row(
    row: str,
    config,
    sequences,
    held,
    warmup: int,
    device: str,
    profile: bool,
    sdpa: str = "",
    compiled_dir: Path | None = None,
) -> dict:
    from transformers.models.phi3 import modeling_phi3

    state = module_state(modeling_phi3)
    try:
        return _run_row(row, config, sequences, held, warmup, device, profile, sdpa, compiled_dir)
    finally:
        restore_module(modeling_phi3, state)  # Liger's patches stay with its row


def _run_row(row, config, sequences, held, warmup, device, profile, sdpa, compiled_dir) -> dict:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = make_model(config, device)
    params = sum(p.numel() for p in model.parameters())
    # a plain list is a map-style dataset for the Trainer (no datasets package needed)
    train = [{"input_ids": s, "labels": s, "attention_mask": [1] * len(s)} for s in sequences]
    micro, accumulation = SHAPES[row]
    world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun: data-parallel over `world` GPUs
    steps = len(sequences) // (micro * accumulation * world)  # every row trains on the same tokens
    warmup = min(warmup, steps - 3)
    end = steps - 2 if profile else steps  # the profiled last 2 steps are left out of the timing
    timer = Timer(device, end if profile else None)
    timer.start_step = warmup
    plan = None
    with tempfile.TemporaryDirectory() as out:
        if row.startswith("slimtune"):
            trainer, peft_model, plan = slimtune_trainer(
                row, model, train, steps, device, Path(out), [timer.callback], compiled_dir
            )
        else:
            trainer, peft_model = baseline_trainer(
                row, model, train, steps, device, Path(out), [timer.callback]
            )
        start = time.perf_counter()
        with attention_backend(sdpa, device):
            trainer.train()
    seq = len(sequences[0])
    tokens_per_step = micro * accumulation * seq * world
    # times[i] is read after optimizer step i + 1; the GPU was synchronized after steps `warmup` and `end`
    seconds = timer.times[end - 1] - timer.times[warmup - 1]
    tokens_per_s = tokens_per_step * (end - warmup) / seconds
    result = {
        "row": row if world == 1 else f"{row} ({world} GPUs)",
        "gpus": world,
        "micro_batch": micro,
        "accumulation": accumulation,
        "steps": steps,
        "tokens": tokens_per_step * steps,
        "tokens_per_s": tokens_per_s,
        "mfu": 4 * params * tokens_per_s / (PEAK_BF16 * world),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan"),
        "train_loss_last": timer.losses[-1] if timer.losses else float("nan"),
        "held_out_loss": held_out_loss(peft_model, held, device),
        "first_step_s": timer.times[0] - start if timer.times else float("nan"),
        "end_to_end_s": (timer.times[0] - start) + (JOB_TOKENS - tokens_per_step) / tokens_per_s,
        "params": params,
        "speed": plan,
    }
    del trainer, peft_model, model
    gc.collect()
    if device == "cuda":
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    return result


def table(results: list[dict]) -> str:
    best = max(
        (r for r in results if r["row"].split(" (")[0] in BASELINES),  # "plain-b8 (2 GPUs)" is plain-b8
        key=lambda r: r["tokens_per_s"],
        default=None,
    )
    fastest_job = min(
        (r["end_to_end_s"] for r in results if r["row"].split(" (")[0] in BASELINES), default=float("nan")
    )
    lines = [
        "| row | batch x accum. | tokens/s | MFU | peak GiB | train loss (last 5 steps) | held-out loss | "
        "first step s | 2.6M-token job s | tokens/s vs best baseline | job time vs best baseline |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        ratio = r["tokens_per_s"] / best["tokens_per_s"] if best else float("nan")
        lines.append(
            f"| {r['row']} | {r['micro_batch']} x {r['accumulation']} | {r['tokens_per_s']:,.0f} | "
            f"{100 * r['mfu']:.1f}% | {r['peak_gib']:.1f} | {r['train_loss_last']:.3f} | "
            f"{r['held_out_loss']:.3f} | {r['first_step_s']:.1f} | {r['end_to_end_s']:.0f} | {ratio:.2f}x | "
            f"{fastest_job / r['end_to_end_s']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated, from " + ", ".join(ROWS))
    parser.add_argument(
        "--steps",
        type=int,
        default=30,
        help="optimizer steps of 4 sequences (rows with batch 8 take half as many)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--tiny", action="store_true", help="a tiny Phi-3 on the CPU: checks the script runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--markdown", type=Path, help="write the docs section here instead of docs/benchmarks.md"
    )
    parser.add_argument("--no-docs", action="store_true", help="print only")
    parser.add_argument(
        "--sdpa", default="", help="force an sdpa kernel for every row: flash_attention, cudnn_attention, ..."
    )
    parser.add_argument("--profile", default="", help="comma-separated rows whose last 2 steps are profiled")
    parser.add_argument(
        "--compile-cache",
        type=Path,
        help="keep slimtune rows' compiled kernels here (what cache_dir/compiled is in a run): a second "
        "invocation with the same folder shows the compile time saved",
    )
    parser.add_argument(
        "--ddp-bucket-mb",
        type=int,
        help="slimtune rows under torchrun: DDP's gradient bucket size (default 25)",
    )
    opts = parser.parse_args(argv)
    if opts.ddp_bucket_mb:
        DDP_TRAINING_ARGS["ddp_bucket_cap_mb"] = opts.ddp_bucket_mb

    import torch

    device = "cuda" if torch.cuda.is_available() and not opts.tiny else "cpu"
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if rank != 0:
        opts.no_docs, opts.json, opts.markdown = True, None, None
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (rank 0 reports for all)
    config = make_config(opts.tiny)
    seq = 1024 if not opts.tiny else 64
    stream = make_sequences(opts.steps * 4 + 8, seq, config.vocab_size)
    sequences, held = stream[:-8], stream[-8:]  # held out: the same chain, never trained on
    rows = [r.strip() for r in opts.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    results = []
    for row in rows:
        print(f"[{now()}] {row} ...", flush=True)
        profile = row in opts.profile.split(",")
        results.append(
            run_row(row, config, sequences, held, opts.warmup, device, profile, opts.sdpa, opts.compile_cache)
        )
        r = results[-1]
        print(
            f"    {r['tokens_per_s']:,.0f} tokens/s, MFU {100 * r['mfu']:.1f}%, peak {r['peak_gib']:.1f} GiB, "
            f"loss {r['train_loss_last']:.3f} / held-out {r['held_out_loss']:.3f}, first step {r['first_step_s']:.1f} s",
            flush=True,
        )
    text = table(results)
    print(text)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    body = (
        f"Machine: {gpu}{f' x {world} (torchrun, DDP; peak memory per GPU)' if world > 1 else ''}; {machine()}. Versions: "
        f"{versions(['torch', 'transformers', 'peft', 'accelerate', 'bitsandbytes', 'triton'])}.\n"
        f"Model: Phi3Config() defaults{' (tiny variant)' if opts.tiny else ''}, {results[0]['params'] / 1e9:.2f}B "
        f"parameters, random bf16 weights; LoRA r 64 / alpha 64 / dropout 0.1 on qkv_proj + o_proj; "
        f"{seq}-token sequences, {opts.steps} optimizer steps of 4 sequences per row ({opts.steps * 4 * seq:,} tokens), "
        f"tokens/s over the steps after the first {opts.warmup}. MFU counts 4 x parameters x tokens against "
        f"{PEAK_BF16 / 1e12:.0f} TFLOP/s.\n\n{text}\n"
    )
    if opts.json:
        opts.json.write_text(json.dumps({"date": now(), "gpu": gpu, "results": results}, indent=2))
    if opts.markdown:
        opts.markdown.write_text(f"## LoRA training throughput ({now()})\n\n{body}")
    elif not opts.no_docs:
        append_section("LoRA training throughput", body)
    return 0 if all(math.isfinite(r["tokens_per_s"]) for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
