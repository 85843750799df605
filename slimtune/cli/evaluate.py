"""`slimtune evaluate --model DIR --data FILE`: evaluate any model folder on a data file.

The folder's kind is told by its files: genai_config.json (ONNX GenAI), adapter_config.json (a PEFT adapter,
applied to the base model its config names), config.json (Hugging Face), one .gguf file (llama.cpp; a .gguf
file may be given itself, its template and labels read from its metadata). A folder made by slimtune carries its
template, answer column and label set in slimtune.json; any other folder needs --template. The label set is
the distinct values of the label column in the data, joined with the labels recorded in slimtune.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimtune.errors import UserError
from slimtune.models.ref import MODEL_META, ModelMeta, ModelRef  # plain data, no heavy imports
from slimtune.redact import redact_url
from slimtune.units import fmt_bytes

if TYPE_CHECKING:
    from slimtune.config.schema import PreProcessDataConfig


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model folder on a data file")
    p.add_argument(
        "--model",
        required=True,
        help="HF folder, adapter folder, ONNX GenAI folder, or GGUF model (.gguf file or folder); also at an "
        "http(s)/s3/az/abfs URL, or a hub model id (org/name[@revision])",
    )
    p.add_argument(
        "--data",
        required=True,
        help="data file (json/jsonl/csv/parquet; a path or an http(s)/s3/az/abfs URL)",
    )
    p.add_argument("--template", help="text template; default: the one recorded in the model folder")
    p.add_argument("--label-col", help="answer column; default: the template's last field")
    p.add_argument(
        "--metrics",
        nargs="+",
        help="accuracy, likelihood, exact_match (with token F1), perplexity, latency, size, memory; default: "
        "accuracy for label answers, exact_match and perplexity for free text (conversations), perplexity when "
        "there is no answer; latency and size always",
    )
    p.add_argument("--max-rows", type=int, help="evaluate at most N rows")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from slimtune.data.template import Template
    from slimtune.models.loading import model_ref

    ref = model_ref(args.model)
    if ref.kind == "gguf":
        from slimtune.evaluate.generate import load_meta

        meta = load_meta(Path(ref.path)) or ModelMeta()
    else:
        meta = ModelMeta.load(ref.path) or ModelMeta()
    pre = _pre_process(args, meta, ref)
    rows = _rows(args.data, args.max_rows)
    # chat templates need the tokenizer; the evaluator re-renders with it
    probe = Template(pre, columns=list(rows[0]) if rows else None)
    label_column = args.label_col or meta.answer_column or probe.answer_column
    if label_column and rows and label_column not in rows[0]:
        raise UserError(
            f"label column {label_column!r} is not in {args.data}; columns: {', '.join(rows[0])} (--label-col)"
        )
    metrics = _metrics(args.metrics, probe, rows, label_column)
    needs_labels = {"accuracy", "likelihood"} & set(metrics)
    if needs_labels and not label_column and not probe.messages_col:
        raise UserError(
            f"the template {probe.describe()!r} does not end with an answer field; give --label-col for "
            f"{', '.join(sorted(needs_labels))}"
        )
    labels = None
    if label_column:
        labels = list(dict.fromkeys([*(meta.labels or []), *sorted({str(r[label_column]) for r in rows})]))
    elif probe.messages_col and needs_labels:
        labels = list(dict.fromkeys([*(meta.labels or []), *sorted({probe.answer(r) for r in rows})]))
    from slimtune.evaluate.evaluator import evaluate_model

    result = evaluate_model(
        ref,
        rows,
        pre,
        labels=labels,
        metrics=metrics,
        label_column=label_column,
        progress=None if not args.json else False,
    )
    result["data"] = redact_url(str(args.data))
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(render_text(result))
    return 0


def _metrics(given: list[str] | None, template: Any, rows: list[dict[str, Any]], label_column: str | None):
    """The metrics asked for (exact_match / token_f1 name text_match), or those that fit the answers."""
    if given:
        aliases = {"exact_match": "text_match", "token_f1": "text_match"}
        return list(dict.fromkeys(aliases.get(m, m) for m in given))
    from slimtune.evaluate.text_metrics import answer_kind, answers_are_labels

    if label_column:
        kind = "labels" if answers_are_labels([str(r.get(label_column)) for r in rows]) else "text"
    else:
        kind = answer_kind(template, rows)
    quality = {"labels": ["accuracy"], "text": ["text_match", "perplexity"]}.get(kind, ["perplexity"])
    return [*quality, "latency", "size"]


def _pre_process(args, meta: ModelMeta, ref: ModelRef) -> PreProcessDataConfig:
    from slimtune.config.schema import PreProcessDataConfig
    from slimtune.data.template import unescape_cli

    if args.template:
        return PreProcessDataConfig(text_template=unescape_cli(args.template))
    recorded = meta.pre_process()  # the template or the messages column it was trained on
    if recorded is not None:
        return recorded
    where = (
        f"{ref.path} has no {MODEL_META}"
        if not Path(ref.path, MODEL_META).is_file()
        else (f"{Path(ref.path, MODEL_META)} records no template")
    )
    raise UserError(
        f"{where}, so the prompt format is unknown; give it with --template, e.g. "
        "--template '### Text: {phrase}\\n### The tone is:\\n{tone}'"
    )


def _rows(path: str, max_rows: int | None) -> list[dict[str, Any]]:
    from slimtune.config.schema import LoadDatasetConfig
    from slimtune.data.load import builder_for, load_rows

    if max_rows is not None and max_rows < 1:
        raise UserError(f"--max-rows must be at least 1, got {max_rows}")
    rows = load_rows(
        LoadDatasetConfig(data_name=builder_for(path), data_files=str(path), max_samples=max_rows)
    )
    return [dict(row) for row in rows]


def render_text(result: dict[str, Any]) -> str:
    """A readable summary: accuracy, invalid answers, per-class P/R/F1, confusion matrix, latency, size."""
    lines = [f"model {result['model']} ({result['kind']}), {result['n']} rows"]
    if "accuracy" in result:
        lines.append(
            f"accuracy     {result['accuracy']:.2%}  ({result['correct']}/{result['n']}; "
            f"{result['rows_per_s']:.1f} rows/s)"
        )
        lines.append(f"invalid      {result['invalid']}")
        for example in result.get("invalid_examples", []):
            lines.append(f"  e.g. {example['output']!r} (expected {example['expected']!r})")
        width = max(8, *(len(label) for label in result["per_class"]))
        lines += ["", f"{'label':<{width}}  precision  recall     f1  support"]
        for label, c in result["per_class"].items():
            lines.append(
                f"{label:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}  "
                f"{c['support']:7d}"
            )
        lines += ["", "confusion (rows: true, columns: predicted)"]
        columns = result["confusion"]["columns"]
        cell = max(7, *(len(c) for c in columns))
        lines.append(" " * (width + 2) + "".join(f"{c:>{cell + 1}}" for c in columns))
        for label, row in zip(result["confusion"]["labels"], result["confusion"]["matrix"], strict=True):
            lines.append(f"{label:<{width}}  " + "".join(f"{v:>{cell + 1}}" for v in row))
        lines.append("")
    if "likelihood_accuracy" in result:
        lines.append(f"likelihood accuracy  {result['likelihood_accuracy']:.2%}")
    if "text_match" in result:
        text = result["text_match"]
        lines.append(f"exact match  {text['exact_match']:.2%}  ({text['n']} answers, after normalisation)")
        lines.append(f"token F1     {text['token_f1']:.3f}")
        for example in text.get("mismatch_examples", [])[:3]:
            lines.append(f"  e.g. {example['output']!r} (expected {example['expected']!r})")
    if "perplexity" in result:
        lines.append(f"perplexity   {result['perplexity']:.3f}  ({result['perplexity_tokens']} tokens)")
    if "latency" in result:
        lat = result["latency"]
        e2e = lat["e2e_ms"]
        lines.append(
            f"latency      e2e avg {e2e['avg']:.1f} ms, p50 {e2e['p50']:.1f}, p90 {e2e['p90']:.1f}, "
            f"p99 {e2e['p99']:.1f} ({lat['new_tokens']} new tokens)"
        )
        lines.append(
            f"             ttft {lat['ttft_ms']:.1f} ms, prompt {lat['prompt_tokens_per_s']:.0f} tok/s, "
            f"decode {lat['decode_tokens_per_s']:.1f} tok/s; {lat['runs']} runs after {lat['warmup']} warm-up, "
            f"{lat['threads']} threads"
        )
    if "size_bytes" in result:
        lines.append(f"size         {fmt_bytes(result['size_bytes'])}")
    if "peak_memory_bytes" in result:
        lines.append(
            f"peak memory  {fmt_bytes(result['peak_memory_bytes'])} over the baseline "
            f"(peak RSS {fmt_bytes(result['memory']['peak_rss_bytes'])})"
        )
    return "\n".join(lines)
