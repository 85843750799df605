"""transformers TrainingArguments as configs write them: old names mapped, unknown names rejected.

The list of valid names is read from transformers when it is importable and from a snapshot otherwise,
so `slimtune validate` checks training_args without importing transformers.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

# removed from transformers 5 (see SPEC.md): old name -> how it maps
OLD_TRAINING_ARGS = {
    "evaluation_strategy": "eval_strategy",
    "warmup_ratio": "warmup_steps (as a ratio of total steps)",
    "group_by_length": "train_sampling_strategy='group_by_length'",
}
# deprecated in transformers 5 (a FutureWarning on every run; removed in v6): old name -> current name
RENAMED_TRAINING_ARGS = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}
# set by slimtune itself: the pass owns where checkpoints go
RESERVED_TRAINING_ARGS = {"output_dir"}
# numbers TrainingArguments takes on trust (a 0 batch size or a negative epoch count fails deep inside the
# Trainer, or trains nothing): name -> (integer?, smallest value, smallest is allowed?, other allowed values)
NUMERIC_TRAINING_ARGS: dict[str, tuple[bool, float, bool, tuple]] = {
    "learning_rate": (False, 0, False, ()),
    "num_train_epochs": (False, 0, False, ()),
    "max_steps": (True, 1, True, (-1,)),
    "per_device_train_batch_size": (True, 1, True, ()),
    "per_device_eval_batch_size": (True, 1, True, ()),
    "gradient_accumulation_steps": (True, 1, True, ()),
    "eval_accumulation_steps": (True, 1, True, ()),
    "warmup_steps": (False, 0, True, ()),
    "weight_decay": (False, 0, True, ()),
    "max_grad_norm": (False, 0, True, ()),
    "adam_beta1": (False, 0, True, ()),
    "adam_beta2": (False, 0, True, ()),
    "adam_epsilon": (False, 0, False, ()),
    "logging_steps": (False, 0, False, ()),
    "save_steps": (False, 0, False, ()),
    "eval_steps": (False, 0, False, ()),
    "save_total_limit": (True, 1, True, ()),
    "seed": (True, 0, True, ()),
    "data_seed": (True, 0, True, ()),
    "dataloader_num_workers": (True, 0, True, ()),
}


def _numeric_problem(key: str, value: Any) -> str | None:
    """Why `value` cannot be `key`, or None. null is left to transformers (it means the default)."""
    import math

    integer, low, low_ok, allowed = NUMERIC_TRAINING_ARGS[key]
    if value is None or value in allowed and not isinstance(value, bool):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a {'whole number' if integer else 'number'}, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if integer and value != int(value):
        return f"must be a whole number, got {value!r}"
    if value < low or (value == low and not low_ok):
        bound = f"at least {low:g}" if low_ok else f"> {low:g}"
        extra = f" (or {', '.join(map(str, allowed))})" if allowed else ""
        return f"must be {bound}{extra}, got {value!r}"
    return None


@cache
def training_arg_names() -> frozenset[str]:
    snapshot = json.loads((Path(__file__).with_name("training_args_fields.json")).read_text())
    return frozenset(snapshot["fields"])


def migrate_training_args(args: dict[str, Any], note) -> dict[str, Any]:
    """Map the old names to transformers 5 names; `note(old, new)` records each mapping."""
    out = dict(args)
    if "evaluation_strategy" in out:
        value = out.pop("evaluation_strategy")
        out.setdefault("eval_strategy", value)
        note("evaluation_strategy", "eval_strategy")
    ratio = out.get("warmup_ratio")
    if isinstance(ratio, (int, float)) and 0 <= ratio < 1 and not out.get("warmup_steps"):
        # transformers 5 reads a float in [0, 1) as a ratio of total steps; validation rejects ratios >= 1
        out["warmup_steps"] = float(out.pop("warmup_ratio"))
        note("warmup_ratio", "warmup_steps")
    for old, new in RENAMED_TRAINING_ARGS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
            note(old, new)
    if "group_by_length" in out:
        if out.pop("group_by_length"):
            out.setdefault("train_sampling_strategy", "group_by_length")
        note("group_by_length", "train_sampling_strategy")
    return out


def check_training_args(args: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for each key transformers does not know or slimtune sets itself."""
    import difflib

    names = training_arg_names()
    problems = []
    if "warmup_ratio" in args:  # left by the migration: it could not be mapped
        ratio = args["warmup_ratio"]
        if args.get("warmup_steps"):
            problems.append(("warmup_ratio", "given together with warmup_steps; keep one"))
        else:
            problems.append(("warmup_ratio", f"must be a number in [0, 1), got {ratio!r}"))
    for key in args:
        if key == "warmup_ratio":
            continue
        if key in NUMERIC_TRAINING_ARGS:
            problem = _numeric_problem(key, args[key])
            if problem:
                problems.append((key, problem))
                continue
        if key in RESERVED_TRAINING_ARGS:
            problems.append((key, "is set by slimtune (checkpoints go to the cache); remove it"))
        elif key not in names:
            close = difflib.get_close_matches(key, sorted(names | set(OLD_TRAINING_ARGS)), n=2, cutoff=0.7)
            hint = f"; did you mean {' / '.join(f'`{c}`' for c in close)}?" if close else ""
            problems.append((key, f"unknown training argument{hint}"))
    return problems
