"""A workflow as an Azure ML job, from the local side: check, submit (or attach to the job this workflow started
before), stream its logs, and bring its outputs home: the run's output folder into output_dir, every pass output
into the local cache under the key the job gave it.

The job's name comes from the workflow's key (`job.build_plan`): a re-run of the same workflow finds the job it
started, attaches to it while it runs and downloads what it made once it finished, instead of submitting twice.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from slimtune.config.load import LoadedConfig
from slimtune.errors import EXIT_INTERNAL, EXIT_OK, UserError
from slimtune.systems.azureml import check_system
from slimtune.systems.azureml.entry import EXIT_CODE_FILE, PATHS_FILE
from slimtune.systems.azureml.job import OUTPUT, JobPlan, build_plan

RUNNING = {"NotStarted", "Starting", "Provisioning", "Preparing", "Queued", "Running", "Finalizing"}
LAST_LINES = 20


def check_remote_config(loaded: LoadedConfig, system_name: str, system: Any) -> None:
    """What the job needs that the config alone tells: checked before any credential is asked for."""
    from slimtune.engine.input_checks import check_plan

    check_plan(loaded)
    check_system(system_name, system)
    for plan in loaded.passes:
        other = loaded.config.systems[plan.host] if plan.host else None
        if other is not None and other.type != system.type:
            raise UserError(
                f"passes.{plan.name}.host: `{plan.host}` is a {other.type}, and the run's host (or target) "
                f"`{system_name}` sends the whole workflow to one Azure ML job. To split the run, host it here "
                f"(host and target a LocalSystem) and set `host: {system_name}` on the passes that go to Azure ML"
            )
    if (system.instance_count or 1) * (system.process_count_per_instance or 1) > 1:
        raise UserError(
            f"systems.{system_name}.instance_count: a whole workflow runs as one process on one node (merging, "
            "export and evaluation do not spread over nodes). To train on several nodes, host the training pass "
            f"alone on Azure ML (`host: {system_name}` on the LoRA pass, the run's host and target a LocalSystem): "
            "that pass's job runs one rank per process"
        )


def check_job(loaded: LoadedConfig, system_name: str, system: Any) -> None:
    """`slimtune validate`: the job built and validated by the SDK, in a folder thrown away (no Azure call)."""
    from slimtune.systems.azureml.sdk import command_job, validate

    check_remote_config(loaded, system_name, system)
    with tempfile.TemporaryDirectory(prefix="slimtune-job-") as tmp:
        plan = build_plan(loaded, system_name, system, Path(tmp) / "code")
        validate(command_job(plan))
    print(f"Azure ML job {plan.name} on compute {plan.compute}: validated by azure-ai-ml (not submitted)")


def print_job(loaded: LoadedConfig, system_name: str, system: Any, folder: Path) -> int:
    from slimtune.systems.azureml.sdk import print_job as write_job
    from slimtune.systems.azureml.sdk import reset_folder

    check_remote_config(loaded, system_name, system)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # built beside DIR and moved in when complete: a failure leaves DIR as it was
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        plan = build_plan(loaded, system_name, system, Path(tmp) / "code")
        write_job(plan, Path(tmp))
        reset_folder(folder)
        for item in Path(tmp).iterdir():
            item.rename(folder / item.name)
    path = folder / "job.yml"
    print(f"wrote {path} and {folder / 'code'}/ (job {plan.name})")
    print(f"submit it with: az ml job create --file {path}")
    for name in plan.environment_variables:
        if name not in ("SLIMTUNE_REMOTE_SYSTEM", "SLIMTUNE_KEYVAULT"):
            print(f"note: ${{{name}}} of the config travels as the job's environment variable {name}")
    return EXIT_OK


def run_remote(loaded: LoadedConfig, system_name: str, system: Any) -> int:
    """The job submitted is the one `--print-job` writes: job.yml read back by the SDK's `load_job`."""
    from azure.ai.ml import load_job

    from slimtune.systems.azureml.sdk import print_job as write_job
    from slimtune.systems.azureml.workspace import connect, quiet_azure_logs

    check_remote_config(loaded, system_name, system)
    with tempfile.TemporaryDirectory(prefix="slimtune-job-") as tmp:
        plan = build_plan(loaded, system_name, system, Path(tmp) / "code")
        job = load_job(write_job(plan, Path(tmp)))
        quiet_azure_logs()
        ml = connect(plan.client, plan.compute)  # credentials, workspace, compute: before any upload
        name = submit_or_attach(ml, job, plan)
    return follow(ml, name, loaded)


def submit_or_attach(ml: Any, job: Any, plan: JobPlan) -> str:
    """The job of this workflow: attached to while it runs, reused when it completed, else submitted (a failed or
    cancelled one is kept and a new one gets the next free name)."""
    from azure.core.exceptions import ResourceNotFoundError

    for attempt in range(1, 100):
        name = plan.name if attempt == 1 else f"{plan.name}-{attempt}"
        try:
            existing = ml.jobs.get(name)
        except ResourceNotFoundError:
            job.name = name
            created = ml.jobs.create_or_update(job)
            print(f"submitted Azure ML job {created.name}: {created.studio_url}")
            return created.name
        if status(existing) in RUNNING or status(existing) == "Completed":
            print(
                f"attached to Azure ML job {name} ({status(existing)}), started earlier by the same workflow"
            )
            return name
    raise UserError(f"job {plan.name}: 99 earlier attempts failed; look at them in the studio")


