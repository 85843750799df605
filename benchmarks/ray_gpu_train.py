"""One LoRA training pass on GPUs three ways, one run: one GPU, two GPUs under torchrun (the LoRA pass's own
data-parallel path, `distributed: auto`), and two GPU workers of Ray Train through the `Ray` system (a local Ray
cluster started by the run, `accelerators: [gpu]`, `num_workers: 2`). Needs a machine with two CUDA GPUs.

    python benchmarks/ray_gpu_train.py --tokenizer PATH [--layers 8] [--steps 40] [--no-docs]

No download: the model is Phi-3-mini's shape (`transformers.Phi3Config()`) cut to `--layers` decoder layers, with
random bf16 weights, saved with the tokenizer at `--tokenizer` (any Hugging Face tokenizer folder; its vocabulary
sets the model's). The data is synthetic text (words drawn from a fixed list by a seeded generator), one row per
~1000 tokens, cut to 1024-token sequences. The LoRA settings are the source document's (r 64, alpha 64, dropout
0.1 on qkv_proj + o_proj); the same micro-batch per GPU and number of steps in every run, so the two-GPU runs see
twice the tokens. Each run is a separate `slimtune run` process from an empty cache.

Reported per run: the pass's wall time (run.json), training tokens/s (the pass's own count over its training
loop), tokens seen, steps, last logged loss, world size, and the process's whole wall time (start-up, model
load, Ray's cluster start included). Ray's overhead is the Ray run's wall time less the torchrun run's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_section, machine, versions  # noqa: E402

WORDS = [
    f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ro", "vi") for b in ("n", "s", "t", "ra", "lo")
]


def make_model(folder: Path, tokenizer: Path, layers: int) -> Path:
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tokenizer)
    config = transformers.Phi3Config(
        num_hidden_layers=layers, vocab_size=len(tok), pad_token_id=tok.pad_token_id
    )
    config.eos_token_id = tok.eos_token_id
    config.bos_token_id = tok.bos_token_id
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def make_data(path: Path, rows: int) -> Path:
    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(rows):
            # a sparse chain: each word has 3 likely followers, so the loss can fall
            word, words = rng.choice(WORDS), []
            for _ in range(420):
                words.append(word)
                word = WORDS[(WORDS.index(word) * 7 + rng.choice((1, 2, 3))) % len(WORDS)]
            f.write(json.dumps({"text": " ".join(words)}) + "\n")
    return path


def config(model: Path, data: Path, steps: int, batch: int, way: str) -> dict:
    lora = {
        "type": "LoRA",
        "r": 64,
        "alpha": 64,
        "lora_dropout": 0.1,
        "target_modules": ["qkv_proj", "o_proj"],
        "train_data_config": "text",
        "distributed": "off" if way == "one GPU" else "auto",
        "compile_layers": False,
        "fp8_base": False,
        "training_args": {
            "max_steps": steps,
            "per_device_train_batch_size": batch,
            "gradient_accumulation_steps": 1,
            "learning_rate": 1e-4,
            "logging_steps": 5,
            "save_strategy": "no",
        },
    }
    cfg = {
        "input_model": {"model_path": str(model)},
        "data_configs": [
            {
                "name": "text",
                "load_dataset_config": {"data_name": "json", "data_files": str(data)},
                "pre_process_data_config": {"text_template": "{text}", "max_seq_len": 1024},
            }
        ],
        "passes": {"lora": lora},
        "evaluate_input_model": False,
        "cache_dir": "cache",
        "output_dir": "out",
    }
    # Olive's default accelerator is the CPU: the GPU is asked for, as a user's config does
    cfg["systems"] = {"gpu": {"type": "LocalSystem", "accelerators": [{"device": "gpu"}]}}
    cfg["host"] = "gpu"
    if way == "Ray, 2 GPU workers":
        cfg["systems"] = {
            "cluster": {
                "type": "Ray",
                "accelerators": ["gpu"],
                "num_workers": 2,
                "resources_per_worker": {"CPU": 2},
            }
        }
        cfg["host"] = "cluster"
    return cfg


def run_once(folder: Path, cfg: dict, timeout: float) -> dict:
    folder.mkdir(parents=True)
    path = folder / "config.json"
    path.write_text(json.dumps(cfg, indent=1))
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    log = folder / "log.txt"  # the run's own output, kept: a run that hangs or fails shows where
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                [sys.executable, "-m", "slimtune", "run", "--config", str(path)],
                cwd=folder,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timed out"
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"run in {folder} failed ({code}) after {wall:.0f} s:\n{log.read_text()[-4000:]}")
    record = json.loads((folder / "out" / "run.json").read_text())
    lora = record["passes"][0]
    metrics = lora["metrics"]
    if metrics.get("device") != "cuda":
        raise SystemExit(f"run in {folder} trained on {metrics.get('device')}, not on the GPU")
    curve = metrics.get("loss_curve") or [{"loss": float("nan")}]
    return {
        "process_s": wall,
        "pass_s": lora["wall_s"],
        "tokens_per_s": metrics["tokens_per_s"],
        "tokens": metrics["tokens_seen"],
        "steps": metrics["steps"],
        "loss": curve[-1]["loss"],
        "world": metrics.get("world_size", 1),
        "batch": metrics["batch"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8, help="micro-batch per GPU")
    parser.add_argument("--timeout", type=float, default=600, help="seconds each run may take")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()

    import torch

    if torch.cuda.device_count() < 2:
        raise SystemExit("needs two CUDA GPUs")
    root = Path(tempfile.mkdtemp(prefix="ray-gpu-train-"))
    model = make_model(root / "model", args.tokenizer, args.layers)
    data = make_data(root / "data.jsonl", 4 * args.steps * args.batch)
    results = {}
    for i, way in enumerate(("one GPU", "torchrun, 2 GPUs", "Ray, 2 GPU workers")):
        results[way] = run_once(
            root / f"run{i}", config(model, data, args.steps, args.batch, way), args.timeout
        )
        print(way, json.dumps(results[way]), flush=True)
    print(f"logs of each run: {root}/run*/log.txt", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))

    one = results["one GPU"]["tokens_per_s"]
    lines = [
        "| run | world | steps | tokens | training tokens/s | vs one GPU | pass wall s | process wall s | last loss |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for way, r in results.items():
        lines.append(
            f"| {way} | {r['world']} | {r['steps']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / one:.2f}x | {r['pass_s']:.1f} | {r['process_s']:.1f} | {r['loss']:.4f} |"
        )
    ray, torchrun = results["Ray, 2 GPU workers"], results["torchrun, 2 GPUs"]
    lines += [
        "",
        f"Ray against torchrun: {ray['tokens_per_s'] / torchrun['tokens_per_s']:.2f}x the training tokens/s; "
        f"{ray['process_s'] - torchrun['process_s']:+.1f} s of whole-process wall time "
        f"({ray['pass_s'] - torchrun['pass_s']:+.1f} s of the pass's).",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_docs:
        header = (
            f"Machine: {machine()}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}. Versions: "
            f"{versions(['torch', 'transformers', 'peft', 'ray'])}. Phi-3-mini shape cut to {args.layers} layers, "
            f"random bf16 weights; LoRA r 64 on qkv_proj + o_proj; micro-batch {args.batch} x 1024 tokens per GPU, "
            f"{args.steps} steps; bf16 (compile_layers and fp8_base off in all three); each run a separate "
            "`slimtune run` from an empty cache. `benchmarks/ray_gpu_train.py`."
        )
        append_section("LoRA on two GPUs: torchrun against Ray Train", header + "\n\n" + table)


if __name__ == "__main__":
    main()
