"""CPU decode speed at equal accuracy: ONNX Runtime GenAI int4 variants against llama.cpp, in one run.

The example's merged emotion model (the default model fine-tuned with examples/emotion's recipe, a
quantization-aware LoRA, merged into the float base; trained through `slimtune run` and cached, or given with
--merged) is exported with each ModelBuilder option set and each GGUFExport quant type; the session-option rows
reuse a built model with other `session_options` in its genai_config.json. Every variant then gets, in the same
process and the same run:
- held-out accuracy: slimtune's evaluator on the run's held-out rows (greedy, exact label), once per model file;
- speed with every core and with 1: a 34-token prompt, exactly 128 new greedy tokens (EOS ignored), median of
  --runs rounds; the variants take turns inside each round, so a change in the machine's load hits them all;
  prompt tokens/s (prompt tokens over time to first token), decode tokens/s (tokens after the first over the
  time after it), time to first token; the CPU share other processes used during the measurements;
- peak memory over the baseline (a child process loads the model and generates, as `metrics: [memory]` does);
- file size, bytes read per decoded token and the fraction of the bandwidth ceiling reached (decode_limits.py
  says how both are computed); the ceiling itself is a row;
- a profile of the default export's decode (ONNX Runtime's profiler): which operators take the time.

Run: .venv/bin/python benchmarks/cpu_decode.py            (the full run; appends a section to docs/benchmarks.md)
     .venv/bin/python benchmarks/cpu_decode.py --quick    (a smoke run: 4 variants, 1 round, 32 tokens; no write)
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
from typing import Any

import decode_limits as limits
from common import ROOT, append_section, machine, versions

DEFAULT = "onnx int4, slimtune default (builder defaults)"
NO_SPIN = "onnx int4 default, threads do not spin"
# name -> ModelBuilder parameters (each a model file)
ONNX_BUILDS = {
    DEFAULT: {"precision": "int4"},
    "onnx int4 block 64": {"precision": "int4", "int4_block_size": 64},
    "onnx int4 block 128": {"precision": "int4", "int4_block_size": 128},
    "onnx int4 accuracy level 1 (fp32 compute)": {"precision": "int4", "int4_accuracy_level": 1},
    "onnx int4 k_quant": {"precision": "int4", "int4_algo_config": "k_quant"},
    "onnx int4 k_quant_mixed (int8 head and sensitive layers)": {
        "precision": "int4",
        "int4_algo_config": "k_quant_mixed",
    },
    "onnx int4 gate/up fused": {"precision": "int4", "extra_options": {"fuse_mlp_gate_up": True}},
}
# name -> (built model, genai_config.json session_options added): the other options that change CPU decode
SESSION_VARIANTS = {
    NO_SPIN: (DEFAULT, {"session.intra_op.allow_spinning": "0"}),
    "onnx int4 default, graph optimisation basic": (
        DEFAULT,
        {"graph_optimization_level": "ORT_ENABLE_BASIC"},
    ),
    "onnx int4 default, no memory arena": (
        DEFAULT,
        {"enable_cpu_mem_arena": False, "enable_mem_pattern": False},
    ),
}
# the example's own export: the quantization-aware adapter kept apart (LoRA products beside each int4 one)
EXAMPLE = "onnx int4, base + adapter unmerged (the example's export)"
GGUF_BUILDS = {f"llama.cpp {q}": q for q in ("q4_0", "q4_k_m", "q8_0")}
QUICK = [DEFAULT, NO_SPIN, "onnx int4 block 128", "llama.cpp q4_k_m"]
MERGED = "merged model (transformers fp32)"
BASELINE = "llama.cpp q4_k_m"
PROMPT_TOKENS = 34
TEMPLATE = "### Text: {phrase}\n### The tone is:\n{tone}"
LABELS = ["fear", "joy", "sadness", "surprise"]


def merged_model(cache: Path) -> tuple[Path, list[dict], Any]:
    """(merged folder, held-out rows, the adapter as a ModelRef): the example's config (data,
    quantization-aware LoRA) with a MergeAdapterWeights pass in place of the ModelBuilder; slimtune's cache
    makes a second call instant."""
    import yaml

    from slimtune.cli.main import main

    work = ROOT / "runs" / "cpu-decode"  # outside the cache (slimtune refuses an output_dir inside it)
    work.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((ROOT / "examples/emotion/config.yaml").read_text())
    config["data_configs"][0]["load_dataset_config"]["data_files"] = str(ROOT / "examples/emotion/data.jsonl")
    config["passes"] = {"lora": config["passes"]["lora"], "merge": {"type": "MergeAdapterWeights"}}
    # size only: this file measures accuracy and speed itself (the run still records its held-out rows)
    config["evaluators"] = {"quality": {"metrics": [{"name": "size", "type": "size"}]}}
    config.update(cache_dir=str(cache), output_dir=str(work / "out"), evaluate_input_model=False)
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if main(["run", "--config", str(work / "config.yaml")]) != 0:
        raise SystemExit("the training run failed")
    record = json.loads((work / "out" / "run.json").read_text())
    from slimtune.models.ref import ModelRef

    stages = {s["name"]: s for s in record["stages"]}
    adapter = ModelRef(stages["lora"]["path"], "adapter", base_path=stages["lora"]["base_path"])
    return Path(stages["merge"]["path"]), heldout_rows(record["evaluation"]["data"]["indices"]), adapter


def heldout_rows(indices: list[int]) -> list[dict]:
    data = ROOT / "examples/emotion/data.jsonl"
    every = [json.loads(x) for x in data.read_text().splitlines() if x.strip()]
    return [every[i] for i in indices]


def export(source, name: str, out: Path) -> tuple[Path, str, float]:
    """`source`: the merged folder, or for EXAMPLE the adapter's ModelRef."""
    from slimtune.models.ref import ModelMeta, ModelRef
    from slimtune.passes.context import PassContext

    out.mkdir(parents=True)
    ref = source if isinstance(source, ModelRef) else ModelRef(str(source), "hf")
    ctx = PassContext(
        input=ref,
        meta=ModelMeta.load(ref.path) or ModelMeta(),
        output_dir=out,
        work_dir=out.with_suffix(".work"),
        log=lambda _: None,
    )
    start = time.perf_counter()
    if name in ONNX_BUILDS or name == EXAMPLE:
        from slimtune.passes.model_builder import ModelBuilderParams
        from slimtune.passes.model_builder.run import run

        ref = run(ctx, ModelBuilderParams(**ONNX_BUILDS.get(name, {"precision": "int4"})))
    else:
        from slimtune.passes.gguf_export import GGUFExportParams
        from slimtune.passes.gguf_export.run import run

        ref = run(ctx, GGUFExportParams(quant_type=GGUF_BUILDS[name]))
    return Path(ref.path), ref.kind, time.perf_counter() - start


