"""LoRA training speed on the CPU: Olive 0.13's LoRA pass against slimtune's, same config and data, one run.

    python benchmarks/cpu_train.py                       # 2 rounds of 4 steps per row, rows alternating
    python benchmarks/cpu_train.py --rounds 1 --steps 3 --rows olive,slimtune

The config is the source document's LoRA pass on the default model (SmolLM2-135M-Instruct, prepared by
`slimtune models prepare smollm2-135m-instruct`): r 64, alpha 64, dropout 0.1 on q/k/v/o (the document's
qkv_proj + o_proj), batch 1 x accumulation 4, lr 1e-4, adam_beta2 0.999, max_grad_norm 0.3, seed 0 /
data_seed 42, the rows joined into 1024-token blocks (the document's `corpus_strategy: join`; the issue that
asked for this measured 1024 tokens) from examples/emotion/data.jsonl through the document's template. Left
out of both: double_quant (it makes the pass QLoRA, CUDA only), the 30% evaluation split and
group_by_length (equal-length blocks), and warm-up is set to 0 in both (slimtune's default is 3%, Olive's 0).

Olive runs in its own environment (benchmarks/.olive-venv, made here on first use: olive-ai 0.13 with the
torch this machine has). Each row is a fresh process (`olive run` / `slimtune run` under
benchmarks/timed_trainer.py, which times every optimizer step and records the loss of every step), with a
fresh cache. The rows alternate (olive, slimtune, ..., then again) so a change in the machine's load falls on
all of them. Rows:
  olive          Olive's LoRA pass (its default torch_dtype bfloat16: base and adapters in bf16, no autocast)
  slimtune       slimtune's LoRA pass with its defaults (bf16 base under autocast with fp32 adapters where
                 the CPU has bf16 units, fp32 otherwise)
  slimtune-fp32  slimtune's LoRA pass with torch_dtype float32 (what it did before: the loss reference)

Reported per row: seconds per optimizer step after the first (median over the rounds' steps), tokens/s from
that, the whole process's wall time, and the loss at each step (the same tokens in the same order).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import append_section, machine, versions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OLIVE_VENV = ROOT / "benchmarks" / ".olive-venv"
# what Olive's LoRA pass imports beyond olive-ai's own requirements (jinja2: peft's model card on save)
OLIVE_PACKAGES = ["olive-ai==0.13.*", "transformers", "peft", "accelerate", "datasets", "requests", "jinja2"]
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
DATA = ROOT / "examples" / "emotion" / "data.jsonl"
ROWS = ("olive", "slimtune", "slimtune-fp32")


def olive_python() -> Path:
    """The Olive environment's python, made on first use."""
    python = OLIVE_VENV / "bin" / "python"
    if not python.exists():
        import torch

        subprocess.run([sys.executable, "-m", "venv", str(OLIVE_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        # the torch this environment has (the CPU build): an unpinned one would be a multi-GB CUDA download
        subprocess.run([*pip, f"torch=={torch.__version__.split('+')[0]}"], check=True)
        subprocess.run([*pip, *OLIVE_PACKAGES], check=True)
    return python


def training_args(steps: int) -> dict:
    return {
        "seed": 0,
        "data_seed": 42,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 4,
        "gradient_checkpointing": False,
        "learning_rate": 0.0001,
        "max_steps": steps,
        "logging_steps": 1,
        "warmup_steps": 0,
        "adam_beta2": 0.999,
        "max_grad_norm": 0.3,
        "save_strategy": "no",
    }


def olive_config(model: Path, steps: int, work: Path) -> dict:
    """Olive 0.13's schema for the document's config."""
    return {
        "input_model": {"type": "HfModel", "model_path": str(model)},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}],
            }
        },
        "data_configs": [
            {
                "name": "train",
                "type": "HuggingfaceContainer",
                "load_dataset_config": {"data_name": "json", "data_files": str(DATA), "split": "train"},
                "pre_process_data_config": {
                    "text_cols": ["phrase", "tone"],
                    "text_template": TEMPLATE,
                    "strategy": "join",
                    "max_seq_len": 1024,
                    "pad_to_max_len": False,
                    "use_attention_mask": False,
                },
            }
        ],
        "passes": {
            "lora": {
                "type": "LoRA",
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "r": 64,
                "alpha": 64,
                "lora_dropout": 0.1,
                "train_data_config": "train",
                "training_args": training_args(steps),
            }
        },
        "host": "local_system",
        "target": "local_system",
        "cache_dir": str(work / "cache"),
        "output_dir": str(work / "out"),
        "log_severity_level": 1,
    }


def slimtune_config(model: Path, steps: int, work: Path, dtype: str | None) -> dict:
    """The document's own (old Olive) schema, as slimtune reads it."""
    lora = {
        "target_modules": ["o_proj", "qkv_proj"],
        "lora_r": 64,
        "lora_alpha": 64,
        "lora_dropout": 0.1,
        "train_data_config": "train",
        "training_args": training_args(steps),
    }
    if dtype:
        lora["torch_dtype"] = dtype
    return {
        "input_model": {"type": "PyTorchModel", "config": {"hf_config": {"model_name": str(model)}}},
        "systems": {"local_system": {"type": "LocalSystem", "config": {"accelerators": ["cpu"]}}},
        "data_configs": [
            {
                "name": "train",
                "type": "HuggingfaceContainer",
                "load_dataset_config": {
                    "params": {"data_name": "json", "data_files": str(DATA), "split": "train"}
                },
                "pre_process_data_config": {
                    "params": {
                        "dataset_type": "corpus",
                        "text_cols": ["phrase", "tone"],
                        "text_template": TEMPLATE,
                        "corpus_strategy": "join",
                        "source_max_len": 1024,
                        "pad_to_max_len": False,
                        "use_attention_mask": False,
                    }
                },
            }
        ],
        "passes": {"lora": {"type": "LoRA", "config": lora}},
        "engine": {
            "host": "local_system",
            "target": "local_system",
            "search_strategy": False,
            "cache_dir": str(work / "cache"),
            "output_dir": str(work / "out"),
        },
    }


