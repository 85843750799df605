"""CPU decode speed at equal accuracy: ONNX Runtime GenAI int4 variants against llama.cpp, in one run.

One merged emotion model (the default model fine-tuned on examples/emotion with a plain LoRA, merged; trained
through `slimtune run` and cached, or given with --merged) is exported with each ModelBuilder option set and each
GGUFExport quant type. Every variant then gets, in the same process and the same run:
- held-out accuracy: slimtune's evaluator on the run's held-out rows (greedy, exact label), as a run scores stages;
- speed with 1 and with all cores: a 34-token prompt, exactly 128 new greedy tokens (EOS ignored), median of
  --runs rounds; the variants take turns inside each round, so a change in the machine's load hits them all;
  prompt tokens/s (prompt tokens over time to first token), decode tokens/s (tokens after the first over the
  time after it), time to first token; the CPU share other processes used during the measurements;
- peak memory over the baseline (a child process loads the model and generates, as `metrics: [memory]` does);
- file size, and the bandwidth limit of decoding: the machine's measured memory read bandwidth over the bytes
  read per token (every weight: SmolLM2 ties its embedding to the output head, which reads it whole), a
  ceiling no runtime passes.

Run: .venv/bin/python benchmarks/cpu_decode.py [--merged DIR] [--runs 5] [--no-write]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import ROOT, append_section, machine, versions

ONNX_VARIANTS = {
    "onnx int4 (builder defaults)": {"precision": "int4"},
    "onnx int4 accuracy level 4": {"precision": "int4", "int4_accuracy_level": 4},
    "onnx int4 block 128": {"precision": "int4", "int4_block_size": 128},
    "onnx int4 block 128, level 4": {"precision": "int4", "int4_block_size": 128, "int4_accuracy_level": 4},
    "onnx int4 k_quant_mixed": {"precision": "int4", "int4_algo_config": "k_quant_mixed"},
    "onnx int8": {"precision": "int8"},
}
GGUF_VARIANTS = {f"llama.cpp {q}": q for q in ("q4_0", "q4_k_m", "q8_0")}
PROMPT_TOKENS = 34
NEW_TOKENS = 128
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"


def merged_model(cache: Path) -> tuple[Path, list[dict]]:
    """(merged folder, held-out rows): the example's data, a plain LoRA (the example's recipe without
    quantization-aware training), merged; slimtune's cache makes a second call instant."""
    import yaml

    from slimtune.cli.main import main

    work = cache / "cpu-decode-run"
    work.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "examples/emotion/config.yaml").read_text())
    config["data_configs"][0]["load_dataset_config"]["data_files"] = str(ROOT / "examples/emotion/data.jsonl")
    del config["passes"]["lora"]["quantization_aware"]
    config["passes"] = {"lora": config["passes"]["lora"], "merge": {"type": "MergeAdapterWeights"}}
    config.pop("evaluators"), config.pop("evaluator")
    config.update(cache_dir=str(cache), output_dir=str(work / "out"), evaluate_input_model=False)
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if main(["run", "--config", str(work / "config.yaml")]) != 0:
        raise SystemExit("the training run failed")
    record = json.loads((work / "out" / "run.json").read_text())
    merged = Path(next(s["path"] for s in record["stages"] if s["name"] == "merge"))
    rows = [
        json.loads(x) for x in (ROOT / "examples/emotion/data.jsonl").read_text().splitlines() if x.strip()
    ]
    held = [rows[i] for i in record["evaluation"]["data"]["indices"]]
    return merged, held


def export(merged: Path, name: str, out: Path) -> tuple[Path, str, float]:
    from slimtune.models.ref import ModelMeta, ModelRef
    from slimtune.passes.context import PassContext

    out.mkdir(parents=True)
    ctx = PassContext(
        input=ModelRef(str(merged), "hf"),
        meta=ModelMeta.load(merged) or ModelMeta(),
        output_dir=out,
        work_dir=out.with_suffix(".work"),
        log=lambda _: None,
    )
    start = time.perf_counter()
    if name in ONNX_VARIANTS:
        from slimtune.passes.model_builder import ModelBuilderParams
        from slimtune.passes.model_builder.run import run

        ref = run(ctx, ModelBuilderParams(**ONNX_VARIANTS[name]))
    else:
        from slimtune.passes.gguf_export import GGUFExportParams
        from slimtune.passes.gguf_export.run import run

        ref = run(ctx, GGUFExportParams(quant_type=GGUF_VARIANTS[name]))
    return Path(ref.path), ref.kind, time.perf_counter() - start


