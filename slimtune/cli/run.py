"""`slimtune run --config FILE`: run the workflow."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("run", help="run a workflow config end to end")
    p.add_argument(
        "--config", required=True, help="config file (.json or .yaml), old or current Olive schema"
    )
    add_overrides(p)
    p.set_defaults(func=_run)


def add_overrides(p) -> None:
    """The options by which `run` (and `validate`, which must judge the same run) override the config."""
    p.add_argument("--output-dir", help="override the config's output_dir")
    p.add_argument("--cache-dir", help="override the config's cache_dir")
    p.add_argument(
        "--no-memory-check",
        action="store_true",
        help="run even when a pass's memory estimate exceeds the memory available (skip_memory_check)",
    )


def load_with_overrides(args):
    """The config of `args.config` with the command line's overrides applied."""
    from slimtune.config.load import load_config
    from slimtune.config.resolve import resolve_folder
    from slimtune.config.schema import folder_problem
    from slimtune.errors import UserError

    loaded = load_config(args.config)
    for key in ("output_dir", "cache_dir"):  # a folder or a storage URL, checked as the config's are
        value = getattr(args, key)
        if value:
            problem = folder_problem(value)
            if problem:
                raise UserError(f"--{key.replace('_', '-')} {value}: {problem}")
            setattr(loaded.config, key, resolve_folder(value))
    if args.no_memory_check:
        loaded.config.skip_memory_check = True
    return loaded


def _run(args) -> int:
    from slimtune.engine.runner import run_workflow

    return run_workflow(load_with_overrides(args), verbose=args.verbose)
