"""What an unmerged LoRA adapter costs per token on an int4 ONNX base, against the same adapter merged.

Run: .venv/bin/python benchmarks/adapter_decode.py [--ranks 8 32] [--tokens 128] [--repeats 5] [--no-write]
On the default model (SmolLM2-135M-Instruct), with PEFT LoRA adapters of random (non-zero) weights on every
linear layer of the decoder (q, k, v, o, gate, up, down), it builds:
  - the int4 base by the ModelBuilder pass (what a run ends with),
  - for each rank, the ExtractAdapters pass's int4 base with LoRA inputs and the adapter's .onnx_adapter,
  - for the first rank, the adapter merged (MergeAdapterWeights) then exported int4 by ModelBuilder,
and times greedy decoding (`timed_generate`: a fixed prompt, exactly --tokens new tokens, EOS ignored) through
onnxruntime-genai on the CPU, median of --repeats. Prints a table and appends it to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import ROOT, append_section, machine, versions

sys.path.insert(0, str(ROOT))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT = "### Text: The exam results are out and I passed!\n### The tone is:\n"


def ctx(input_ref, out: Path):
    from slimtune.models.ref import ModelMeta
    from slimtune.passes.context import PassContext

    return PassContext(
        input=input_ref,
        meta=ModelMeta(),
        output_dir=out,
        work_dir=out.with_name(out.name + ".work"),
        device="cpu",
        execution_provider="cpu",
        log=lambda _: None,
    )


def adapter(base: Path, folder: Path, rank: int) -> Path:
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(rank)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
    peft.get_peft_model(model, config).save_pretrained(folder)
    return folder


def decode_rate(folder: Path, adapter_file: Path | None, tokens: int, repeats: int) -> tuple[float, float]:
    """(median decode tokens/s after the first token, median time to first token in ms); no adapter at all
    when `adapter_file` is None."""
    from slimtune.models.onnx_genai import OnnxGenaiModel

    model = OnnxGenaiModel(folder, threads=2, adapter=adapter_file, default_adapter=False)
    ids = model.tokenizer(PROMPT)["input_ids"]
    model.timed_generate(ids, 8)  # warm-up
    rates, firsts = [], []
    for _ in range(repeats):
        t = model.timed_generate(ids, tokens)
        rates.append((len(t.new_ids) - 1) / (t.total_s - t.ttft_s))
        firsts.append(t.ttft_s * 1000)
    return statistics.median(rates), statistics.median(firsts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_start = f"{os.getloadavg()[0]:.1f}"  # other programs' load makes every number here slower

    from slimtune.models.ref import ModelRef
    from slimtune.models.store import prepared_path
    from slimtune.passes.extract_adapters import ExtractAdaptersParams
    from slimtune.passes.extract_adapters.run import run as extract
    from slimtune.passes.merge import MergeParams
    from slimtune.passes.merge.run import run as merge
    from slimtune.passes.model_builder import ModelBuilderParams
    from slimtune.passes.model_builder.run import run as build

    base = prepared_path("smollm2-135m-instruct")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain = Path(
            build(ctx(ModelRef(str(base), "hf"), root / "int4"), ModelBuilderParams(precision="int4")).path
        )
        rows.append(
            (
                "int4 base (ModelBuilder), no adapter",
                "-",
                *decode_rate(plain, None, args.tokens, args.repeats),
            )
        )
        for i, rank in enumerate(args.ranks):
            peft_dir = adapter(base, root / f"lora{rank}", rank)
            ref = ModelRef(str(peft_dir), "adapter", base_path=str(base))
            multi = Path(
                extract(ctx(ref, root / f"multi{rank}"), ExtractAdaptersParams(adapter_name="a")).path
            )
            if i == 0:
                rows.append(
                    (
                        "int4 base with LoRA inputs (ExtractAdapters), no adapter",
                        "-",
                        *decode_rate(multi, None, args.tokens, args.repeats),
                    )
                )
                merged_hf = Path(merge(ctx(ref, root / f"merged{rank}"), MergeParams()).path)
                merged = Path(
                    build(
                        ctx(ModelRef(str(merged_hf), "hf"), root / f"merged{rank}-int4"),
                        ModelBuilderParams(precision="int4"),
                    ).path
                )
                rows.append(
                    (
                        "adapter merged, int4 (ModelBuilder)",
                        str(rank),
                        *decode_rate(merged, None, args.tokens, args.repeats),
                    )
                )
            rows.append(
                (
                    "int4 base + .onnx_adapter (unmerged)",
                    str(rank),
                    *decode_rate(multi, multi / "adapters" / "a.onnx_adapter", args.tokens, args.repeats),
                )
            )
    reference = rows[0][2]
    lines = [
        "| model | LoRA rank | decode tok/s | vs int4 base | time to first token (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {rank} | {rate:.0f} | {rate / reference:.2f}x | {ttft:.0f} |"
        for name, rank, rate, ttft in rows
    ]
    table = "\n".join(lines)
    load_end = f"{os.getloadavg()[0]:.1f}"
    print(table)
    if not args.no_write:
        body = (
            f"`benchmarks/adapter_decode.py --ranks {' '.join(map(str, args.ranks))} --tokens {args.tokens} "
            f"--repeats {args.repeats}`: SmolLM2-135M-Instruct, LoRA on every decoder linear layer (random "
            "weights), greedy decoding through onnxruntime-genai on the CPU (2 threads), median of the repeats; "
            "decode tok/s counts the tokens after the first.\n\n"
            f"- machine: {machine()} (load average at start / end: {load_start} / {load_end} on {os.cpu_count()} CPUs)\n"
            f"- versions: {versions(['onnxruntime', 'onnxruntime-genai', 'torch', 'transformers', 'peft'])}\n\n"
            f"{table}\n"
        )
        append_section("Decode speed of an int4 base with an unmerged LoRA adapter", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