def with_session_options(built: Path, options: dict, out: Path) -> Path:
    """A folder that links to `built`'s files, with `options` added to its genai_config.json session_options
    (exactly what a user, or the ModelBuilder pass, would write there)."""
    out.mkdir(parents=True)
    for item in built.iterdir():
        if item.name != "genai_config.json":
            (out / item.name).symlink_to(item)
    config = json.loads((built / "genai_config.json").read_text())
    config["model"]["decoder"].setdefault("session_options", {}).update(options)
    (out / "genai_config.json").write_text(json.dumps(config, indent=4))
    return out


def weights_bytes(path: Path, kind: str) -> int:
    """Model weight bytes on disk (the model file(s), not the tokenizer)."""
    suffixes = (".gguf",) if kind == "gguf" else (".onnx", ".data") if kind == "onnx" else (".safetensors",)
    return sum(f.stat().st_size for f in path.iterdir() if f.name.endswith(suffixes))


def read_per_token(path: Path, kind: str, config: dict, new_tokens: int) -> tuple[int, str]:
    """(bytes read per decoded token, the quantization found in the file)."""
    if kind == "onnx":
        weights = limits.onnx_weights(path / "model.onnx")
    else:
        weights = limits.gguf_weights(next(path.glob("*.gguf")))
    kv = limits.kv_bytes_per_position(config, weights["kv_element_bytes"])
    positions = limits.mean_context(PROMPT_TOKENS, new_tokens)
    return int(weights["bytes"] + kv * positions), weights["quant"]


