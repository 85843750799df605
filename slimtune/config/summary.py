"""A readable summary of what a config will do."""

from __future__ import annotations

from typing import Any

from slimtune.config.load import LoadedConfig


def _value(v: Any) -> str:
    if hasattr(v, "model_dump"):
        v = v.model_dump(exclude_defaults=True)
    return str(v)


def plan_summary(loaded: LoadedConfig, verbose: bool = False, warnings: bool = True) -> str:
    cfg = loaded.config
    model = cfg.input_model
    lines = [f"config: {loaded.file}", f"model: {_value(model.model_path)} ({model.type}, task {model.task})"]
    load_kwargs = model.load_kwargs.model_dump(exclude_defaults=True)
    if load_kwargs:
        lines.append(f"  load_kwargs: {load_kwargs}")
    lines.append("data:")
    for data in cfg.data_configs:
        load, pre = data.load_dataset_config, data.pre_process_data_config
        lines.append(f"  {data.name}: {load.data_name} {_value(load.data_files)} split={load.split}")
        lines.append(f"    {pre.model_dump(exclude_defaults=True)}")
    if not cfg.data_configs:
        lines.append("  (none)")
    lines.append("passes (in order):")
    for i, plan in enumerate(loaded.passes, 1):
        params = plan.params.model_dump()
        lines.append(f"  {i}. {plan.name}: {plan.type}")
        for key, value in params.items():
            lines.append(f"       {key} = {value!r}")
        if plan.searched:
            points = plan.space.points()
            count = f"{len(points)} points" if points is not None else "continuous"
            lines.append(f"       searched ({count}; values above are the first point):")
            lines += [f"         {line}" for line in plan.space.describe()]
    if not loaded.passes:
        lines.append("  (none: the input model is only evaluated)")
    lines.append("systems:")
    for name, system in cfg.systems.items():
        accs = ", ".join(
            f"{a.device}{'[' + ','.join(a.execution_providers) + ']' if a.execution_providers else ''}"
            for a in system.accelerators
        )
        role = [r for r, v in (("host", cfg.host), ("target", cfg.target)) if v == name]
        lines.append(f"  {name}: {system.type} ({accs}){' <- ' + '/'.join(role) if role else ''}")
    if not cfg.systems:
        lines.append("  (none: local CPU)")
    if cfg.evaluators:
        lines.append(f"evaluators: {', '.join(cfg.evaluators)} (used: {cfg.evaluator or 'none'})")
    search = "off" if not cfg.search_strategy else _value(cfg.search_strategy)
    lines.append(f"search: {search}")
    lines.append(f"cache_dir: {cfg.cache_dir}")
    lines.append(f"output_dir: {cfg.output_dir}")
    if loaded.notes:
        if verbose:
            lines.append("mapped from the old schema:")
            lines += [f"  {n}" for n in loaded.notes]
        else:
            lines.append(f"{len(loaded.notes)} keys mapped from the old schema (--verbose lists them)")
    for w in loaded.warnings if warnings else ():
        lines.append(f"warning: {w}")
    return "\n".join(lines)
