"""Why a fine-tune does not learn the task, from the config alone (for `slimtune validate`, before any work) and
from a finished run (the run summary, run.json's `diagnosis`, the reports).

Light: no torch, transformers or datasets. The patterns are the ones that made the source document's recipe
end at 0% (SPEC.md): rows joined into blocks with the loss on every token, a max_steps that covers a small
share of one epoch, answers cut off by max_seq_len. The fix is the recipe measured to learn the emotion task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimtune.config.load import LoadedConfig

SMALL_EPOCH_SHARE = 0.5  # max_steps covering less than this share of one epoch is too few
MOST_INVALID = 0.5  # more than this share of answers naming no label: the model does not answer
EXAMPLES = 3

# what learns the emotion task on the default model (SPEC.md, measured): 97.8% on held-out rows
RECIPE_DATA = {"strategy": "line-by-line", "loss_on_answer_only": True}
RECIPE_PASS = {"r": 16, "alpha": 32, "target_modules": "all-linear"}
RECIPE_TRAINING = {"learning_rate": 3e-4, "num_train_epochs": 1, "max_steps": -1}


@dataclass
class Advice:
    code: str  # whole_text_loss, few_steps, answers_cut
    text: str  # one plain sentence naming the config keys and values


@dataclass
class _Training:
    name: str  # the pass
    params: Any
    data: Any  # its training data config
    eval_size: float | None


def _training_passes(loaded: LoadedConfig) -> list[_Training]:
    from slimtune.passes.registry import get_pass

    by_name = {d.name: d for d in loaded.config.data_configs}
    found = []
    for plan in loaded.passes:
        spec = get_pass(plan.type)
        training = spec.training_of(plan.params) if spec else None
        if training is not None and training.data in by_name:
            size = None if training.eval_data else training.eval_size
            found.append(_Training(plan.name, plan.params, by_name[training.data], size))
    return found


def config_advice(loaded: LoadedConfig, train_rows: dict[str, int] | None = None) -> list[Advice]:
    """Patterns in the config that keep a training pass from learning a labelled task. `train_rows`: the
    training rows each pass had (from a run); otherwise counted from local files when that is cheap."""
    found: list[Advice] = []
    for t in _training_passes(loaded):
        pre = t.data.pre_process_data_config
        answer = _answer_column(pre)
        if answer is None:
            continue  # not a prompt -> answer task: the loss on every token is what the user wants
        where = f"data config `{t.data.name}`"
        if pre.strategy != "line-by-line":
            found.append(
                Advice(
                    "whole_text_loss",
                    f"{where} uses strategy {pre.strategy}: rows are joined into {pre.max_seq_len}-token blocks "
                    "and the loss is on every token of the joined text, so the model learns to continue text, "
                    f"not to write {{{answer}}} after the prompt (use strategy line-by-line with "
                    "loss_on_answer_only: true)",
                )
            )
        elif not pre.loss_on_answer_only:
            found.append(
                Advice(
                    "whole_text_loss",
                    f"{where} has loss_on_answer_only off: the loss is on the whole text, prompt included, so "
                    f"little of the training signal is about {{{answer}}} (set loss_on_answer_only: true)",
                )
            )
        steps = _few_steps(t, (train_rows or {}).get(t.name))
        if steps:
            found.append(Advice("few_steps", f"pass `{t.name}`: {steps}"))
    return found


def _answer_column(pre: Any) -> str | None:
    from slimtune.data.template import Template

    try:
        return Template(pre, None).answer_column
    except Exception:  # a template problem is validation's to report, not advice's
        return None


def _few_steps(t: _Training, rows: int | None) -> str | None:
    args = t.params.training_args or {}
    steps = args.get("max_steps")
    if not isinstance(steps, int) or steps <= 0:
        return None
    rows = rows if rows is not None else _count_training_rows(t)
    if not rows:
        return None
    batch = int(args.get("per_device_train_batch_size") or 8)
    accumulation = int(args.get("gradient_accumulation_steps") or 1)
    seen = steps * batch * accumulation
    share = seen / rows
    if share >= SMALL_EPOCH_SHARE:
        return None
    return (
        f"max_steps {steps} covers {share:.0%} of one epoch ({steps} steps x batch {batch} x accumulation "
        f"{accumulation} = {seen:,} of {rows:,} training rows); train for one epoch (max_steps: -1, "
        "num_train_epochs: 1)"
    )


def _count_training_rows(t: _Training) -> int | None:
    """Rows of a local JSON / JSON lines / CSV training file, less the held-out share; None when not cheap."""
    load = t.data.load_dataset_config
    files = load.data_files
    if not isinstance(files, str):
        return None
    path = Path(files)
    try:
        if not path.is_file() or path.stat().st_size > 64 << 20:
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl", ".ndjson"):
        if text.lstrip().startswith("["):
            try:
                rows = len(json.loads(text))
            except ValueError:
                return None
        else:
            rows = sum(1 for line in text.splitlines() if line.strip())
    elif suffix in (".csv", ".tsv"):
        rows = max(0, sum(1 for line in text.splitlines() if line.strip()) - 1)
    else:
        return None
    for limit in (load.max_samples, t.data.pre_process_data_config.max_samples):
        if limit:
            rows = min(rows, limit)
    if t.eval_size:
        held = round(rows * t.eval_size) if t.eval_size < 1 else int(t.eval_size)
        rows -= held
    return rows if rows > 0 else None


# ---------------------------------------------------------------- after a run


def diagnose_run(
    loaded: LoadedConfig, records: list[dict[str, Any]], evaluation: dict[str, Any] | None
) -> dict[str, Any] | None:
    """When a trained stage does not beat the input model on the task, or most of its answers name no label:
    what happened, a few answers beside the expected ones, the likely causes and a config snippet that fixes
    them. None when training worked (or nothing says whether it did)."""
    trained = {t.name for t in _training_passes(loaded)}
    stages = [s for s in (evaluation or {}).get("stages") or [] if isinstance(s, dict)]
    names = [s["stage"] for s in stages]
    first = next((i for i, n in enumerate(names) if n in trained), None)
    if first is None:
        return None
    base = next((s for s in stages if s["stage"] == "input"), None)
    base_accuracy = _accuracy(base)
    failed = []
    for stage in stages[first:]:
        accuracy, m = _accuracy(stage), stage.get("metrics") or {}
        if accuracy is None:
            continue
        invalid, n = m.get("invalid") or 0, m.get("n") or 0
        no_gain = base_accuracy is not None and accuracy <= base_accuracy
        if no_gain or (n and invalid > MOST_INVALID * n):
            failed.append(stage)
    if not failed:
        return None

    parts = []
    for stage in failed:
        m = stage["metrics"]
        parts.append(
            f"{stage['stage']} {m['accuracy']:.1%} ({m.get('invalid', 0)} of {m.get('n', 0)} invalid)"
        )
    base_text = f"the input model scores {base_accuracy:.1%}" if base_accuracy is not None else ""
    summary = (
        f"The fine-tune did not learn the task: {', '.join(parts)}"
        + (f"; {base_text}" if base_text else "")
        + ". Invalid: the answer names no label."
    )
    rows = {r["name"]: (r.get("metrics") or {}).get("train_samples") for r in records}
    causes = [a.text for a in config_advice(loaded, _line_by_line_rows(loaded, rows))]
    causes += _answers_cut(records)
    if not causes:
        causes.append(
            "no pattern known to fail was found in the config; compare the answers above with the template"
        )
    return {
        "summary": summary,
        "stages": [s["stage"] for s in failed],
        "examples": _examples(failed),
        "causes": causes,
        "fix": fix_snippet(loaded, records),
    }


def _accuracy(stage: dict[str, Any] | None) -> float | None:
    value = ((stage or {}).get("metrics") or {}).get("accuracy")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _line_by_line_rows(loaded: LoadedConfig, samples: dict[str, Any]) -> dict[str, int]:
    """Training samples a pass recorded, where one sample is one row (joined blocks are not rows)."""
    return {
        t.name: samples[t.name]
        for t in _training_passes(loaded)
        if isinstance(samples.get(t.name), int) and t.data.pre_process_data_config.strategy == "line-by-line"
    }


def _answers_cut(records: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in records:
        cut = (r.get("metrics") or {}).get("answers_cut")
        if isinstance(cut, dict) and cut.get("rows"):
            out.append(
                f"pass `{r['name']}`: {cut['rows']} of {cut.get('of', '?')} training rows are longer than "
                f"max_seq_len {cut.get('max_seq_len')} (the longest {cut.get('longest')} tokens), so their answer "
                f"was cut off; raise max_seq_len to at least {cut.get('longest')}"
            )
    return out


def _examples(failed: list[dict[str, Any]]) -> list[dict[str, str]]:
    stage = failed[-1]  # the final model's answers, normally
    m = stage["metrics"]
    shown = list(m.get("invalid_examples") or []) + list(m.get("wrong_examples") or [])
    return [
        {"stage": stage["stage"], "output": str(e.get("output", "")), "expected": str(e.get("expected", ""))}
        for e in shown[:EXAMPLES]
        if isinstance(e, dict)
    ]


def fix_snippet(loaded: LoadedConfig, records: list[dict[str, Any]] | None = None) -> str:
    """The recipe that learns the task, as the keys to set in this config (its own format and names)."""
    trainings = _training_passes(loaded)
    longest = {
        r["name"]: (r.get("metrics") or {}).get("answers_cut", {}).get("longest") for r in records or []
    }
    data, passes = [], {}
    for t in trainings:
        pre: dict[str, Any] = dict(RECIPE_DATA)
        if isinstance(longest.get(t.name), int):
            pre["max_seq_len"] = longest[t.name]
        data.append({"name": t.data.name, "pre_process_data_config": pre})
        passes[t.name] = {**RECIPE_PASS, "training_args": dict(RECIPE_TRAINING)}
    snippet = {"data_configs": data, "passes": passes}
    if loaded.file is not None and loaded.file.suffix.lower() == ".json":
        return json.dumps(snippet, indent=2)
    import yaml

    return yaml.safe_dump(snippet, sort_keys=False).rstrip()


def format_diagnosis(diagnosis: dict[str, Any]) -> str:
    """The diagnosis as console text."""
    lines = ["", diagnosis["summary"]]
    if diagnosis.get("examples"):
        lines.append("Answers (model -> expected):")
        lines += [f"  {e['stage']}: {e['output']!r} -> {e['expected']!r}" for e in diagnosis["examples"]]
    lines.append("Likely causes:")
    lines += [f"  - {c}" for c in diagnosis["causes"]]
    lines.append("What learns such a task (merge into the config; the keys of the current schema):")
    lines += [f"  {line}" for line in diagnosis["fix"].splitlines()]
    return "\n".join(lines)