def accuracy(ref, rows: list[dict]) -> float:
    from slimtune.evaluate.evaluator import evaluate_model

    result = evaluate_model(ref, rows, TEMPLATE, labels=LABELS, metrics=["accuracy"], progress=False)
    return result["accuracy"]


def peak_memory(ref) -> int:
    from slimtune.evaluate.evaluator import evaluate_model

    rows = [{"phrase": "I passed the exam!", "tone": "joy"}]
    return evaluate_model(ref, rows, TEMPLATE, labels=None, metrics=["memory"], progress=False)[
        "peak_memory_bytes"
    ]


def prompt_ids(model, text: str) -> list[int]:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([model.tokenizer.bos_token_id] + ids)[:PROMPT_TOKENS]


def speeds(refs: dict, text: str, threads: int, runs: int, new_tokens: int) -> tuple[dict, float]:
    """{name: {prompt_tps, decode_tps, ttft_ms}} (medians) and the CPU share others used meanwhile."""
    from slimtune.evaluate.conditions import measuring_alone
    from slimtune.models.runtime import open_model

    models = {name: open_model(ref, threads=threads) for name, ref in refs.items()}
    prompts = {}
    for name, model in models.items():
        prompts[name] = prompt_ids(model, text)
        model.timed_generate(prompts[name], 8)  # warm-up
    samples: dict[str, list] = {name: [] for name in models}
    with measuring_alone() as conditions:
        for _ in range(runs):
            for name, model in models.items():
                samples[name].append(model.timed_generate(prompts[name], new_tokens))
    out = {}
    for name, timings in samples.items():
        out[name] = {
            "prompt_tps": statistics.median(t.prompt_tokens / t.ttft_s for t in timings),
            "decode_tps": statistics.median((new_tokens - 1) / (t.total_s - t.ttft_s) for t in timings),
            "ttft_ms": statistics.median(t.ttft_s * 1000 for t in timings),
        }
    del models
    gc.collect()
    return out, conditions["other_cpu_share"]


