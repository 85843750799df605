"""`slimtune evaluate --model DIR --data FILE`: task accuracy, perplexity, latency, size."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model folder on a data file")
    p.add_argument("--model", required=True, help="HF folder, adapter folder, or ONNX GenAI folder")
    p.add_argument("--data", required=True, help="data file (json/jsonl/csv/parquet)")
    p.add_argument("--template", help="text template; default: the one recorded in the model folder")
    p.add_argument("--label-col", help="answer column; default: the template's last field")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=["accuracy", "latency", "size"],
        help="accuracy, likelihood, perplexity, latency, size, memory",
    )
    p.add_argument("--max-rows", type=int, help="evaluate at most N rows")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from slimtune.evaluate.command import evaluate_command

    return evaluate_command(args)
