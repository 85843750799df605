"""What a data set looks like once loaded, templated and tokenized (`slimtune data inspect`, slimtune.cli.data)."""

from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from slimtune.config.schema import PreProcessDataConfig
from slimtune.data.split import duplicate_count, label_column_for, label_counts, overlap, split_rows
from slimtune.data.template import Template
from slimtune.data.tokenize import row_token_lengths
from slimtune.errors import SlimtuneError, UserError

DEFAULT_MODEL = "smollm2-135m-instruct"


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
