"""The 135M example's LoRA training speed on one GPU: slimtune's pass path on the example's data and shapes.

    python benchmarks/small_gpu_train.py                       # the default model's folder (prepared here)
    python benchmarks/small_gpu_train.py --model-dir DIR       # a folder with config.json and the tokenizer

The model is SmolLM2-135M-Instruct's architecture with random bf16 weights (the speed does not depend on
the weights' values; only config.json and the tokenizer are read, so the folder can travel without its
weights). The data are examples/emotion/data.jsonl through the example's template, loss on the answer only,
repeated for --epochs; LoRA as in the example (r 16, alpha 32, dropout 0.05, every linear layer). Rows:
one per micro-batch size, through slimtune's LoRA path (attach_adapter, training_arguments_for,
make_trainer: packed rows, the head at scored positions only, compile off as the automatic choice leaves
it for a run this short). Reported: real (non-padding) tokens/s over the steps after the first --warmup.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import append_section, machine, now, versions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


def example_rows(tokenizer, epochs: int, path: Path = ROOT / "examples/emotion/data.jsonl") -> list[dict]:
    """The example's rows (or `path`'s, e.g. its heldout.jsonl) through its template, loss on the answer only."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    samples = []
    for row in rows:
        prompt = TEMPLATE.split("{tone}")[0].format(phrase=row["phrase"])
        ids = tokenizer(prompt + row["tone"], add_special_tokens=True)["input_ids"]
        ids = ids + [tokenizer.eos_token_id]
        answer_from = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        labels = [-100] * answer_from + ids[answer_from:]
        samples.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    return samples * epochs


def run(
    model_dir: Path,
    micro: int,
    samples: list[dict],
    warmup: int,
    compiled: bool = False,
    profile: Path | None = None,
    cudnn: bool = False,
) -> dict:
    import torch
    import transformers

    from slimtune.passes.lora import LoRAParams
    from slimtune.passes.lora.train import attach_adapter, make_trainer, training_arguments_for

    config = transformers.AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda()
    params = LoRAParams(
        r=16,
        alpha=32,
        lora_dropout=0.05,
        train_data_config="example",
        training_args={
            "learning_rate": 3e-4,
            "per_device_train_batch_size": micro,
            "num_train_epochs": 1,
            "logging_steps": 10,
            "save_strategy": "no",
            "seed": 0,
        },
        compile_layers=compiled or None,
    )
    model, _, _ = attach_adapter(model, params)
    times: list[float] = []
    profiler = None

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            nonlocal profiler
            if state.global_step in (warmup, state.max_steps):
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            if profile is not None and state.global_step == warmup + 2:
                profiler = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                )
                profiler.__enter__()
            if profiler is not None and state.global_step == warmup + 5:
                torch.cuda.synchronize()
                profiler.__exit__(None, None, None)
                for key, title in (("self_cpu_time_total", "host"), ("self_device_time_total", "GPU")):
                    table = profiler.key_averages().table(sort_by=key, row_limit=25)
                    with profile.open("a") as f:
                        f.write(
                            f"micro-batch {micro}, compile {compiled}, 3 steps, by {title} time\n{table}\n"
                        )
                profiler = None

    with tempfile.TemporaryDirectory() as out:
        args = training_arguments_for(params, Path(out), "cuda", has_eval=False, n_train=len(samples))
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        trainer, plan = make_trainer(
            model, tokenizer, samples, None, params, args, "cuda", 1024, callbacks=[Clock()]
        )
        if cudnn:  # the old behaviour, for comparison: cuDNN's attention left on
            for callback in list(trainer.callback_handler.callbacks):
                if type(callback).__name__ == "WithoutCudnnAttention":
                    trainer.remove_callback(callback)
            plan["cudnn_attention"] = True
        torch.cuda.reset_peak_memory_stats()
        trainer.train()
    real = [len(s["input_ids"]) for s in samples]
    steps = len(times)
    tokens_after = sum(real[warmup * micro : steps * micro])
    seconds = times[-1] - times[warmup - 1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "micro_batch": micro,
        "steps": steps,
        "tokens_per_s": tokens_after / seconds,
        "s_per_step": seconds / (steps - warmup),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "speed": {k: v for k, v in plan.items() if isinstance(v, bool)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-dir", type=Path, help="config.json + tokenizer (default: the prepared model)"
    )
    parser.add_argument("--micro-batches", default="8,32,128", help="comma-separated")
    parser.add_argument("--epochs", type=int, default=20, help="passes over the example's 482 rows")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--markdown", type=Path, help="write the docs section here instead of docs/benchmarks.md"
    )
    parser.add_argument(
        "--compile-layers", action="store_true", help="compile each decoder layer (off by default)"
    )
    parser.add_argument(
        "--cudnn-attention", action="store_true", help="leave cuDNN's sdpa on (slimtune switches it off)"
    )
    parser.add_argument("--profile", type=Path, help="append torch.profiler tables of 3 steps per row here")
    opts = parser.parse_args()
    import torch
    import transformers

    if opts.model_dir is None:
        from slimtune.models.store import prepared_path

        opts.model_dir = Path(prepared_path("smollm2-135m-instruct"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(opts.model_dir)
    samples = example_rows(tokenizer, opts.epochs)
    results = []
    for micro in (int(m) for m in opts.micro_batches.split(",")):
        r = run(
            opts.model_dir,
            micro,
            samples,
            opts.warmup,
            opts.compile_layers,
            opts.profile,
            opts.cudnn_attention,
        )
        results.append(r)
        print(json.dumps(r), flush=True)
    lines = [
        "| micro-batch | steps | tokens/s | s/step | peak GiB | loss first -> last logged |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['micro_batch']} | {r['steps']} | {r['tokens_per_s']:,.0f} | {r['s_per_step'] * 1000:.1f} ms | "
            f"{r['peak_gib']:.2f} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} |"
        )
    body = (
        f"Machine: {torch.cuda.get_device_name(0)}; {machine()}. Versions: "
        f"{versions(['torch', 'transformers', 'peft'])}. SmolLM2-135M architecture, random bf16 weights, the "
        f"emotion example's rows x {opts.epochs} epochs ({sum(len(s['input_ids']) for s in samples):,} real "
        f"tokens), answer-only loss; speed features {results[0]['speed']}.\n\n" + "\n".join(lines)
    )
    print(body)
    if opts.json:
        opts.json.write_text(json.dumps({"date": now(), "results": results}, indent=2))
    if opts.markdown:
        opts.markdown.write_text(f"## The 135M example's LoRA training on one GPU ({now()})\n\n{body}\n")
    else:
        append_section("The 135M example's LoRA training on one GPU", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
