"""`slimtune optimize --model PATH --data FILE`: a ready-made search over ONNX export options, no config."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "optimize",
        help="export a model at several precisions and int4 settings, keep the best under your goals",
        description="Builds fp32, int8 and int4 ONNX variants (fp16 too with --device cuda) over int4 block "
        "sizes, accuracy levels and algorithms, evaluates each on the data, and keeps the best that meets the "
        "goals. Shared steps are cached: a second run re-uses every build and evaluation.",
    )
    p.add_argument("--model", required=True, help="HF folder, PEFT adapter folder, .gguf file or known name")
    p.add_argument("--data", required=True, help="data file (json/jsonl/csv/parquet) to evaluate on")
    p.add_argument("--template", help="text template; default: the one recorded in the model folder")
    p.add_argument("--max-rows", type=int, default=100, help="evaluate on the first N rows (default 100)")
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        help="goal: at most this many accuracy points below the input model (e.g. 1)",
    )
    p.add_argument("--max-latency-ms", type=float, help="goal: median end-to-end latency at most this")
    p.add_argument(
        "--prefer",
        choices=["size", "latency", "accuracy"],
        default="size",
        help="among candidates that meet the goals, the smallest (default), fastest or most accurate",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="execution provider to build for")
    p.add_argument("--precisions", nargs="+", help="default: fp32 int8 int4 (and fp16 on cuda)")
    p.add_argument("--block-sizes", nargs="+", type=int, default=[32, 128], help="int4 block sizes")
    p.add_argument("--accuracy-levels", nargs="+", type=int, default=[1, 4], help="int4 accuracy levels")
    p.add_argument(
        "--algorithms", nargs="+", default=["default", "k_quant_mixed"], help="the builder's int4 algorithms"
    )
    p.add_argument("--output-dir", default="slimtune-optimize", help="where model/ and run.json go")
    p.add_argument("--cache-dir", default=".slimtune-cache", help="cache folder")
    p.add_argument(
        "--dry-run", action="store_true", help="print the candidates and which are cached; run nothing"
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from slimtune.engine.optimize import optimize_command

    return optimize_command(args)
