"""`slimtune data inspect FILE`: what a data set looks like once loaded, templated and tokenized.

FILE is a data file, or a config file whose data config (`--data NAME`, else the first) is inspected with
its own template, sequence length, model tokenizer and training pass's eval split. Options override the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimtune.errors import UserError

if TYPE_CHECKING:
    from slimtune.config.schema import DataConfig

CONFIG_KEYS = ("data_configs", "input_model", "passes")


def register(sub) -> None:
    p = sub.add_parser("data", help="data set tools")
    verbs = p.add_subparsers(dest="data_verb", metavar="VERB")
    ins = verbs.add_parser("inspect", help="rows, duplicates, labels, token lengths, a rendered example")
    ins.add_argument(
        "file",
        help="a data file (json/jsonl/csv/parquet/txt; a path or an http(s)/s3/az/abfs URL) or a config file",
    )
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
    return inspect_command(args)


def inspect_command(args: Any) -> int:
    from slimtune.data.inspect import format_report, inspect_rows, load_tokenizer
    from slimtune.data.template import Template, unescape_cli
    from slimtune.data.user_script import load_data
    from slimtune.redact import redact_url

    data, model, eval_size, eval_data = _source(args)
    pre = data.pre_process_data_config
    overrides: dict[str, Any] = {}
    if args.template:
        overrides.update(text_template=unescape_cli(args.template), text_cols=None)
    elif args.text_cols:
        overrides.update(text_cols=args.text_cols, text_template=None)
    if args.max_seq_len:
        overrides["max_seq_len"] = args.max_seq_len
    pre = pre.model_copy(update=overrides)
    if args.eval_size:
        eval_size, eval_data = args.eval_size, None
    rows = load_data(data)
    if not (pre.text_template or pre.text_cols or pre.messages_col) and not {"text", "messages"} & set(
        rows.column_names
    ):
        pre = pre.model_copy(
            update={"text_cols": list(rows.column_names)}
        )  # a bare data file: show every column
    tokenizer, tokenizer_note = load_tokenizer(args.model, model)
    eval_rows = load_data(eval_data) if eval_data else None
    file = redact_url(str(data.load_dataset_config.data_files))
    report = inspect_rows(
        rows,
        pre,
        Template(pre, tokenizer, rows.column_names, file),
        tokenizer,
        eval_size=eval_size,
        eval_rows=eval_rows,
    )
    report["file"] = file
    report["tokenizer"] = tokenizer_note
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0


def _source(args: Any) -> tuple[DataConfig, str | None, float | None, DataConfig | None]:
    """(data config, model from the config, eval size, eval data config) for FILE."""
    from slimtune.config.schema import DataConfig, LoadDatasetConfig  # noqa: F811
    from slimtune.data.load import builder_for
    from slimtune.storage import is_remote_url

    if is_remote_url(args.file):  # a data file in storage: fetched into the download cache
        if args.data:
            raise UserError(f"--data {args.data} names a data config, but {args.file} is a data file URL")
        load = LoadDatasetConfig(data_name=builder_for(args.file), data_files=args.file)
        name = Path(args.file.split("?")[0]).stem
        return DataConfig(name=name, load_dataset_config=load), None, None, None
    if "://" in args.file:  # a URL of a scheme slimtune does not read (gs://, ftp:// ...)
        from slimtune.storage import REMOTE_SCHEMES

        raise UserError(
            f"{args.file}: {args.file.split('://')[0]}:// is not read by slimtune; it reads local files and "
            f"{', '.join(s + '://' for s in REMOTE_SCHEMES)} URLs"
        )
    path = Path(args.file)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if not is_config_file(path):
        if args.data:
            raise UserError(
                f"--data {args.data} names a data config, but {path} is a data file, not a config"
            )
        load = LoadDatasetConfig(data_name=builder_for(path), data_files=str(path.resolve()))
        return DataConfig(name=path.stem, load_dataset_config=load), None, None, None
    from slimtune.config.load import load_config

    loaded = load_config(path)
    configs = {d.name: d for d in loaded.config.data_configs}
    if not configs:
        raise UserError(f"{path} has no data_configs to inspect")
    if args.data and args.data not in configs:
        raise UserError(f"--data {args.data}: no such data config in {path}; names: {', '.join(configs)}")
    data = configs[args.data] if args.data else next(iter(configs.values()))
    eval_size, eval_data = None, None
    from slimtune.passes.registry import get_pass

    for plan in loaded.passes:
        training = get_pass(plan.type).training_of(plan.params)
        if training is not None and training.data == data.name:
            eval_size = training.eval_size
            eval_data = configs.get(training.eval_data) if training.eval_data else None
            break
    model = loaded.config.input_model.model_path
    return data, model if isinstance(model, str) else None, eval_size, eval_data


def is_config_file(path: Path) -> bool:
    """A .json/.yaml file whose top level is a mapping with data_configs, input_model or passes."""
    if path.suffix.lower() not in (".json", ".yaml", ".yml") or path.stat().st_size > 4 << 20:
        return False
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (ValueError, UnicodeDecodeError, Exception):  # noqa: BLE001 - not a parseable config: a data file
        return False
    return isinstance(data, dict) and any(key in data for key in CONFIG_KEYS)
