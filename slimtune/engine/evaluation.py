"""Evaluating every stage of a run on the same rows with the same settings, and checking goals.

Which rows: the data config the metrics name (or the training pass's data). When that is the data a training
pass trained on with a held-out share (`eval_dataset_size`), the rows are the split that pass recorded in its
output (heldout.json): the very rows training never saw, read rather than recomputed. With no evaluator in the
config, a run that fine-tunes on a labelled template is still evaluated (accuracy, latency, size on up to
DEFAULT_MAX_ROWS held-out rows): the quality gate is on by default. Results are cached by model and evaluation
settings, so a re-run does not evaluate again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimtune.config.load import LoadedConfig
from slimtune.evaluate.goals import MetricRef, check_goal, describe_goal, metric_refs, read, required_metrics
from slimtune.files import write_json_atomic
from slimtune.models.ref import ModelMeta, ModelRef
from slimtune.units import fmt_bytes

if TYPE_CHECKING:
    from slimtune.engine.chain import Chain, Session

DEFAULT_METRICS = ["accuracy", "latency", "size"]
DEFAULT_MAX_ROWS = 100
EVAL_VERSION = 3  # bump when evaluation results change for the same inputs


@dataclass
class EvalPlan:
    data_name: str
    source: str  # human description of the rows
    rows: Any  # datasets.Dataset (all rows of the data config when `split_from` is set)
    pre: Any  # PreProcessDataConfig
    metrics: list[str]
    refs: list[MetricRef] = field(default_factory=list)
    data_fingerprint: str = ""
    latency_runs: int = 20
    split_from: str | None = None  # the training pass whose recorded held-out split selects the rows
    max_rows: int | None = None
    indices: list[int] | None = None  # the rows evaluated, once chosen
    data: Any = None  # the DataConfig of the rows (its post_process function applies to answers)
    custom: list[Any] = field(default_factory=list)  # metrics of type custom (evaluate/custom.py)
    answers: str | None = None  # what the rows' answers are: "labels", "text" or None (evaluate/text_metrics)

    def _data_fingerprint(self) -> str:
        from slimtune.data.fingerprint import data_fingerprint

        self.data_fingerprint = data_fingerprint(self.data)  # remote data: its content, fetched by the run
        return self.data_fingerprint

    def fingerprint(self) -> str:
        payload = {
            "data": self.data_fingerprint or self._data_fingerprint(),
            "rows": len(self.rows),
            "indices": self.indices,
            "source": self.source,
            "pre": self.pre.model_dump(mode="json"),
            "metrics": self.metrics,
            "latency_runs": self.latency_runs,
            "version": EVAL_VERSION,
        }
        if (
            self.custom
        ):  # the metric configs and their code (a script's content, an installed package's version)
            from slimtune.user_code import origin_of

            payload["custom"] = [
                [
                    m.model_dump(mode="json"),
                    origin_of(
                        m.user_config.user_script, m.user_config.evaluate_func or m.user_config.metric_func
                    ),
                ]
                for m in self.custom
            ]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def for_chain(self, chain: Chain) -> EvalPlan:
        """This plan with its rows chosen for `chain`: the held-out rows its training pass recorded."""
        rows, source, indices = self.rows, self.source, None
        if self.split_from is not None:
            stage = next((s for s in chain.stages if s.name == self.split_from), None)
            if stage is None:
                raise RuntimeError(f"evaluation rows come from pass {self.split_from}, which did not run")
            from slimtune.data.split import read_heldout

            indices = read_heldout(stage.model.path)["eval_indices"]
            rows = self.rows.select(indices)
            source = f"held-out split of {self.data_name} ({len(rows)} rows never trained on)"
        elif self.max_rows:
            indices = list(range(len(rows)))
        if self.max_rows and len(rows) > self.max_rows:
            rows, indices = rows.select(range(self.max_rows)), indices[: self.max_rows]
            source += f", first {self.max_rows}"
        return replace(self, rows=rows, source=source, indices=indices, split_from=None, max_rows=None)


def plan_evaluation(loaded: LoadedConfig, load: Any = None) -> EvalPlan | None:
    """What every stage will be evaluated on, decided before any pass runs: the rows, and the metrics that fit
    them. With no evaluator, the metrics follow the answers (DEFAULT_METRICS for labels, TEXT_METRICS for
    free text such as conversations, perplexity when there is no answer to compare); an evaluator's metric
    that the rows cannot give (accuracy on free-text answers) is refused here, not after training.
    `load`: data config -> rows (default: load_data); None from it means the rows cannot be read here."""
    from slimtune.data.fingerprint import data_fingerprint, names_remote
    from slimtune.data.user_script import load_data
    from slimtune.passes.registry import get_pass

    load = load or load_data

    cfg = loaded.config
    evaluator = cfg.evaluators.get(cfg.evaluator) if cfg.evaluator else None
    if evaluator is None and cfg.evaluator is None and len(cfg.evaluators) == 1:
        evaluator = next(iter(cfg.evaluators.values()))  # one evaluator defined: it is the one meant
    trainer, training = next(
        ((p, t) for p in loaded.passes if (t := get_pass(p.type).training_of(p.params)) is not None),
        (None, None),
    )
    if evaluator is not None and evaluator.metrics:
        refs = metric_refs(evaluator.metrics)
        metrics = required_metrics(evaluator.metrics)
        custom = [m for m in evaluator.metrics if m.type == "custom"]
        named = [m.data_config for m in evaluator.metrics if m.data_config]
        data_name = named[0] if named else (training.data if training else None)
        max_rows, chosen = None, False
    elif training is not None and (training.eval_size or training.eval_data):
        refs, metrics, data_name, max_rows = [], list(DEFAULT_METRICS), training.data, DEFAULT_MAX_ROWS
        custom, chosen = [], True
    else:
        return None
    if data_name is None:
        if "accuracy" in metrics or "perplexity" in metrics or custom:
            from slimtune.errors import UserError

            raise UserError(
                "evaluators: accuracy, perplexity and custom metrics need rows: set `data_config` on the metric"
            )
        return None
    data = next(d for d in cfg.data_configs if d.name == data_name)
    split_from = None
    if training is not None and data_name == training.data and training.eval_data:
        data = next(d for d in cfg.data_configs if d.name == training.eval_data)
        rows = load(data)
        source = f"data config {data.name}, the training pass's evaluation data ({_count(rows)} rows)"
    else:
        rows = load(data)
        source = f"data config {data_name} ({_count(rows)} rows)"
        if training is not None and data_name == training.data and training.eval_size:
            split_from = trainer.name
    answers = None
    if rows is not None:
        metrics, answers = fit_metrics(metrics, data, rows, chosen)
    return EvalPlan(
        data.name,
        source,
        rows,
        data.pre_process_data_config,
        metrics,
        refs,
        "" if names_remote(data) else data_fingerprint(data),  # remote: computed when the run evaluates
        latency_runs=20 if evaluator else 5,
        split_from=split_from,
        max_rows=max_rows,
        data=data,
        custom=custom,
        answers=answers,
    )


TEXT_METRICS = ["text_match", "perplexity", "latency", "size"]  # free-text answers: exact match, token F1
UNANSWERED_METRICS = ["perplexity", "latency", "size"]  # rows with nothing to compare an answer with
_NEEDS_LABELS = {"accuracy": "accuracy", "likelihood": "accuracy (likelihood_accuracy)"}


def fit_metrics(metrics: list[str], data: Any, rows: Any, chosen: bool) -> tuple[list[str], str | None]:
    """(the metrics to compute, what the answers are). `chosen`: slimtune picked `metrics` itself (no
    evaluator), so they are replaced by those the answers support; metrics the config asks for that the rows
    cannot give are a UserError naming the fix."""
    from slimtune.data.template import Template
    from slimtune.errors import UserError
    from slimtune.evaluate.text_metrics import answer_kind

    template = Template(data.pre_process_data_config, None, columns=rows.column_names)
    answers = answer_kind(template, rows)
    if chosen:
        return list(
            {"labels": DEFAULT_METRICS, "text": TEXT_METRICS}.get(answers, UNANSWERED_METRICS)
        ), answers
    what = (
        f"its answers are free text ({len({template.answer(r) for r in rows})} distinct in {len(rows)} rows)"
        if answers == "text"
        else f"it has no answer to compare with ({template.describe()!r} does not end with an answer field)"
    )
    for metric, name in _NEEDS_LABELS.items():
        if metric in metrics and answers != "labels":
            raise UserError(
                f"evaluators: {name} needs answers that are labels, but data config `{data.name}` {what}; "
                + (
                    "use the accuracy sub_types exact_match and token_f1, or perplexity"
                    if answers == "text"
                    else "use perplexity, or a text_template that ends with the answer field"
                )
            )
    if "text_match" in metrics and answers is None:
        raise UserError(
            f"evaluators: exact_match / token_f1 need a reference answer per row, but data config "
            f"`{data.name}` {what}; use perplexity"
        )
    return metrics, answers


def _count(rows: Any) -> str:
    return "?" if rows is None else str(len(rows))


def describe_evaluation(loaded: LoadedConfig) -> str:
    """One line for `slimtune validate`: the metrics and the rows every stage will be evaluated on. Reads
    local data files without `datasets` (data/light.py); rows it cannot read that way are described as
    decided when the run reads them."""
    from slimtune.data.light import read_rows
    from slimtune.evaluate.text_metrics import describe_metrics

    plan = plan_evaluation(loaded, load=read_rows)
    if plan is None:
        return "evaluation: none (no evaluator, and no training pass with held-out rows)"
    if plan.rows is None:
        return (
            f"evaluation: {describe_metrics(plan.metrics)} on data config {plan.data_name} (its rows are read "
            "when the run starts; the metrics are checked against them then)"
        )
    noun = "conversations" if plan.pre.messages_col or "messages" in plan.rows.column_names else "rows"
    count, where = len(plan.rows), f"data config {plan.data_name}"
    if plan.split_from is not None:
        from slimtune.data.split import label_column_for, split_indices
        from slimtune.data.template import Template

        template = Template(plan.pre, None, columns=plan.rows.column_names)
        from slimtune.passes.registry import get_pass

        train_pass = next(p for p in loaded.passes if p.name == plan.split_from)
        size = get_pass(train_pass.type).training_of(train_pass.params).eval_size
        _, held = split_indices(
            plan.rows, size, label_column_for(plan.rows, template.answer_column), seed=plan.pre.random_seed
        )
        count, where = len(held), f"{plan.data_name}, never trained on"
        noun = "held-out " + noun
    if plan.max_rows:
        count = min(count, plan.max_rows)
    return f"evaluation: {describe_metrics(plan.metrics)} on {count} {noun} ({where})"


def evaluate_chain(session: Session, chain: Chain, only: set[str] | None = None):
    """(evaluation record, goal verdicts) for a chain's stages: all of them, or those named in `only` (the
    final stage is always evaluated: goals are checked on it)."""
    plan = session.eval_plan.for_chain(chain)
    needs_input = any(
        r.goal is not None and (r.goal.baseline or "input") == "input" and r.goal.type != "threshold"
        for r in plan.refs
    )
    evaluate_input = session.loaded.config.evaluate_input_model or needs_input
    stages = []
    last = len(chain.stages) - 1
    for index, stage in enumerate(chain.stages):
        if index == 0 and not evaluate_input:
            continue
        if only is not None and index != last and stage.name not in only:
            continue
        print(f"evaluating {stage.name} ({stage.model.kind}) on {len(plan.rows)} rows...", flush=True)
        metrics = evaluate_stage(plan, stage.model, stage.key, session.cache.root, stage.meta)
        if metrics.get("note"):
            print(f"  note: {metrics['note']}", flush=True)
        stages.append(
            {
                "stage": stage.name,
                "label": "input model" if index == 0 else stage.name,
                "kind": stage.model.kind,
                "path": stage.model.path,
                "metrics": metrics,
            }
        )
    goals = check_goals(plan, stages) if stages else []
    if not any(r.goal is not None for r in plan.refs):
        goals += default_goals(stages)
    data = {"source": plan.source, "rows": len(plan.rows), "data_config": plan.data_name}
    if plan.indices is not None:
        data["indices"] = plan.indices
    return {"data": data, "metrics": plan.metrics, "stages": stages}, goals


def evaluate_stage(plan: EvalPlan, ref: ModelRef, model_key: str, cache_root: Path, meta: ModelMeta) -> dict:
    """Metrics of one stage, from the evaluation cache when this model was evaluated the same way before."""
    from slimtune.evaluate.conditions import contended

    key = hashlib.sha256(f"{model_key}\0{plan.fingerprint()}".encode()).hexdigest()
    cached = cache_root / "evals" / f"{key}.json"
    try:
        known = json.loads(cached.read_text())
    except (OSError, ValueError):
        known = None
    if known is not None and not contended(known.get("latency")):
        return {**known, "cached": True}  # deterministic metrics, and a latency taken with the machine quiet
    metrics = plan.metrics
    if known is not None:  # only the latency was taken under load: measure it again, keep the rest
        share = ((known.get("latency") or {}).get("conditions") or {}).get("other_cpu_share")
        taken = (
            f"with {share:.0%} of the CPUs busy with other work"
            if share is not None
            else "with no record of load"
        )
        print(f"      cached latency of this model was taken {taken}: measuring it again", flush=True)
        metrics = ["latency"]
    from slimtune.data.template import Template
    from slimtune.data.user_script import post_processor
    from slimtune.evaluate.evaluator import evaluate_model
    from slimtune.models.hf import load_tokenizer

    folders = [ref.path] + ([ref.base_path] if ref.base_path else [])
    tokenizer = load_tokenizer(*folders)
    template = Template(plan.pre, tokenizer, columns=plan.rows.column_names)
    labels = meta.labels or _labels(plan.rows, template)
    result = evaluate_model(
        ref,
        plan.rows,
        template,
        labels=labels,
        metrics=metrics,
        latency_runs=plan.latency_runs,
        add_special_tokens=plan.pre.add_special_tokens,
        post_process=post_processor(plan.data),
    )
    if known is not None:
        result = {**known, "latency": result["latency"]}
        write_json_atomic(cached, result, indent=None)
        return result
    if plan.custom:
        from slimtune.evaluate.custom import custom_metrics

        result["custom"] = custom_metrics(
            plan.custom,
            ref,
            plan.rows,
            template,
            add_special_tokens=plan.pre.add_special_tokens,
            post_process=post_processor(plan.data),
        )
    write_json_atomic(cached, result, indent=None)
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


DEFAULT_MAX_ACCURACY_DROP = 0.02  # 2 points: the quality gate of a run that set no goal


def default_goals(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """With no goal in the config and a labelled task evaluated, the final model is held to within 2 points of
    the best earlier stage (the input model aside: it was not fine-tuned), so that an export that loses what
    training gained is never a quiet success."""
    final, earlier = stages[-1] if stages else None, [s for s in stages[:-1] if s["stage"] != "input"]
    scored = [(read(s["metrics"], ("accuracy",)), s) for s in earlier]
    scored = [(value, s) for value, s in scored if value is not None]
    if final is None or not scored:
        return []
    best_value, best = max(scored, key=lambda pair: pair[0])
    ref = MetricRef(
        "accuracy",
        ("accuracy",),
        True,
        0,
        _DefaultGoal("max-degradation", DEFAULT_MAX_ACCURACY_DROP, best["stage"]),
    )
    result = check_goal(ref, read(final["metrics"], ("accuracy",)), best_value)
    result.update(stage=final["stage"], baseline_stage=best["stage"], default=True)
    return [result]


@dataclass
class _DefaultGoal:
    type: str
    value: float
    baseline: str


def print_stage_table(stages: list[dict[str, Any]], goals: list[dict[str, Any]], source: str) -> None:
    print(f"\nevaluation on {source}:")
    # the quality columns the stages have: label accuracy, or exact match / token F1 of free text; perplexity
    quality = [
        (title, path, pattern)
        for title, path, pattern in (
            ("accuracy", ("accuracy",), "{:.1%}"),
            ("invalid", ("invalid",), "{:.0f}"),
            ("exact", ("exact_match",), "{:.1%}"),
            ("tok F1", ("token_f1",), "{:.3f}"),
            ("ppl", ("perplexity",), "{:.3f}"),
        )
        if any(read(s["metrics"], path) is not None for s in stages)
    ] or [("accuracy", ("accuracy",), "{:.1%}")]
    head = "".join(f" {title:>9}" for title, _, _ in quality)
    print(f"{'stage':14} {'kind':8}{head} {'p50 ms':>8} {'tok/s':>7} {'size':>10}")
    for s in stages:
        m = s["metrics"]
        cells = "".join(f" {_fmt(read(m, path), pattern):>9}" for _, path, pattern in quality)
        p50 = read(m, ("latency", "e2e_ms", "p50"))
        tps = read(m, ("latency", "decode_tokens_per_s"))
        size = read(m, ("size_bytes",))
        print(
            f"{s['stage'][:14]:14} {s['kind']:8}{cells} "
            f"{_fmt(p50, '{:.0f}'):>8} {_fmt(tps, '{:.0f}'):>7} {'-' if size is None else fmt_bytes(size):>10}"
        )
    for s in stages:
        custom = s["metrics"].get("custom") or {}
        values = [f"{name}-{sub}={value:.4g}" for name, subs in custom.items() for sub, value in subs.items()]
        if values:
            print(f"{s['stage'][:14]:14} custom: {', '.join(values)}")
    for goal in goals:
        note = " [default goal: no goal set in the config]" if goal.get("default") else ""
        print(f"goal {describe_goal(goal)}{note}")


def _fmt(value: Any, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)
