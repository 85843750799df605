"""`slimtune data inspect FILE`: what a data set looks like once loaded, templated and tokenized."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("data", help="data set tools")
    verbs = p.add_subparsers(dest="data_verb", metavar="VERB")
    ins = verbs.add_parser("inspect", help="rows, duplicates, labels, token lengths, a rendered example")
    ins.add_argument("file", help="a data file (json/jsonl/csv/parquet/txt) or a config file")
    ins.add_argument("--data", help="data config name (when FILE is a config)")
    ins.add_argument(
        "--template", help="text template over columns, e.g. '### Text: {phrase}\\n### The tone is:\\n{tone}'"
    )
    ins.add_argument("--text-cols", nargs="+", help="columns joined into the text (no template)")
    ins.add_argument("--model", help="model whose tokenizer counts tokens (default: the default model)")
    ins.add_argument("--max-seq-len", type=int, help="report rows longer than this (default 1024)")
    ins.add_argument("--eval-size", type=float, help="also split: held-out share (<1) or row count")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.set_defaults(func=_inspect)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _inspect(args) -> int:
    from slimtune.data.inspect import inspect_command

    return inspect_command(args)