def profile_decode(built: Path, text: str, threads: int, new_tokens: int, work: Path) -> dict:
    """ONNX Runtime's profile of one generation of the default export, summarised by operator."""
    from slimtune.models.ref import ModelRef
    from slimtune.models.runtime import open_model

    prefix = work / "ort_profile"
    folder = with_session_options(built, {"enable_profiling": str(prefix)}, work / "profiled")
    model = open_model(ModelRef(str(folder), "onnx"), threads=threads)
    ids = prompt_ids(model, text)
    model.timed_generate(ids, new_tokens)  # warm-up: the summary reads the last generation's runs
    timing = model.timed_generate(ids, new_tokens)
    del model  # the profile file is complete once the session ends
    gc.collect()
    profile = next(work.glob("ort_profile*.json"))
    return limits.profile_summary(profile, timing.total_s - timing.ttft_s, new_tokens - 1)


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
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 4 variants, 1 round, 32 tokens, 24 rows"
    )
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.new_tokens, args.no_write = 1, 32, True
        args.only = args.only or QUICK
    started = time.perf_counter()
    from slimtune.models.ref import ModelRef

    adapter = None  # known when this run trains it
    if args.merged:
        merged = args.merged
        if args.heldout_from:
            rows = heldout_rows(json.loads(args.heldout_from.read_text())["evaluation"]["data"]["indices"])
        else:
            held = ROOT / "examples/emotion/heldout.jsonl"
            rows = [json.loads(x) for x in held.read_text().splitlines() if x.strip()]
    else:
        merged, rows, adapter = merged_model(args.cache)
    if args.quick:
        rows = rows[:24]
    config = json.loads((merged / "config.json").read_text())
    load_before = os.getloadavg()
    wanted = [*ONNX_BUILDS, *SESSION_VARIANTS, *([EXAMPLE] if adapter else []), *GGUF_BUILDS]
    names = [n for n in wanted if not args.only or n in args.only]
    builds = [n for n in [*ONNX_BUILDS, EXAMPLE, *GGUF_BUILDS] if n in names]
    builds += [
        SESSION_VARIANTS[n][0]
        for n in names
        if n in SESSION_VARIANTS and SESSION_VARIANTS[n][0] not in builds
    ]
    table: dict[str, dict] = {MERGED: {"kind": "hf"}}
    refs = {MERGED: ModelRef(str(merged), "hf")}
    cores = os.cpu_count() or 1
    thread_counts = sorted({cores, 1}, reverse=True)
    with tempfile.TemporaryDirectory() as tmp:
        built: dict[str, Path] = {}
        for index, name in enumerate(builds):
            path, kind, seconds = export(
                adapter if name == EXAMPLE else merged, name, Path(tmp) / f"v{index}"
            )
            built[name] = path
            refs[name] = ModelRef(str(path), kind)
            table[name] = {"kind": kind, "export_s": seconds}
            print(f"exported {name} in {seconds:.1f} s", flush=True)
        for index, name in enumerate(n for n in names if n in SESSION_VARIANTS):
            base, options = SESSION_VARIANTS[name]
            folder = with_session_options(built[base], options, Path(tmp) / f"s{index}")
            refs[name] = ModelRef(str(folder), "onnx")
            table[name] = {"kind": "onnx", "same_model_as": base}
        refs = {n: refs[n] for n in [MERGED, *names]}  # table order: the list above
        table = {n: table[n] for n in refs}
        for name, ref in refs.items():
            row = table[name]
            row["size"] = weights_bytes(Path(built.get(name, ref.path)), ref.kind)
            if ref.kind != "hf":
                row["per_token"], row["quant"] = read_per_token(
                    Path(ref.path), ref.kind, config, args.new_tokens
                )
            same = row.get("same_model_as")
            row["accuracy"] = table[same]["accuracy"] if same else accuracy(ref, rows)
            row["peak_memory"] = peak_memory(ref)
            print(f"{name}: accuracy {row['accuracy']:.1%}", flush=True)
        text = " ".join(r["phrase"] for r in rows[:3])
        shares = {}
        timed = {
            name: ref for name, ref in refs.items() if ref.kind != "hf"
        }  # fp32 transformers: accuracy only
        repeats = 3 if args.quick else 7
        bandwidth = {t: limits.read_bandwidth(t, repeats=repeats) for t in thread_counts}
        for threads in thread_counts:
            results, shares[threads] = speeds(timed, text, threads, args.runs, args.new_tokens)
            for name, speed in results.items():
                table[name][threads] = speed
        for t in thread_counts:  # again after the speed rounds; the better of the two is the machine's
            bandwidth[t] = max(bandwidth[t], limits.read_bandwidth(t, repeats=repeats))
        profile = None
        if DEFAULT in built:
            profile = profile_decode(built[DEFAULT], text, cores, args.new_tokens, Path(tmp) / "profile")
    load_after = os.getloadavg()
    for name in (DEFAULT, BASELINE):
        if name in table:
            table[f"bandwidth ceiling of {name}"] = {"limit_of": name, "per_token": table[name]["per_token"]}
    lines = limits.table(table, bandwidth, thread_counts)
    body = report(
        args, table, lines, bandwidth, thread_counts, shares, (load_before, load_after), profile, rows
    )
    body += f"\n\nWhole run: {time.perf_counter() - started:.0f} s.\n"
    print(body)
    if args.json:
        args.json.write_text(
            json.dumps({"table": table, "bandwidth": bandwidth, "profile": profile}, indent=1)
        )
    if not args.no_write:
        append_section(
            "CPU decode: ONNX Runtime GenAI int4 against llama.cpp, with the bandwidth ceiling", body
        )
    return 0


