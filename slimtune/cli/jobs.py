"""`slimtune jobs status|logs|cancel|download NAME`: an Azure ML job that `slimtune run` started earlier."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("jobs", help="status, logs, cancel or download of an Azure ML job started by `run`")
    p.add_argument("action", choices=["status", "logs", "cancel", "download"])
    p.add_argument("name", help="the job's name, as `slimtune run` printed it")
    p.add_argument("--config", help="the run's config: its AzureML system names the workspace")
    p.add_argument(
        "--output-dir", help="download: where the run's output goes (default: the config's output_dir)"
    )
    p.add_argument("--cache-dir", help="download: the local cache (default: the config's cache_dir)")
    p.set_defaults(func=_jobs)


def _jobs(args) -> int:
    from pathlib import Path

    from slimtune.errors import EXIT_OK, UserError
    from slimtune.systems.azureml import REMOTE_TYPE, remote_system
    from slimtune.systems.azureml.remote import (
        RUNNING,
        download,
        failure_lines,
        follow,
        log_lines,
        status,
        studio,
    )
    from slimtune.systems.azureml.sdk import import_sdk
    from slimtune.systems.azureml.workspace import connect

    import_sdk()
    client, output_dir, cache_dir = None, args.output_dir, args.cache_dir
    if args.config:
        from slimtune.config.load import load_config

        loaded = load_config(args.config)
        systems = loaded.config.systems  # the run's, else one that a pass alone goes to
        remote = remote_system(loaded.config) or next(
            ((n, s) for n, s in systems.items() if s.type == REMOTE_TYPE), None
        )
        client = (remote[1].azureml_client if remote else None) or loaded.config.azureml_client
        output_dir = output_dir or loaded.config.output_dir
        cache_dir = cache_dir or loaded.config.cache_dir
    ml = connect(client)
    from azure.core.exceptions import ResourceNotFoundError

    try:
        job = ml.jobs.get(args.name)
    except ResourceNotFoundError:
        raise UserError(f"no Azure ML job {args.name!r} in workspace {ml.workspace_name}") from None
    if args.action == "status":
        print(f"{job.name}: {status(job)} {studio(job)}")
        for line in failure_lines(ml, job) if status(job) in ("Failed", "Canceled") else []:
            print(f"  {line}")
        return EXIT_OK
    if args.action == "cancel":
        ml.jobs.begin_cancel(args.name)
        print(f"asked Azure ML to cancel job {args.name}")
        return EXIT_OK
    if args.action == "logs":
        if status(job) in RUNNING:
            return follow(ml, args.name, None)
        print("\n".join(log_lines(ml, args.name)))
        return EXIT_OK
    if not output_dir:
        raise UserError("jobs download: give --output-dir (or --config)")
    return download(ml, args.name, Path(output_dir), Path(cache_dir or ".slimtune-cache"))
