"""The AzureML system as a runner of single passes: a pass whose `host` names an AzureML system, in a run hosted
here, runs as an Azure ML command job (`pass_job.py`), and its output comes home into the local cache.

The engine holds the pass's cache key lock and hands over a PassJob, as it does to Ray. The runner builds the
job (the same `--print-job` form a whole workflow takes: job.yml read back by the SDK's `load_job`), connects to
the workspace on first use (credentials, workspace, compute: checked before anything is uploaded), submits it
or attaches to the job the same pass started before (the job's name is a hash of the pass's cache key, the
code and the machine), streams its log, and downloads the job's output: the committed cache entry, placed under
the same key after every file was checked against the entry's manifest. The next passes and the evaluation run
here on it; a re-run finds it in the cache and submits nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from slimtune.errors import PassFailed, UserError
from slimtune.passes.registry import get_pass
from slimtune.systems import PassJob


def connect(name: str, system: Any, device: str, loaded: Any = None) -> AzureMLRunner:
    from slimtune.systems.azureml.sdk import import_sdk

    import_sdk()
    if loaded is None:
        raise UserError(f"systems.{name}: an AzureML system runs a pass of a run only (`host` on the pass)")
    return AzureMLRunner(name, system, loaded)


class AzureMLRunner:
    def __init__(self, name: str, system: Any, loaded: Any) -> None:
        self.name, self.system, self.loaded = name, system, loaded
        self.ml: Any = None  # the workspace's MLClient, on the first pass

    def capacity(self) -> int:
        return 1  # the compute cluster's free nodes are not known here: one job at a time

    def run_pass(self, job: PassJob) -> dict[str, Any]:
        from azure.ai.ml import load_job

        from slimtune.engine.cache import Cache
        from slimtune.systems.azureml.pass_job import build_pass_plan
        from slimtune.systems.azureml.remote import submit_or_attach
        from slimtune.systems.azureml.sdk import print_job as write_job
        from slimtune.systems.azureml.workspace import connect as connect_workspace

        check_pass(self.name, self.system, job.pass_name, job.pass_type)
        with tempfile.TemporaryDirectory(prefix="slimtune-job-") as tmp:
            plan = build_pass_plan(job, self.loaded, self.name, self.system, Path(tmp) / "code")
            submitted = load_job(write_job(plan, Path(tmp)))
            if self.ml is None:
                self.ml = connect_workspace(plan.client, plan.compute)
            name = submit_or_attach(self.ml, submitted, plan)
        self._wait(name, job.pass_name)
        cache = Cache(job.cache_root)
        return bring_home(self.ml, name, cache, job.key, job.pass_name).info

    def _wait(self, name: str, pass_name: str) -> None:
        from slimtune.systems.azureml.remote import failure_lines, offer_cancel, status, stream, studio

        try:
            error = stream(self.ml, name)
        except KeyboardInterrupt:
            offer_cancel(self.ml, name)
            raise
        done = self.ml.jobs.get(name)
        if status(done) != "Completed":
            lines = "".join(f"\n  {line}" for line in failure_lines(self.ml, done, error))
            raise PassFailed(
                f"passes.{pass_name}: Azure ML job {name} ended {status(done)}: {studio(done)}{lines}"
            )

    def close(self) -> None:
        self.ml = None


def check_pass(system_name: str, system: Any, pass_name: str, pass_type: str) -> None:
    """Several ranks train one pass only where the pass trains data-parallel."""
    ranks = (system.instance_count or 1) * (system.process_count_per_instance or 1)
    if ranks > 1 and get_pass(pass_type).data_parallel is None:
        raise UserError(
            f"passes.{pass_name}.host: `{system_name}` runs {ranks} processes (instance_count x "
            f"process_count_per_instance), and {pass_type} does not train data-parallel; host it on an AzureML "
            "system with one node and one process"
        )


def bring_home(ml: Any, name: str, cache: Any, key: str, pass_name: str) -> Any:
    """The job's output downloaded beside the cache's entries, the entry of `key` checked against its manifest
    and placed under that key."""
    from slimtune.systems.azureml.job import OUTPUT

    folder = cache.root / "tmp" / f"{key}.{os.getpid()}.azureml"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        ml.jobs.download(name, download_path=str(folder), output_name=OUTPUT)
        found = [p.parent for p in folder.rglob("entry.json") if p.parent.name == key]
        if not found:
            raise PassFailed(
                f"passes.{pass_name}: Azure ML job {name} finished without cache entry {key} in its output"
            )
        try:
            entry = cache.adopt(key, found[0])
        except ValueError as err:
            raise PassFailed(
                f"passes.{pass_name}: the output of Azure ML job {name} does not match its manifest: {err}"
            ) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"      from Azure ML job {name}: cache entry {key[:12]}.. ({pass_name})", flush=True)
    return entry
