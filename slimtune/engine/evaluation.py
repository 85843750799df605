"""Evaluating every stage of a run on the same rows with the same settings, and checking goals.

Which rows: the data config the metrics name (or the LoRA pass's training data). When that is the data the
LoRA pass trained on with `eval_dataset_size`, the rows are its held-out split (same seed, so the very rows
training never saw). With no evaluator in the config, a run that fine-tunes on a labelled template is still
evaluated (accuracy, latency, size on up to DEFAULT_MAX_ROWS held-out rows): the quality gate is on by
default. Results are cached by model and evaluation settings, so a re-run does not evaluate again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtune.config.validate import LoadedConfig
from slimtune.evaluate.goals import MetricRef, check_goal, describe_goal, metric_refs, read, required_metrics
from slimtune.models.ref import ModelMeta, ModelRef

DEFAULT_METRICS = ["accuracy", "latency", "size"]
DEFAULT_MAX_ROWS = 100
EVAL_VERSION = 1  # bump when evaluation results change for the same inputs


@dataclass
class EvalPlan:
    data_name: str
    source: str  # human description of the rows
    rows: Any  # datasets.Dataset
    pre: Any  # PreProcessDataConfig
    metrics: list[str]
    refs: list[MetricRef] = field(default_factory=list)
    data_fingerprint: str = ""
    latency_runs: int = 20

    def fingerprint(self) -> str:
        payload = {
            "data": self.data_fingerprint,
            "rows": len(self.rows),
            "source": self.source,
            "pre": self.pre.model_dump(mode="json"),
            "metrics": self.metrics,
            "latency_runs": self.latency_runs,
            "version": EVAL_VERSION,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def plan_evaluation(loaded: LoadedConfig) -> EvalPlan | None:
    from slimtune.data.fingerprint import data_fingerprint
    from slimtune.data.load import load_rows
    from slimtune.data.split import split_rows
    from slimtune.data.template import Template

    cfg = loaded.config
    evaluator = cfg.evaluators.get(cfg.evaluator) if cfg.evaluator else None
    if evaluator is None and cfg.evaluator is None and len(cfg.evaluators) == 1:
        evaluator = next(iter(cfg.evaluators.values()))  # one evaluator defined: it is the one meant
    lora = next((p.params for p in loaded.passes if getattr(p.params, "train_data_config", None)), None)
    if evaluator is not None and evaluator.metrics:
        refs = metric_refs(evaluator.metrics)
        metrics = required_metrics(evaluator.metrics)
        named = [m.data_config for m in evaluator.metrics if m.data_config]
        data_name = named[0] if named else (lora.train_data_config if lora else None)
        max_rows = None
    elif lora is not None and (lora.eval_dataset_size or lora.eval_data_config):
        refs, metrics, data_name, max_rows = (
            [],
            list(DEFAULT_METRICS),
            lora.train_data_config,
            DEFAULT_MAX_ROWS,
        )
    else:
        return None
    if data_name is None:
        if "accuracy" in metrics or "perplexity" in metrics:
            from slimtune.errors import UserError

            raise UserError("evaluators: accuracy and perplexity need rows: set `data_config` on the metric")
        return None
    data = next(d for d in cfg.data_configs if d.name == data_name)
    rows = load_rows(data.load_dataset_config)
    source = f"data config {data_name} ({len(rows)} rows)"
    if lora is not None and data_name == lora.train_data_config and lora.eval_data_config:
        data = next(d for d in cfg.data_configs if d.name == lora.eval_data_config)
        rows = load_rows(data.load_dataset_config)
        source = f"data config {data.name}, the LoRA pass's evaluation data ({len(rows)} rows)"
    elif lora is not None and data_name == lora.train_data_config and lora.eval_dataset_size:
        from slimtune.data.split import label_column_for

        template = Template(data.pre_process_data_config, None, columns=rows.column_names)
        label_column = label_column_for(rows, template.answer_column)
        _, rows = split_rows(
            rows, lora.eval_dataset_size, label_column, seed=data.pre_process_data_config.random_seed
        )
        source = f"held-out split of {data_name} ({len(rows)} rows never trained on)"
    if max_rows and len(rows) > max_rows:
        rows = rows.select(range(max_rows))
        source += f", first {max_rows}"
    return EvalPlan(
        data.name,
        source,
        rows,
        data.pre_process_data_config,
        metrics,
        refs,
        data_fingerprint(data),
        latency_runs=20 if evaluator else 5,
    )


def evaluate_stage(plan: EvalPlan, ref: ModelRef, model_key: str, cache_root: Path, meta: ModelMeta) -> dict:
    """Metrics of one stage, from the evaluation cache when this model was evaluated the same way before."""
    key = hashlib.sha256(f"{model_key}\0{plan.fingerprint()}".encode()).hexdigest()
    cached = cache_root / "evals" / f"{key}.json"
    try:
        return {**json.loads(cached.read_text()), "cached": True}
    except (OSError, ValueError):
        pass
    from slimtune.data.template import Template
    from slimtune.evaluate.backends import load_tokenizer
    from slimtune.evaluate.evaluator import evaluate_model

    folders = [ref.path] + ([ref.base_path] if ref.base_path else [])
    tokenizer = load_tokenizer(*folders)
    template = Template(plan.pre, tokenizer, columns=plan.rows.column_names)
    labels = meta.labels or _labels(plan.rows, template)
    result = evaluate_model(
        ref,
        plan.rows,
        template,
        labels=labels,
        metrics=plan.metrics,
        latency_runs=plan.latency_runs,
        add_special_tokens=plan.pre.add_special_tokens,
    )
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, cached)
    return result


def _labels(rows: Any, template: Any) -> list[str] | None:
    from slimtune.data.split import label_column_for

    column = label_column_for(rows, template.answer_column)
    return sorted(set(map(str, rows[column]))) if column else None


def check_goals(plan: EvalPlan, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Goals on the final stage, each against its baseline stage (`input` unless the goal names a pass)."""
    by_name = {s["stage"]: s for s in stages}
    final = stages[-1]
    results = []
    for ref in plan.refs:
        if ref.goal is None:
            continue
        base_name = ref.goal.baseline or "input"
        base = by_name.get(base_name)
        baseline = read(base["metrics"], ref.path) if base else None
        result = check_goal(ref, read(final["metrics"], ref.path), baseline)
        result.update(stage=final["stage"], baseline_stage=base_name)
        results.append(result)
    return results


def print_stage_table(stages: list[dict[str, Any]], goals: list[dict[str, Any]], source: str) -> None:
    print(f"\nevaluation on {source}:")
    print(f"{'stage':14} {'kind':8} {'accuracy':>9} {'invalid':>8} {'p50 ms':>8} {'tok/s':>7} {'size':>9}")
    for s in stages:
        m = s["metrics"]
        acc = read(m, ("accuracy",))
        p50 = read(m, ("latency", "e2e_ms", "p50"))
        tps = read(m, ("latency", "decode_tokens_per_s"))
        size = read(m, ("size_bytes",))
        print(
            f"{s['stage'][:14]:14} {s['kind']:8} {_fmt(acc, '{:.1%}'):>9} {_fmt(m.get('invalid'), '{}'):>8} "
            f"{_fmt(p50, '{:.0f}'):>8} {_fmt(tps, '{:.0f}'):>7} {_fmt(size and size / 1e6, '{:.0f}MB'):>9}"
        )
    for goal in goals:
        print(f"goal {describe_goal(goal)}")


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
