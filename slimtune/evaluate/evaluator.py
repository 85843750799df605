"""Evaluate one model on labelled rows: the same function, rows and settings for every stage of a run (base,
adapter, merged, ONNX), so their numbers sit side by side.

Prompts are the template up to the answer column, encoded as training encoded them (`encode_prompt`: BOS +
prompt ids). Greedy decoding stops at EOS, at `max_new_tokens`, or once a label-set answer has ended its
first line (what `slimtune generate` does too): the normalised first word is all that is compared.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from slimtune.errors import UserError
from slimtune.evaluate.accuracy import (
    classification_report,
    classify,
    invalid_examples,
    rank_labels,
    wrong_examples,
)
from slimtune.files import folder_size
from slimtune.models.ref import ModelRef

METRICS = ("accuracy", "likelihood", "text_match", "perplexity", "latency", "size", "memory")
TEXT_MAX_NEW_TOKENS = 256  # a free-text answer: up to its reference's length and a margin, at most this
MEMORY_PROMPTS = 4  # generations the memory child runs after loading


def evaluate_model(
    ref: ModelRef,
    rows: Iterable[Any],
    template: Any,
    *,
    labels: list[str] | None,
    metrics: list[str],
    max_new_tokens: int = 8,
    latency_runs: int = 20,
    warmup: int = 3,
    label_column: str | None = None,
    add_special_tokens: bool = True,
    threads: int | None = None,
    progress: bool | None = None,
    post_process: Any = None,
) -> dict[str, Any]:
    """A JSON-able dict of the requested `metrics` (see METRICS) for the model `ref` on `rows`.

    `template`: a slimtune.data.template.Template, a PreProcessDataConfig (its add_special_tokens is used), or
    a text template string. Gold answers are `row[label_column]` when given, else the template's answer field.
    `labels`: the label set (None: the distinct gold answers). `progress`: a tqdm bar on stderr (None: when
    stderr is a terminal). `post_process`: answers -> answers, applied before they are compared with the labels
    (a data config's post_process_data_config).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    rows = list(rows)
    if not rows:
        raise UserError("no rows to evaluate")
    result: dict[str, Any] = {
        "model": str(ref.path),
        "kind": ref.kind,
        "n": len(rows),
        "metrics": list(metrics),
    }
    started = time.perf_counter()
    if "size" in metrics:
        result.update(model_size(ref))
    needs_backend = {"accuracy", "likelihood", "text_match", "perplexity", "latency"} & set(metrics)
    if needs_backend or "memory" in metrics:
        from slimtune.models.hf import load_tokenizer
        from slimtune.models.runtime import open_model

        backend = None
        if needs_backend:
            load_start = time.perf_counter()
            backend = open_model(ref, threads=threads)
            result["load_s"] = time.perf_counter() - load_start
            result["threads"] = backend.threads()
            if getattr(backend, "note", None):  # e.g. a DirectML model run on the CPU
                result["note"] = backend.note
            tokenizer = backend.tokenizer
        else:  # memory alone: the model is loaded in the measuring child only
            tokenizer = load_tokenizer(*[p for p in (ref.path, ref.base_path) if p])
        template, add_special_tokens = _template(template, tokenizer, add_special_tokens)
        _evaluate_loaded(
            backend,
            tokenizer,
            ref,
            rows,
            template,
            result,
            labels=labels,
            metrics=metrics,
            max_new_tokens=max_new_tokens,
            latency_runs=latency_runs,
            warmup=warmup,
            label_column=label_column,
            add_special_tokens=add_special_tokens,
            threads=threads,
            progress=progress,
            post_process=post_process,
        )
    result["seconds"] = time.perf_counter() - started
    return result


def _evaluate_loaded(
    backend,
    tokenizer,
    ref,
    rows,
    template,
    result,
    *,
    labels,
    metrics,
    max_new_tokens,
    latency_runs,
    warmup,
    label_column,
    add_special_tokens,
    threads,
    progress,
    post_process=None,
) -> None:
    from slimtune.data.tokenize import encode_prompt

    prompts = [encode_prompt(tokenizer, template, row, add_special_tokens) for row in rows]
    gold = _gold(rows, template, label_column) if {"accuracy", "likelihood"} & set(metrics) else []
    if gold:
        labels = _label_set(labels, gold)
        result["labels"] = labels
    stop_text = None
    if template.chat:
        from slimtune.data.chat import turn_end

        stop_text = turn_end(tokenizer)  # the end of the assistant's turn, when it is no special token
    if "accuracy" in metrics:
        start = time.perf_counter()
        outputs = generate_answers(
            backend,
            prompts,
            max_new_tokens,
            one_line=True,
            stop_text=stop_text,
            progress=_bar(len(prompts), "accuracy", progress),
        )
        seconds = time.perf_counter() - start
        if post_process is not None:
            outputs = post_process(outputs)
        predicted = classify(outputs, labels)
        report = classification_report(gold, predicted, labels)
        report["invalid_examples"] = invalid_examples(outputs, gold, predicted)
        report["wrong_examples"] = wrong_examples(outputs, gold, predicted)
        report["generation_s"] = seconds
        report["rows_per_s"] = len(rows) / seconds if seconds else None
        result.update(report)
        result["max_new_tokens"] = max_new_tokens
    if "likelihood" in metrics:
        start = time.perf_counter()
        ranked = likelihood_predictions(backend, prompts, labels, progress=progress)
        lik = classification_report(gold, ranked, labels)
        result["likelihood_accuracy"] = lik["accuracy"]
        result["likelihood"] = {
            "accuracy": lik["accuracy"],
            "macro_f1": lik["macro_f1"],
            "confusion": lik["confusion"],
            "seconds": time.perf_counter() - start,
        }
    if "text_match" in metrics:
        result["text_match"] = _text_match(
            backend, tokenizer, prompts, rows, template, label_column, stop_text, post_process, progress
        )
        result["exact_match"] = result["text_match"]["exact_match"]
        result["token_f1"] = result["text_match"]["token_f1"]
    if "perplexity" in metrics:
        from slimtune.evaluate.perplexity import sample_perplexity, scored_samples

        pre = template.pre.model_copy(update={"add_special_tokens": add_special_tokens})
        scored = sample_perplexity(backend, scored_samples(rows, pre, tokenizer, template))
        result["perplexity"] = scored["perplexity"]
        result["perplexity_tokens"] = scored["tokens"]
    if "latency" in metrics:
        from slimtune.evaluate.latency import measure_latency

        bar = _bar(latency_runs + warmup, "latency", progress)
        result["latency"] = measure_latency(
            backend,
            prompts,
            runs=latency_runs,
            warmup=warmup,
            new_tokens=max(2, max_new_tokens),
            progress=bar,
        )
        if bar is not None:
            bar.close()
    if "memory" in metrics:
        from slimtune.evaluate.memory import measure_memory

        memory = measure_memory(ref, prompts[:MEMORY_PROMPTS], max_new_tokens=max_new_tokens, threads=threads)
        result["peak_memory_bytes"] = memory["peak_memory_bytes"]
        result["memory"] = memory


def _text_match(backend, tokenizer, prompts, rows, template, label_column, stop_text, post_process, progress):
    """Exact match and token F1 of greedy answers against each row's reference (rows without one are left
    out). Generation ends at EOS, the chat template's end of turn, or a reference's length plus a margin."""
    from slimtune.evaluate.text_metrics import text_report

    references = [str(row.get(label_column)) if label_column else template.answer(row) for row in rows]
    chosen = [i for i, ref in enumerate(references) if ref not in ("", "None")]
    if not chosen:
        raise UserError(f"exact match needs a reference answer per row; {template.describe()!r} gives none")
    longest = max(len(tokenizer(references[i], add_special_tokens=False)["input_ids"]) for i in chosen)
    budget = min(TEXT_MAX_NEW_TOKENS, longest + 16)
    one_line = stop_text is None and not any("\n" in references[i].strip() for i in chosen)
    start = time.perf_counter()
    outputs = generate_answers(
        backend,
        [prompts[i] for i in chosen],
        budget,
        one_line=one_line,
        stop_text=stop_text,
        progress=_bar(len(chosen), "answers", progress),
    )
    if post_process is not None:
        outputs = post_process(outputs)
    report = text_report([o.strip() for o in outputs], [references[i] for i in chosen])
    report.update(generation_s=time.perf_counter() - start, max_new_tokens=budget)
    return report


def _template(template: Any, tokenizer: Any, add_special_tokens: bool):
    """(Template, add_special_tokens) from a Template, a PreProcessDataConfig or a text template."""
    from slimtune.config.schema import PreProcessDataConfig
    from slimtune.data.template import Template

    if isinstance(template, Template):
        if template.tokenizer is None and template.chat:
            template.tokenizer = tokenizer
        return template, add_special_tokens
    if isinstance(template, str):
        template = PreProcessDataConfig(text_template=template)
    if isinstance(template, PreProcessDataConfig):
        return Template(template, tokenizer), template.add_special_tokens
    raise UserError(
        f"template must be a Template, a PreProcessDataConfig or a text template, not {template!r}"
    )


def _gold(rows: Sequence[Any], template: Any, label_column: str | None) -> list[str]:
    column = label_column or template.answer_column
    if not column and template.messages_col:  # conversations: the last assistant turn is the answer
        return [template.answer(row) for row in rows]
    if not column:
        raise UserError(
            f"accuracy needs the answer of each row: the template {template.describe()!r} does not end with an "
            "answer field; give the label column (--label-col)"
        )
    missing = next((i for i, row in enumerate(rows) if row.get(column) is None), None)
    if missing is not None:
        raise UserError(f"row {missing + 1} has no value for the label column {column!r}")
    return [str(row[column]) for row in rows]


def _label_set(labels: Sequence[str] | None, gold: Sequence[str]) -> list[str]:
    out = list(dict.fromkeys(map(str, labels or [])))
    return out + sorted(set(gold) - set(out))


def generate_answers(
    backend,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    *,
    one_line: bool = True,
    stop_text: str | None = None,
    progress: Any = None,
) -> list[str]:
    """Decoded greedy answers; with `one_line`, generation stops once the first non-blank line has ended;
    with `stop_text` (a chat template's end of turn), where that text appears, and the answer ends before it."""
    from slimtune.models.decoding import answer_end

    tokenizer = backend.tokenizer

    def ended(ids: list[int]) -> bool:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        return (stop_text is not None and stop_text in text) or (one_line and answer_end(text) is not None)

    outputs = []
    for prompt in prompts:
        ids = backend.generate_ids(prompt, max_new_tokens, stop=ended if one_line or stop_text else None)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        outputs.append(text.split(stop_text)[0] if stop_text else text)
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    return outputs


def likelihood_predictions(
    backend,
    prompts: Sequence[list[int]],
    labels: Sequence[str],
    *,
    chunk: int = 64,
    progress: bool | None = None,
) -> list[str]:
    """The label whose ids, appended to each prompt, have the highest summed log-probability."""
    tokenizer = backend.tokenizer
    continuations = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    bar = _bar(len(prompts), "likelihood", progress)
    predicted: list[str] = []
    for begin in range(0, len(prompts), chunk):
        batch = prompts[begin : begin + chunk]
        scores = backend.token_logprobs([(p, c) for p in batch for c in continuations])
        rows = [scores[i * len(labels) : (i + 1) * len(labels)] for i in range(len(batch))]
        predicted += rank_labels(rows, labels)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return predicted


def model_size(ref: ModelRef) -> dict[str, Any]:
    """{size_bytes, size: {folder: bytes}}: files on disk; an adapter counts its base model too."""
    folders = [ref.path] + ([ref.base_path] if ref.kind == "adapter" and ref.base_path else [])
    sizes = {str(folder): folder_size(folder) for folder in folders}
    return {"size_bytes": sum(sizes.values()), "size": sizes}


def _bar(total: int, what: str, progress: bool | None):
    if progress is False:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=what,
        unit="row" if what != "latency" else "run",
        file=sys.stderr,
        disable=None if progress is None else False,
        leave=False,
    )
