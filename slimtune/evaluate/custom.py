"""Custom metrics (Olive's metric type `custom`): a function in the user's script computes the value(s).

    evaluate_func(model: ModelRef, rows: list[dict], **evaluate_func_kwargs) -> number | {sub_type: number}
        scores the model itself: `model.path` is the stage's folder, `model.kind` is "hf", "adapter", "onnx" or "gguf",
        `model.base_path` the base model folder of an adapter. The same call for every stage of a run.
    metric_func(outputs: list[str], targets: list[str], **metric_func_kwargs) -> number | {sub_type: number}
        scores answers: slimtune generates them (greedy, as accuracy does, up to `max_new_tokens`, through the
        data config's post_process function if any); targets are the rows' answers (the template's answer field).

A single number is the value of the metric's only sub-type; a mapping gives each sub-type by name (Olive: the
sub_types' names are the keys the function returns). Values land in the evaluation result under
`custom.<metric name>.<sub_type>`, where goals and ranking read them like built-in ones. See docs/extending.md.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from slimtune.errors import UserError
from slimtune.models.ref import ModelRef
from slimtune.user_code import call, load_function


def custom_metrics(
    metrics: Sequence[Any],
    ref: ModelRef,
    rows: Any,
    template: Any,
    *,
    add_special_tokens: bool = True,
    post_process: Callable[[list[str]], list[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """{metric name: {sub_type: value}} for the custom `metrics` (schema.Metric with a CustomMetricConfig)."""
    out: dict[str, dict[str, float]] = {}
    outputs: dict[int, list[str]] = {}  # max_new_tokens -> answers, generated once per length
    backend = None
    for metric in metrics:
        user = metric.user_config
        if user.evaluate_func:
            where = f"metric `{metric.name}`: user_config.evaluate_func = {user.evaluate_func}"
            function = load_function(user.user_script, user.evaluate_func, where, user.script_dir)
            value = call(function, where, ref, [dict(row) for row in rows], **user.evaluate_func_kwargs)
        else:
            where = f"metric `{metric.name}`: user_config.metric_func = {user.metric_func}"
            function = load_function(user.user_script, user.metric_func, where, user.script_dir)
            if user.max_new_tokens not in outputs:
                if backend is None:
                    from slimtune.models.runtime import open_model

                    backend = open_model(ref)
                outputs[user.max_new_tokens] = _answers(
                    backend, rows, template, add_special_tokens, user.max_new_tokens, post_process
                )
            from slimtune.evaluate.evaluator import _gold

            targets = _gold(rows, template, None)
            value = call(
                function, where, list(outputs[user.max_new_tokens]), targets, **user.metric_func_kwargs
            )
        out[metric.name] = sub_values(value, [s.name for s in metric.sub_types], where)
    return out


def _answers(backend, rows, template, add_special_tokens, max_new_tokens, post_process) -> list[str]:
    from slimtune.data.tokenize import encode_prompt
    from slimtune.evaluate.evaluator import generate_answers

    prompts = [encode_prompt(backend.tokenizer, template, row, add_special_tokens) for row in rows]
    answers = generate_answers(backend, prompts, max_new_tokens, one_line=True)
    return post_process(answers) if post_process else answers


def sub_values(value: Any, sub_types: list[str], where: str) -> dict[str, float]:
    """The function's result as {sub_type: float}; every sub-type must be there, each a finite number."""
    if isinstance(value, dict):
        missing = [s for s in sub_types if s not in value]
        if missing:
            raise UserError(
                f"{where}: returned no value for sub_type(s) {', '.join(missing)}; it returned keys "
                f"{', '.join(map(str, value)) or '(none)'}"
            )
        values = {str(k): v for k, v in value.items()}
    elif len(sub_types) == 1:
        values = {sub_types[0]: value}
    else:
        raise UserError(
            f"{where}: returned one value but the metric has sub_types {', '.join(sub_types)}; return a mapping "
            "{sub_type: value}"
        )
    for key, item in values.items():
        if isinstance(item, bool) or not isinstance(item, numbers.Real) or not math.isfinite(item):
            raise UserError(f"{where}: value of {key!r} must be a finite number, got {item!r}")
    return {key: float(item) for key, item in values.items()}
