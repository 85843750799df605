"""Which ModelBuilder int4 settings keep a fine-tuned model's task accuracy.

Builds one merged model with several ModelBuilder option sets and scores each ONNX model on the
example's held-out phrases (examples/emotion/heldout.jsonl) with the exact prompt ids training used.

Run: .venv/bin/python benchmarks/int4_options.py MERGED_DIR [--no-write]
(MERGED_DIR: the MergeAdapterWeights output of a run on the emotion data, e.g. from runs/*/run.json)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import ROOT, append_section, machine, versions

OPTION_SETS = [
    {"precision": "fp32"},
    {"precision": "int8"},
    {"precision": "int4"},
    {"precision": "int4", "int4_accuracy_level": 1},
    {"precision": "int4", "int4_algo_config": "rtn_last"},
    {"precision": "int4", "int4_algo_config": "k_quant"},
    {"precision": "int4", "int4_algo_config": "k_quant_mixed"},
    {"precision": "int4", "int4_algo_config": "k_quant_mixed", "int4_block_size": 16},
    {"precision": "int4", "extra_options": {"nodes_to_exclude": "/lm_head/MatMul"}},
]


def score(folder: Path, tokenizer, rows: list[dict]) -> float:
    from slimtune.data.template import Template
    from slimtune.evaluate.accuracy import classify
    from slimtune.models.ref import ModelRef
    from slimtune.models.runtime import open_model

    backend = open_model(ModelRef(str(folder), "onnx"))
    template = Template(_pre(), tokenizer)
    from slimtune.data.tokenize import encode_prompt

    outputs = [
        tokenizer.decode(
            backend.generate_ids(encode_prompt(tokenizer, template, r), 4), skip_special_tokens=True
        )
        for r in rows
    ]
    predicted = classify(outputs, ["fear", "joy", "sadness", "surprise"])
    return sum(p == r["tone"] for p, r in zip(predicted, rows, strict=True)) / len(rows)


def _pre():
    from slimtune.config.schema import PreProcessDataConfig

    return PreProcessDataConfig(text_template="### Text: {phrase}\n### The tone is:\n{tone}")


def build(ref, options: dict, out: Path) -> float:
    from slimtune.models.ref import ModelMeta
    from slimtune.passes.context import PassContext
    from slimtune.passes.model_builder import ModelBuilderParams
    from slimtune.passes.model_builder.run import run

    (out / "out").mkdir(parents=True)
    (out / "work").mkdir()
    ctx = PassContext(
        input=ref,
        meta=ModelMeta(),
        output_dir=out / "out",
        work_dir=out / "work",
        device="cpu",
        execution_provider="cpu",
        log=lambda s: None,
    )
    start = time.perf_counter()
    run(ctx, ModelBuilderParams(**options))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("merged")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from slimtune.models.hf import load_tokenizer
    from slimtune.models.ref import ModelRef

    rows = [json.loads(line) for line in (ROOT / "examples/emotion/heldout.jsonl").read_text().splitlines()]
    tokenizer = load_tokenizer(args.merged)
    lines = ["| options | accuracy | size (MB) | build (s) |", "| --- | ---: | ---: | ---: |"]
    for options in OPTION_SETS:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                seconds = build(ModelRef(args.merged, "hf"), options, Path(tmp))
                accuracy = score(Path(tmp) / "out", tokenizer, rows)
                size = sum(f.stat().st_size for f in (Path(tmp) / "out").iterdir()) / 1e6
                lines.append(f"| `{json.dumps(options)}` | {accuracy:.1%} | {size:.1f} | {seconds:.1f} |")
            except Exception as err:  # noqa: BLE001 - a failing option set is a result too
                lines.append(f"| `{json.dumps(options)}` | failed: {type(err).__name__} | | |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    if not args.no_write:
        body = (
            f"`benchmarks/int4_options.py`: one merged emotion model, built with each option set, scored on "
            f"examples/emotion/heldout.jsonl ({len(rows)} rows, greedy exact match).\n\n- machine: {machine()}\n"
            f"- versions: {versions(['onnxruntime-genai', 'onnxruntime', 'torch', 'transformers'])}\n\n{table}\n"
        )
        append_section("int4 options on a fine-tuned 135M model", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