def weights_bytes(path: Path, kind: str) -> int:
    """Model weight bytes on disk (the model file(s), not the tokenizer)."""
    suffixes = (".gguf",) if kind == "gguf" else (".onnx", ".data") if kind == "onnx" else (".safetensors",)
    return sum(f.stat().st_size for f in path.iterdir() if f.name.endswith(suffixes))


def read_bandwidth() -> float:
    """Bytes per second the machine reads from memory (numpy sum over 512 MiB, best of 5)."""
    import numpy as np

    data = np.ones(512 * 2**20 // 8)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        best = max(best, data.nbytes / (time.perf_counter() - start))
    return best


def accuracy(ref, rows: list[dict]) -> float:
    from slimtune.evaluate.evaluator import evaluate_model

    result = evaluate_model(
        ref,
        rows,
        TEMPLATE,
        labels=["fear", "joy", "sadness", "surprise"],
        metrics=["accuracy"],
        progress=False,
    )
    return result["accuracy"]


def peak_memory(ref) -> int:
    from slimtune.evaluate.evaluator import evaluate_model

    rows = [{"phrase": "I passed the exam!", "tone": "joy"}]
    return evaluate_model(ref, rows, TEMPLATE, labels=None, metrics=["memory"], progress=False)[
        "peak_memory_bytes"
    ]


def speeds(refs: dict, prompt_text: str, threads: int, runs: int) -> tuple[dict, float]:
    """{name: {prompt_tps, decode_tps, ttft_ms}} (medians) and the CPU share others used meanwhile."""
    from slimtune.evaluate.conditions import measuring_alone
    from slimtune.models.runtime import open_model

    models = {name: open_model(ref, threads=threads) for name, ref in refs.items()}
    prompts = {}
    for name, model in models.items():
        ids = model.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        prompts[name] = ([model.tokenizer.bos_token_id] + ids)[:PROMPT_TOKENS]
        model.timed_generate(prompts[name], 8)  # warm-up
    samples: dict[str, list] = {name: [] for name in models}
    with measuring_alone() as conditions:
        for _ in range(runs):
            for name, model in models.items():
                samples[name].append(model.timed_generate(prompts[name], NEW_TOKENS))
    out = {}
    for name, timings in samples.items():
        out[name] = {
            "prompt_tps": statistics.median(t.prompt_tokens / t.ttft_s for t in timings),
            "decode_tps": statistics.median((NEW_TOKENS - 1) / (t.total_s - t.ttft_s) for t in timings),
            "ttft_ms": statistics.median(t.ttft_s * 1000 for t in timings),
        }
    del models
    gc.collect()
    return out, conditions["other_cpu_share"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merged", type=Path, help="a merged emotion model folder (default: train one)")
    parser.add_argument(
        "--heldout-from",
        type=Path,
        help="with --merged: a run.json whose held-out indices pick the rows of examples/emotion/data.jsonl "
        "(default: examples/emotion/heldout.jsonl)",
    )
    parser.add_argument("--cache", type=Path, default=ROOT / ".slimtune-cache")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from slimtune.models.ref import ModelRef

    if args.merged:
        merged = args.merged
        if args.heldout_from:
            data = ROOT / "examples/emotion/data.jsonl"
            every = [json.loads(x) for x in data.read_text().splitlines() if x.strip()]
            indices = json.loads(args.heldout_from.read_text())["evaluation"]["data"]["indices"]
            rows = [every[i] for i in indices]
        else:
            held = ROOT / "examples/emotion/heldout.jsonl"
            rows = [json.loads(x) for x in held.read_text().splitlines() if x.strip()]
    else:
        merged, rows = merged_model(args.cache)
    load_before = os.getloadavg()
    bandwidth = read_bandwidth()
    names = [n for n in [*ONNX_VARIANTS, *GGUF_VARIANTS] if not args.only or n in args.only]
    table: dict[str, dict] = {"merged (transformers fp32)": {"kind": "hf"}}
    refs = {"merged (transformers fp32)": ModelRef(str(merged), "hf")}
    with tempfile.TemporaryDirectory() as tmp:
        for index, name in enumerate(names):
            path, kind, seconds = export(merged, name, Path(tmp) / f"v{index}")
            refs[name] = ModelRef(str(path), kind)
            table[name] = {"kind": kind, "export_s": seconds}
            print(f"exported {name} in {seconds:.1f} s", flush=True)
        for name, ref in refs.items():
            row = table[name]
            row["size"] = weights_bytes(Path(ref.path), ref.kind)
            row["accuracy"] = accuracy(ref, rows)
            row["peak_memory"] = peak_memory(ref)
            print(f"{name}: accuracy {row['accuracy']:.1%}", flush=True)
        prompt = rows[0]["phrase"] + " " + rows[1]["phrase"] + " " + rows[2]["phrase"]
        shares = {}
        timed = {
            name: ref for name, ref in refs.items() if ref.kind != "hf"
        }  # fp32 transformers: accuracy only
        for threads in (os.cpu_count() or 1, 1):
            results, shares[threads] = speeds(timed, prompt, threads, args.runs)
            for name, speed in results.items():
                table[name][threads] = speed
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    lines = [
        f"| variant | accuracy | size (MiB) | peak mem (MiB) | decode tok/s {cores}T | prompt tok/s {cores}T "
        f"| TTFT ms {cores}T | decode tok/s 1T | TTFT ms 1T | bandwidth limit tok/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in table.items():
        per_token = row["size"]  # every weight is read once per token (the tied head reads the embedding)
        head = f"| {name} | {row['accuracy']:.1%} | {row['size'] / 2**20:.0f} | {row['peak_memory'] / 2**20:.0f} "
        if cores not in row:
            lines.append(head + f"| - | - | - | - | - | {bandwidth / per_token:.0f} |")
            continue
        many, one = row[cores], row[1]
        lines.append(
            head + f"| {many['decode_tps']:.1f} | {many['prompt_tps']:.0f} | {many['ttft_ms']:.1f} "
            f"| {one['decode_tps']:.1f} | {one['ttft_ms']:.1f} | {bandwidth / per_token:.0f} |"
        )
    text = "\n".join(lines)
    print(text)
    base = table.get("llama.cpp q4_k_m")
    ratios = []
    if base:
        for name, row in table.items():
            if name.startswith("onnx"):
                ratios.append(
                    f"- {name}: {row[cores]['decode_tps'] / base[cores]['decode_tps']:.2f}x llama.cpp q4_k_m "
                    f"decode ({cores} threads), {row[1]['decode_tps'] / base[1]['decode_tps']:.2f}x (1 thread); "
                    f"accuracy {row['accuracy'] - base['accuracy']:+.1%} vs q4_k_m, "
                    f"{row['accuracy'] - table['merged (transformers fp32)']['accuracy']:+.1%} vs merged"
                )
    notes = (
        f"- machine: {machine()}; memory read bandwidth {bandwidth / 1e9:.1f} GB/s (numpy sum, best of 5)\n"
        f"- versions: {versions(['onnxruntime-genai', 'onnxruntime', 'llama-cpp-python', 'torch', 'transformers'])}\n"
        f"- load: 1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; other processes "
        f"used {shares[cores]:.0%} of the CPU during the {cores}-thread speed runs, {shares[1]:.0%} during the "
        "1-thread runs (the machine is shared with other work: absolute numbers are low, ratios are fairer "
        "since variants take turns within each round)\n"
        f"- held-out rows: {len(rows)}; prompt {PROMPT_TOKENS} tokens, {NEW_TOKENS} new tokens, median of "
        f"{args.runs} rounds\n"
        "- bandwidth limit: read bandwidth over the weight bytes on disk (an upper bound on tokens/s; the "
        "embedding table counts in full because the tied output head reads it every token)\n"
    )
    body = (
        f"`benchmarks/cpu_decode.py --runs {args.runs}`: {__doc__.splitlines()[0]}\n\n{notes}\n{text}\n\n"
        + "\n".join(ratios)
    )
    print("\n".join(ratios))
    if not args.no_write:
        append_section("CPU decode: ONNX Runtime GenAI int4 against llama.cpp", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