def report(args, table, lines, bandwidth, thread_counts, shares, loads, profile, rows) -> str:
    cores = thread_counts[0]
    merged_accuracy = table[MERGED]["accuracy"]
    notes = [
        f"- machine: {machine()}; 1-minute load average {loads[0][0]:.2f} at the start, {loads[1][0]:.2f} at the "
        "end; other processes used "
        + ", ".join(f"{shares[t]:.0%} of the CPU during the {t}-thread rounds" for t in thread_counts)
        + " (variants take turns within each round, so ratios are fairer than absolute numbers on a shared "
        "machine)",
        f"- versions: {versions(['onnxruntime-genai', 'onnxruntime', 'llama-cpp-python', 'torch', 'transformers'])}",
        f"- held-out rows: {len(rows)}; prompt {PROMPT_TOKENS} tokens, {args.new_tokens} new tokens, median of "
        f"{args.runs} rounds; accuracy once per model file (session-option rows share their model's)",
        f"- memory read bandwidth (torch float32 sum over 1 GiB, best of {3 if args.quick else 7}, before and after the speed rounds): "
        + ", ".join(
            f"{bandwidth[t] / 1e9:.1f} GB/s with {t} thread{'s' if t > 1 else ''}" for t in thread_counts
        ),
        "- read/token: weight bytes read per decoded token (row lookups count one row; a tied output head reads "
        "the embedding in full) + KV cache per position x mean context (prompt + new tokens / 2); ceiling = "
        'bandwidth / read per token (benchmarks/decode_limits.py); "of ceiling" = decode tok/s over the row\'s '
        "own ceiling",
        "- quantization found in the files: "
        + "; ".join(
            f"{n}: {r['quant']}" for n, r in table.items() if r.get("quant") and "same_model_as" not in r
        ),
    ]
    verdict = []
    base = table.get(BASELINE)
    for t in thread_counts:
        best = limits.fastest_within(table, merged_accuracy, 1.0, t)
        if best:
            verdict.append(
                f"- fastest decode within 1 point of the merged model's accuracy ({merged_accuracy:.1%}), "
                f"{t} thread{'s' if t > 1 else ''}: {best} ({table[best][t]['decode_tps']:.1f} tok/s)"
            )
    if base and DEFAULT in table and cores in base:
        for name, row in table.items():
            if name.startswith("onnx") and cores in row:
                verdict.append(
                    f"- {name}: {row[cores]['decode_tps'] / base[cores]['decode_tps']:.2f}x {BASELINE} decode "
                    f"({cores} threads), {row[1]['decode_tps'] / base[1]['decode_tps']:.2f}x (1 thread); "
                    f"accuracy {100 * (row['accuracy'] - base['accuracy']):+.1f} points vs {BASELINE}, "
                    f"{100 * (row['accuracy'] - merged_accuracy):+.1f} vs merged"
                )
    prof = []
    if profile:
        prof = [
            f"Where the default export's decode time goes (ONNX Runtime profiler, {cores} threads, one "
            f"{args.new_tokens}-token generation; profiling slows it): {profile['per_token_ms']:.2f} ms per token, "
            f"of which ONNX Runtime's Run {profile['run_ms']:.2f} ms (median {profile['median_run_ms']:.2f}); "
            f"{profile['outside_share']:.0%} outside Run (onnxruntime-genai's search and KV handling, Python); "
            f"kernels {profile['kernels_share']:.0%} of Run, the rest is the executor between them.",
            "",
            "| operator | share of Run | ms per token |",
            "| --- | ---: | ---: |",
            *(f"| {op} | {share:.1%} | {ms:.3f} |" for op, share, ms in profile["ops"]),
        ]
    return "\n".join(
        [
            f"`benchmarks/cpu_decode.py{' --quick' if args.quick else ''}`: {__doc__.splitlines()[0]}",
            "",
            *notes,
            "",
            *lines,
            "",
            *verdict,
            "",
            *prof,
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
