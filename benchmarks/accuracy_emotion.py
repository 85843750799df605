"""Task accuracy of every stage on held-out rows: the default model zero-shot, fine-tuned (adapter), merged,
and int4 ONNX, with latency and size. Runs the real pipeline (`slimtune run`) on two data sets:

- project: trained on examples/emotion/data.jsonl, evaluated on examples/emotion/heldout.jsonl (phrases
  written separately, never trained on);
- seed: ../shared/data/dataset-classification.json with a 20% held-out split that keeps identical rows on one
  side (skipped when the file is absent).

Run: .venv/bin/python benchmarks/accuracy_emotion.py [--epochs 2] [--datasets project seed] [--qat] [--no-write]
Prints a table per data set and appends them to docs/benchmarks.md. Pass outputs are cached under
.slimtune-cache-bench, so a second run only re-evaluates what changed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import ROOT, append_section, machine, versions

SEED_DATA = ROOT.parent / "shared" / "data" / "dataset-classification.json"
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


def data_config(name: str, path: Path) -> dict:
    return {
        "name": name,
        "load_dataset_config": {"data_name": "json", "data_files": str(path)},
        "pre_process_data_config": {
            "text_template": TEMPLATE,
            "max_seq_len": 128,
            "pad_to_max_len": False,
            "loss_on_answer_only": True,
        },
    }


def config_for(dataset: str, epochs: float, out: Path, qat: bool) -> dict:
    lora = {
        "type": "LoRA",
        "r": 16,
        "alpha": 32,
        "lora_dropout": 0.05,
        "train_data_config": "train",
        "training_args": {
            "learning_rate": 3e-4,
            "per_device_train_batch_size": 8,
            "num_train_epochs": epochs,
            "logging_steps": 10,
            "save_steps": 50,
            "seed": 0,
        },
    }
    passes = {
        "lora": lora,
        "merge": {"type": "MergeAdapterWeights"},
        "builder": {"type": "ModelBuilder", "precision": "int4"},
    }
    if qat:  # trained on the int4 grid, exported unmerged (see examples/emotion/config.yaml)
        lora["quantization_aware"] = "int4"
        del passes["merge"]
    if dataset == "project":
        datas = [
            data_config("train", ROOT / "examples/emotion/data.jsonl"),
            data_config("heldout", ROOT / "examples/emotion/heldout.jsonl"),
        ]
        lora["eval_data_config"] = "heldout"
        eval_data = "heldout"
    else:
        datas = [data_config("train", SEED_DATA)]
        lora["eval_dataset_size"] = 0.2
        eval_data = "train"  # the engine evaluates on the pass's held-out split of it
    metrics = [
        {
            "name": "accuracy",
            "type": "accuracy",
            "data_config": eval_data,
            "sub_types": [{"name": "accuracy_score", "priority": 1}, {"name": "likelihood_accuracy"}],
        },
        {
            "name": "latency",
            "type": "latency",
            "sub_types": [{"name": "avg"}, {"name": "p50"}, {"name": "p90"}],
        },
        {"name": "size", "type": "size"},
    ]
    return {
        "input_model": {"type": "HfModel", "model_path": "smollm2-135m-instruct"},
        "data_configs": datas,
        "passes": passes,
        "evaluators": {"quality": {"metrics": metrics}},
        "evaluator": "quality",
        "evaluate_input_model": True,
        "cache_dir": str(ROOT / ".slimtune-cache-bench"),
        "output_dir": str(out),
    }


def run(dataset: str, epochs: float, qat: bool) -> tuple[dict, float]:
    work = ROOT / "runs" / f"bench-accuracy-{dataset}{'-qat' if qat else ''}"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(config_for(dataset, epochs, work, qat), sort_keys=False))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "slimtune", "run", "--config", str(config)], check=True, cwd=ROOT)
    return json.loads((work / "run.json").read_text()), time.perf_counter() - start


def table(record: dict) -> str:
    evaluation = record["evaluation"]
    lines = [
        f"Rows: {evaluation['data']['source']}.",
        "",
        "| stage | kind | accuracy | likelihood acc. | invalid | latency p50 (ms) | decode tok/s | size (MB) | eval rows/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage in evaluation["stages"]:
        m = stage["metrics"]
        lat = m.get("latency") or {}
        lines.append(
            f"| {stage['label']} | {stage['kind']} | {_pct(m.get('accuracy'))} | {_pct(m.get('likelihood_accuracy'))} "
            f"| {m.get('invalid', '-')} | {_num(lat.get('e2e_ms', {}).get('p50'))} | {_num(lat.get('decode_tokens_per_s'))} "
            f"| {_num(m.get('size_bytes') and m['size_bytes'] / 1e6)} | {_num(m.get('rows_per_s'), 1)} |"
        )
    lora = record["passes"][0]
    lines += [
        "",
        f"LoRA: {lora['metrics'].get('steps')} steps, {lora['original_wall_s']:.0f} s, "
        f"{lora['metrics'].get('tokens_per_s', 0):.0f} tokens/s, final eval loss {lora['metrics'].get('eval_loss')}.",
    ]
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--datasets", nargs="+", default=["project", "seed"], choices=["project", "seed"])
    parser.add_argument("--qat", action="store_true", help="also run the quantization-aware variant")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    sections = []
    for dataset in args.datasets:
        if dataset == "seed" and not SEED_DATA.exists():
            print(f"skipping the seed data set: {SEED_DATA} not found")
            continue
        for qat in [False, True] if args.qat else [False]:
            record, seconds = run(dataset, args.epochs, qat)
            how = "quantization-aware LoRA -> int4 unmerged" if qat else "LoRA -> merge -> int4"
            text = f"### {dataset} data, {how} ({seconds:.0f} s for the whole run)\n\n{table(record)}"
            print(text)
            sections.append(text)
    if sections and not args.no_write:
        body = (
            f"`benchmarks/accuracy_emotion.py --epochs {args.epochs}`: the default model (SmolLM2-135M-Instruct) "
            f"through LoRA (r 16, alpha 32, answer-only loss, lr 3e-4, batch 8, seed 0) -> merge -> int4 ONNX (with `--qat`, also "
            f"the quantization-aware LoRA exported unmerged); every stage "
            f"evaluated by slimtune on the same held-out rows (greedy exact match).\n\n- machine: {machine()}\n"
            f"- versions: {versions(['slimtune', 'torch', 'transformers', 'peft', 'onnxruntime-genai'])}\n\n"
            + "\n\n".join(sections)
        )
        print(f"appended to {append_section('Task accuracy per stage (emotion)', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