def run_row(row: str, model: Path, steps: int, work: Path) -> dict:
    work.mkdir(parents=True)
    out = work / "timing.json"
    harness = str(ROOT / "benchmarks" / "timed_trainer.py")
    if row == "olive":
        config = olive_config(model, steps, work)
        command = [str(olive_python()), harness, str(out), "olive", "run", "--config"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    else:
        config = slimtune_config(model, steps, work, "float32" if row == "slimtune-fp32" else None)
        command = [sys.executable, harness, str(out), "slimtune", "run", "--config"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
    path = work / "config.json"
    path.write_text(json.dumps(config, indent=2))
    load_before = os.getloadavg()[0]
    log = work / "log.txt"
    with log.open("w") as f:
        done = subprocess.run([*command, str(path)], cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode or not out.exists():
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{row} failed (exit {done.returncode}); log {log}:\n{tail}")
    record = json.loads(out.read_text())
    record["load"] = [load_before, os.getloadavg()[0]]
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per row and round")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md")
    args = parser.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")

    from slimtune.models.store import prepared_path

    model = Path(prepared_path("smollm2-135m-instruct"))
    olive_python()
    olive_versions = subprocess.run(
        [
            str(olive_python()),
            "-c",
            "from importlib.metadata import version as v;"
            "print(', '.join(f'{p} {v(p)}' for p in ('olive-ai','torch','transformers','peft')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    records: dict[str, list[dict]] = {r: [] for r in rows}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cpu-train-") as tmp:
        for round_ in range(args.rounds):
            for row in rows:
                record = run_row(row, model, args.steps, Path(tmp) / f"{row}-{round_}")
                records[row].append(record)
                steady = record["step_s"][1:] or record["step_s"]
                print(
                    f"round {round_ + 1} {row:14s} s/step {statistics.median(steady):6.2f}  "
                    f"losses {[round(x[1], 4) for x in record['loss']]}  load {record['load']}",
                    flush=True,
                )
    total = time.perf_counter() - started
    table = summarize(records, rows, args)
    print(table)
    if not args.no_write:
        body = (
            f"Machine: {machine()}; shared with other work: 1-minute load average "
            f"{min(v for r in records.values() for x in r for v in x['load']):.1f} to "
            f"{max(v for r in records.values() for x in r for v in x['load']):.1f} during the run "
            f"({os.cpu_count()} CPUs), so absolute times are slower than on an idle machine; the rows "
            f"alternate, so the ratios are the measure.\n"
            f"Versions: slimtune side {versions(['torch', 'transformers', 'peft', 'accelerate'])}; "
            f"Olive side {olive_versions}. {args.rounds} rounds x {args.steps} steps per row, {total / 60:.0f} "
            f"min in all. Command: `python benchmarks/cpu_train.py --rounds {args.rounds} --steps {args.steps} "
            f"--rows {','.join(rows)}`.\n\n{table}"
        )
        print(f"written to {append_section('LoRA training on the CPU: Olive 0.13 against slimtune', body)}")
    return 0


def summarize(records: dict[str, list[dict]], rows: list[str], args) -> str:
    lines = [
        "| row | dtype | s/step (median, steps after the first) | tokens/s as counted | speed vs olive (positions/s) "
        "| process wall s (mean) | loss per step (round 1) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    # every step is 4 blocks of 1024 positions in both tools, so the speed ratio is one of step times; tokens/s
    # is shown as each tool's batches count it (attention-mask ones: Olive's joined blocks mask some positions)
    speed, step_s = {}, {}
    for row in rows:
        steps = [s for r in records[row] for s in (r["step_s"][1:] or r["step_s"])]
        tokens_per_step = records[row][0]["tokens"] / max(1, len(records[row][0]["step_s"]))
        step_s[row] = statistics.median(steps)
        speed[row] = tokens_per_step / step_s[row]

    def rate(row: str) -> float:
        """Positions (padding included: what a step computes over) per second; step rate for older records."""
        first = records[row][0]
        if first.get("positions"):
            return first["positions"] / max(1, len(first["step_s"])) / step_s[row]
        return 1 / step_s[row]

    for row in rows:
        first = records[row][0]
        steps = [s for r in records[row] for s in (r["step_s"][1:] or r["step_s"])]
        dtype = first["dtype"].replace("torch.", "") + (" + bf16 autocast" if first["bf16"] else "")
        ratio = f"{rate(row) / rate('olive'):.2f}x" if "olive" in step_s else "-"
        wall = statistics.mean(r["wall_s"] for r in records[row])
        losses = ", ".join(f"{x[1]:.4f}" for x in first["loss"])
        lines.append(
            f"| {row} | {dtype} | {statistics.median(steps):.2f} | {speed[row]:.0f} | {ratio} | {wall:.0f} | "
            f"{losses} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
