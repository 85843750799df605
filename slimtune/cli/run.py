"""`slimtune run --config FILE`: run the workflow."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("run", help="run a workflow config end to end")
    p.add_argument(
        "--config", required=True, help="config file (.json or .yaml), old or current Olive schema"
    )
    add_overrides(p)
    p.add_argument(
        "--print-job",
        metavar="DIR",
        help="AzureML host: write DIR/job.yml and DIR/code (for `az ml job create --file`) instead of submitting",
    )
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
    from slimtune.systems.azureml import remote_system

    loaded = load_with_overrides(args)
    remote = remote_system(loaded.config)
    if remote or args.print_job:  # the whole run goes to an Azure ML job
        from slimtune.systems.azureml.remote import print_job, run_remote

        if remote is None:
            from slimtune.errors import UserError

            raise UserError("--print-job: the config's host (or target) is not an AzureML system")
        if args.print_job:
            from pathlib import Path

            return print_job(loaded, *remote, Path(args.print_job))
        return run_remote(loaded, *remote)
    from slimtune.engine.runner import run_workflow

    return run_workflow(loaded, verbose=args.verbose)
