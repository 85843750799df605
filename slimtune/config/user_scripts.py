"""The user scripts a config names: paths resolved against the config file, each checked without running it.

Data configs (`user_script` with `pre_process_data_config.type` / `post_process_data_config.type`) and custom
metrics (`user_config.user_script` with `evaluate_func` / `metric_func`). A script that does not exist, or that
does not define the function named, is a config error naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimtune.config.resolve import resolve_path
from slimtune.config.schema import BUILTIN_PRE_PROCESS, CustomMetricConfig, RunConfig
from slimtune.errors import ConfigIssue
from slimtune.user_code import script_problem


def resolve_user_scripts(config: RunConfig, base: Path) -> list[ConfigIssue]:
    """Make every user_script / script_dir absolute (in place) and return the problems found."""
    issues: list[ConfigIssue] = []

    def check(prefix: str, holder: Any, functions: dict[str, str | None], installed: bool = False) -> None:
        if holder.user_script:
            holder.user_script = resolve_path(holder.user_script, base)
        if holder.script_dir:
            holder.script_dir = resolve_path(holder.script_dir, base)
            if not Path(holder.script_dir).is_dir():
                issues.append(ConfigIssue(f"{prefix}.script_dir", f"{holder.script_dir} is not a folder"))
        for key, message in script_problem(holder.user_script, functions, installed):
            issues.append(ConfigIssue(f"{prefix}.{key}", message))

    for index, data in enumerate(config.data_configs):
        pre = data.pre_process_data_config.type
        post = data.post_process_data_config.type if data.post_process_data_config else None
        check(
            f"data_configs[{index}]",
            data,
            {
                "pre_process_data_config.type": pre if pre not in BUILTIN_PRE_PROCESS else None,
                "post_process_data_config.type": post,
            },
        )
    for name, evaluator in config.evaluators.items():
        for index, metric in enumerate(evaluator.metrics):
            user = metric.user_config
            if isinstance(user, CustomMetricConfig):
                functions = {"evaluate_func": user.evaluate_func, "metric_func": user.metric_func}
                check(f"evaluators.{name}.metrics[{index}].user_config", user, functions, installed=True)
    return issues
