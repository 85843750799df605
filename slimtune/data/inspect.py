"""`slimtune data inspect FILE`: what a data set looks like once loaded, templated and tokenized.

FILE is a data file, or a config file whose data config (`--data NAME`, else the first) is inspected with
its own template, sequence length, model tokenizer and LoRA eval split. Options override the config.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from slimtune.config.schema import DataConfig, LoadDatasetConfig, PreProcessDataConfig
from slimtune.data.load import builder_for
from slimtune.data.split import duplicate_count, label_column_for, label_counts, overlap, split_rows
from slimtune.data.template import Template, unescape_cli
from slimtune.data.tokenize import row_token_lengths
from slimtune.data.user_script import load_data
from slimtune.errors import SlimtuneError, UserError

CONFIG_KEYS = ("data_configs", "input_model", "passes")
DEFAULT_MODEL = "smollm2-135m-instruct"


def inspect_command(args: Any) -> int:
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
    file = str(data.load_dataset_config.data_files)
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


def inspect_rows(
    rows: Any,
    pre: PreProcessDataConfig,
    template: Template,
    tokenizer: Any = None,
    *,
    eval_size: float | None = None,
    eval_rows: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The statistics `data inspect` prints, as a dict (the --json output)."""
    label_col = label_column_for(rows, template.answer_column)
    first = rows[0]
    report: dict[str, Any] = {
        "rows": len(rows),
        "duplicate_rows": duplicate_count(rows),
        "columns": list(rows.column_names),
        "template": template.describe(),
        "chat": template.chat,
        "answer_column": template.answer_column,
        "label_counts": label_counts(rows, label_col) if label_col else None,
        "max_seq_len": pre.max_seq_len,
        "token_lengths": None,
        "truncated_rows": None,
        "example": {
            "text": template.render(first),
            "prompt": template.prompt(first),
            "answer": template.answer(first),
        },
    }
    if template.answer_column and not label_col:
        report["distinct_answers"] = len(set(map(str, rows[template.answer_column])))
    if tokenizer is not None:
        lengths = sorted(row_token_lengths(rows, pre, tokenizer, template))
        report["token_lengths"] = {
            "min": lengths[0],
            "median": _number(statistics.median(lengths)),
            "p95": lengths[math.ceil(0.95 * len(lengths)) - 1],
            "max": lengths[-1],
        }
        report["truncated_rows"] = sum(n > pre.max_seq_len for n in lengths)
    if eval_rows is None and eval_size:
        train, eval_rows = split_rows(rows, eval_size, label_col, seed=seed)
        report["split"] = {"eval_size": eval_size, "stratified_by": label_col}
    elif eval_rows is not None:
        train = rows
        report["split"] = {"eval_data": True}
    if eval_rows is not None:
        prompts = {template.prompt(row) for row in train}
        report["split"].update(
            train=len(train),
            eval=len(eval_rows),
            overlap=overlap(train, eval_rows),
            prompt_overlap=sum(template.prompt(row) in prompts for row in eval_rows),
        )
    return report


def format_report(r: dict[str, Any]) -> str:
    """A small readable table."""
    share = lambda n, total: f"{100 * n / total:.1f}%" if total else "-"  # noqa: E731
    lines = [
        ("file", r.get("file", "")),
        ("columns", ", ".join(r["columns"])),
        (
            "template",
            (r["template"] if r["chat"] else repr(r["template"]))
            + (f"  (answer: {r['answer_column']})" if r["answer_column"] else ""),
        ),
        ("rows", f"{r['rows']:,}"),
        (
            "duplicate rows",
            f"{r['duplicate_rows']:,} ({share(r['duplicate_rows'], r['rows'])}) identical to an earlier row",
        ),
    ]
    if r["label_counts"]:
        lines.append((f"labels ({r['answer_column']})", f"{len(r['label_counts'])} distinct"))
        width = max(len(k) for k in r["label_counts"])
        lines += [
            ("", f"{k:<{width}}  {n:>6,}  {share(n, r['rows']):>6}") for k, n in r["label_counts"].items()
        ]
    elif r.get("distinct_answers"):
        lines.append(
            (f"answers ({r['answer_column']})", f"{r['distinct_answers']:,} distinct: free text, not labels")
        )
    t = r["token_lengths"]
    if t:
        lines.append(
            (
                "token lengths",
                f"min {t['min']:,} · median {t['median']:,} · p95 {t['p95']:,} · max {t['max']:,}",
            )
        )
        lines.append(
            ("truncated", f"{r['truncated_rows']:,} rows longer than max_seq_len {r['max_seq_len']:,}")
        )
    lines.append(("tokenizer", r.get("tokenizer") or "-"))
    s = r.get("split")
    if s:
        how = f"eval_size {s['eval_size']}" if "eval_size" in s else "eval data config"
        how += f", stratified by {s['stratified_by']}" if s.get("stratified_by") else ""
        lines.append(("split", f"train {s['train']:,} · eval {s['eval']:,} ({how})"))
        lines.append(
            (
                "overlap",
                f"{s['overlap']:,} eval rows also in train; {s['prompt_overlap']:,} eval prompts "
                "also in train",
            )
        )
    width = max(len(k) for k, _ in lines)
    out = [f"{k:<{width}}  {v}" for k, v in lines]
    out.append("example (row 1)")
    out += ["    " + line for line in r["example"]["text"].splitlines()]
    return "\n".join(out)


def _source(args: Any) -> tuple[DataConfig, str | None, float | None, DataConfig | None]:
    """(data config, model from the config, eval size, eval data config) for FILE."""
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


def load_tokenizer(model: str | None, config_model: str | None = None) -> tuple[Any, str]:
    """(tokenizer or None, where it came from). A model given explicitly (--model, SLIMTUNE_TOKENIZER) must
    load; the config's model and the default model may be unavailable, and then the next one is tried or
    token statistics are skipped."""
    explicit = model or os.environ.get("SLIMTUNE_TOKENIZER")
    if explicit:
        try:
            return _tokenizer_from(explicit)
        except (SlimtuneError, ImportError, OSError, ValueError) as err:
            raise UserError(f"cannot load the tokenizer of {explicit}: {err}") from None
    for source in filter(None, (config_model, DEFAULT_MODEL)):
        try:
            return _tokenizer_from(source)
        except (SlimtuneError, ImportError, OSError, ValueError) as err:
            print(f"note: no tokenizer from {source} ({err})", file=sys.stderr)
    print("note: token lengths are skipped; give --model FOLDER", file=sys.stderr)
    return None, "none"


def _tokenizer_from(source: str) -> tuple[Any, str]:
    """An HF folder, or a known model name / .gguf file prepared by the model store."""
    from transformers import AutoTokenizer

    if not Path(source).is_dir():
        from slimtune.models.store import prepared_path

        source = str(prepared_path(source))
    return AutoTokenizer.from_pretrained(source), source


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