def follow(ml: Any, name: str, loaded: LoadedConfig | None) -> int:
    """Stream the logs until the job ends (Ctrl-C asks whether to cancel it), then download its outputs."""
    try:
        error = stream(ml, name)
    except KeyboardInterrupt:
        offer_cancel(ml, name)
        return 130
    job = ml.jobs.get(name)
    if status(job) != "Completed":
        print(f"error: Azure ML job {name} ended {status(job)}: {studio(job)}", file=sys.stderr)
        for line in failure_lines(ml, job, error):
            print(f"  {line}", file=sys.stderr)
        return EXIT_INTERNAL
    if loaded is None:
        return EXIT_OK
    cfg = loaded.config
    return download(ml, name, Path(cfg.output_dir), Path(cfg.cache_dir))


def offer_cancel(ml: Any, name: str) -> None:
    """After Ctrl-C: cancel the job if the user says so (without a terminal to ask on, it keeps running)."""
    if ask(f"\ncancel Azure ML job {name}? [y/N] "):
        ml.jobs.begin_cancel(name)
        print(f"asked Azure ML to cancel job {name}")
    else:
        print(f"job {name} keeps running; `slimtune jobs logs {name}` follows it again")


def stream(ml: Any, name: str) -> str | None:
    """Print the job's log as it grows, until the job ends; the error of a failed job."""
    from azure.ai.ml.exceptions import JobException

    try:
        ml.jobs.stream(name)
    except JobException as err:
        if "streaming for the run interrupted" in err.message:  # the SDK's word for Ctrl-C
            raise KeyboardInterrupt from None
        return err.message  # a failed job: `follow` says it with the log's last lines
    return None


def ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower() in ("y", "yes")
    except (EOFError, KeyboardInterrupt):
        return False


def status(job: Any) -> str:
    """The job's status as the studio shows it (the SDK gives an enum or a string)."""
    return str(getattr(job.status, "value", job.status))


def studio(job: Any) -> str:
    return getattr(job, "studio_url", None) or ""


def failure_lines(ml: Any, job: Any, error: str | None = None) -> list[str]:
    """The job's error (its messages), and the last lines of its user log when it can be read."""
    lines = _messages(error) if error else []
    return lines + log_lines(ml, job.name)[-LAST_LINES:]


def log_lines(ml: Any, name: str) -> list[str]:
    """The user log of a job that ended (the SDK streams only a running job's); [] when it cannot be read."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ml.jobs.download(name, download_path=tmp, all=False)
        except Exception:  # the logs are a courtesy; the status already says how the job ended
            return []
        logs = sorted(Path(tmp).rglob("std_log*.txt")) or sorted(Path(tmp).rglob("*.txt"))
        return logs[0].read_text(errors="replace").splitlines() if logs else []


def _messages(error: str) -> list[str]:
    """The `message` fields of the error the SDK reports (JSON after a prefix), else its text."""
    import json

    try:
        data = json.loads(error[error.index("{") :])
    except ValueError:
        return error.strip().splitlines()
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "message" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)

    walk(data)
    return found or error.strip().splitlines()


def download(ml: Any, name: str, output_dir: Path, cache_dir: Path) -> int:
    """The job's output into output_dir (model, run.json, reports) and its cache entries into cache_dir; the
    exit code slimtune had in the job."""
    with tempfile.TemporaryDirectory(prefix="slimtune-download-") as tmp:
        ml.jobs.download(name, download_path=tmp, output_name=OUTPUT)
        found = [p for p in Path(tmp).rglob(EXIT_CODE_FILE)]
        if not found and list(Path(tmp).rglob("cache/entries/*/entry.json")):
            raise UserError(
                f"Azure ML job {name} ran one pass of a run hosted here (`host` on the pass): run that workflow "
                "again, it finds the job and takes the pass's output into its cache"
            )
        if not found:
            raise UserError(
                f"Azure ML job {name}: its output holds no slimtune run ({EXIT_CODE_FILE} missing)"
            )
        root = found[0].parent
        place_outputs(root, output_dir, cache_dir)
        code = int((root / EXIT_CODE_FILE).read_text().strip() or 1)
    print(f"downloaded job {name}: {output_dir}")
    return code


def place_outputs(root: Path, output_dir: Path, cache_dir: Path) -> None:
    """root/output -> output_dir; root/cache/entries/KEY -> cache_dir/entries/KEY (kept when there already);
    run.json's paths on the job's disk now point to the local copies."""
    from slimtune.files import write_json_atomic

    entries = root / "cache" / "entries"
    local_entries = cache_dir / "entries"
    if entries.is_dir():
        local_entries.mkdir(parents=True, exist_ok=True)
        for entry in entries.iterdir():
            target = local_entries / entry.name
            if not target.exists():
                tmp = local_entries / f".{entry.name}.download"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(entry, tmp)
                tmp.rename(target)
    source = root / "output"
    if source.is_dir():
        output_dir.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            target = output_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                shutil.copy2(item, target)
    record = output_dir / "run.json"
    paths = root / PATHS_FILE
    if record.is_file() and paths.is_file():
        import json

        text = record.read_text()
        job = json.loads(paths.read_text())
        for remote, local in ((job["cache"], cache_dir), (job["output"], output_dir)):
            text = text.replace(json.dumps(remote)[1:-1], json.dumps(str(local.resolve()))[1:-1])
        write_json_atomic(record, json.loads(text))
