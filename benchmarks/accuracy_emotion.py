"""Task accuracy of every stage on held-out rows: the default model zero-shot, fine-tuned (adapter), merged,
and int4 ONNX, with latency and size. Runs the real pipeline (`slimtune run`) on two data sets:

- project: trained on examples/emotion/data.jsonl, evaluated on examples/emotion/heldout.jsonl (phrases
  written separately, never trained on);
- seed: ../shared/data/dataset-classification.json with a 20% held-out split that keeps identical rows on one
  side (skipped when the file is absent).

Run: .venv/bin/python benchmarks/accuracy_emotion.py [--epochs 2] [--datasets project seed]
        [--routes plain qat] [--gpu] [--model PATH] [--no-write | --markdown FILE]

Routes: plain (LoRA -> merge -> int4), qat (quantization-aware LoRA -> int4 unmerged), and with --gpu (training
on the GPU, the int4 model built for and run on the CPU): qlora (QLoRA nf4 + double quantization -> merge of
the dequantized base -> int4), and fp8 (LoRA with the frozen base in fp8 -> merge -> int4); on the GPU the
plain route sets fp8_base off so it is the bf16 reference. fp8 without --gpu runs the same fp8 arithmetic on the
CPU (slimtune.passes.lora.fp8's stand-in for _scaled_mm: e4m3 rounding with per-row scales, fp32 products, bf16
out), to see what the fp8 base does to task accuracy where no fp8 GPU is at hand.
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
from common import ROOT, append_section, machine, now, versions

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


ROUTES = {
    "plain": "LoRA -> merge -> int4",
    "qat": "quantization-aware LoRA -> int4 unmerged",
    "qlora": "QLoRA (nf4, double quant) -> merge (dequantized base) -> int4",
    "fp8": "LoRA, fp8 base -> merge -> int4",
}
GPU_ONLY = ("qlora",)
# `slimtune run` with the fp8 base allowed on the CPU (the pass refuses it there: it is slow and only emulated)
EMULATED_FP8 = (
    "import sys; import slimtune.passes.lora.fp8 as fp8; fp8.fp8_available = lambda device: True; "
    "from slimtune.cli.main import main; raise SystemExit(main(sys.argv[1:]))"
)


def config_for(dataset: str, epochs: float, out: Path, route: str, gpu: bool, model: str) -> dict:
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
    if route == "qat":  # trained on the int4 grid, exported unmerged (see examples/emotion/config.yaml)
        lora["quantization_aware"] = "int4"
        del passes["merge"]
    elif route == "qlora":
        lora.update(type="QLoRA", quant_type="nf4", double_quant=True, compute_dtype="bfloat16")
    elif gpu or route == "fp8":
        lora["fp8_base"] = route == "fp8"
    if gpu:
        lora["compile_layers"] = False  # a 135M model trains faster eagerly than compiled
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
    systems = {}
    if gpu:  # train (and evaluate the torch stages) on the GPU; the int4 model is built for the CPU
        systems = {
            "systems": {
                "gpu": {"type": "LocalSystem", "accelerators": [{"device": "gpu"}]},
                "cpu": {"type": "LocalSystem", "accelerators": [{"device": "cpu"}]},
            },
            "host": "gpu",
            "target": "cpu",
        }
    return {
        "input_model": {"type": "HfModel", "model_path": model},
        **systems,
        "data_configs": datas,
        "passes": passes,
        "evaluators": {"quality": {"metrics": metrics}},
        "evaluator": "quality",
        "evaluate_input_model": True,
        "cache_dir": str(ROOT / ".slimtune-cache-bench"),
        "output_dir": str(out),
    }


def run(dataset: str, epochs: float, route: str, gpu: bool, model: str) -> tuple[dict, float]:
    work = (
        ROOT
        / "runs"
        / f"bench-accuracy-{dataset}{'' if route == 'plain' else '-' + route}{'-gpu' if gpu else ''}"
    )
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(config_for(dataset, epochs, work, route, gpu, model), sort_keys=False))
    start = time.perf_counter()
    command = ["-c", EMULATED_FP8] if route == "fp8" and not gpu else ["-m", "slimtune"]
    subprocess.run([sys.executable, *command, "run", "--config", str(config)], check=True, cwd=ROOT)
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
        f"{lora['type']}: {lora['metrics'].get('steps')} steps on {lora['metrics'].get('device')}, "
        f"{lora['original_wall_s']:.0f} s, {lora['metrics'].get('tokens_per_s', 0):.0f} tokens/s, final eval loss "
        f"{lora['metrics'].get('eval_loss')}, speed settings {lora['metrics'].get('speed')}.",
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
    parser.add_argument("--routes", nargs="+", default=["plain"], choices=list(ROUTES))
    parser.add_argument("--qat", action="store_true", help="same as adding qat to --routes")
    parser.add_argument("--gpu", action="store_true", help="train on the GPU (needed by qlora and fp8)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model name, folder or .gguf file")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--markdown", type=Path, help="write the section here instead of docs/benchmarks.md")
    args = parser.parse_args()
    routes = list(dict.fromkeys(args.routes + (["qat"] if args.qat else [])))
    if not args.gpu and set(routes) & set(GPU_ONLY):
        parser.error(f"route {', '.join(GPU_ONLY)} needs --gpu")
    sections = []
    for dataset in args.datasets:
        if dataset == "seed" and not SEED_DATA.exists():
            print(f"skipping the seed data set: {SEED_DATA} not found")
            continue
        for route in routes:
            record, seconds = run(dataset, args.epochs, route, args.gpu, args.model)
            where = "" if args.gpu or route != "fp8" else " (fp8 products emulated on the CPU)"
            text = f"### {dataset} data, {ROUTES[route]}{where} ({seconds:.0f} s for the whole run)\n\n{table(record)}"
            print(text)
            sections.append(text)
    if sections and not args.no_write:
        gpu = ""
        if args.gpu:
            import torch

            gpu = f"- GPU: {torch.cuda.get_device_name(0)} (training; evaluation runs on the CPU: fp32 PyTorch and ONNX Runtime)\n"
        body = (
            f"`benchmarks/accuracy_emotion.py --epochs {args.epochs} --routes {' '.join(routes)}"
            f"{' --gpu' if args.gpu else ''}`: the model ({args.model}) through LoRA (r 16, alpha 32, answer-only "
            f"loss, lr 3e-4, batch 8, seed 0) by each route, to int4 ONNX; every stage evaluated by slimtune on "
            f"the same held-out rows (greedy exact match).\n\n- machine: {machine()}\n{gpu}"
            f"- versions: {versions(['slimtune', 'torch', 'transformers', 'peft', 'bitsandbytes', 'onnxruntime-genai'])}\n\n"
            + "\n\n".join(sections)
        )
        if args.markdown:
            args.markdown.write_text(f"## Task accuracy per stage (emotion) ({now()})\n\n{body}\n")
        else:
            print(f"appended to {append_section('Task accuracy per stage (emotion)', body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
