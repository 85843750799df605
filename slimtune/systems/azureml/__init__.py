"""Running a whole workflow as an Azure ML command job.

`slimtune run` sends the run here when the config's `host` (or `target`) names a system of type AzureML. The
parts, in the order a run meets them:

- `job.py`: the job as plain data (`JobPlan`): the code folder (the config rewritten so that every input is a job
  input, slimtune's own wheel, user scripts), the inputs (local files to upload, datastore paths and registry
  models by URI), the environment, the command. No Azure package is imported there.
- `wheel.py`: slimtune's installed files as a wheel, so the job runs the same version.
- `sdk.py`: the plan as an `azure.ai.ml` `CommandJob`, and `--print-job` (job.yml + code folder).
- `workspace.py`: credentials, workspace and compute, each checked before anything is uploaded.
- `remote.py`: submit (or attach to the job of the same workflow), stream the logs, download the outputs into
  output_dir and the local cache; `slimtune jobs` uses it too.
- `entry.py`: what the job runs on Azure ML: the inputs put into the config, the HF token from the key vault,
  `slimtune run`, the cache entries copied to the job's output.

One pass alone (its `host` names an AzureML system, the run's host is local) goes through the systems registry
like a Ray pass: `pass_job.py` (the pass's PassJob as a job), `runner.py` (submit, stream, the committed entry
downloaded into the local cache, checked against its manifest); the entry runs it with `--pass-job`.
"""

from __future__ import annotations

from typing import Any

from slimtune.errors import UserError
from slimtune.systems import SystemSpec, register_system

REMOTE_TYPE = "AzureML"


def remote_system(config: Any) -> tuple[str, Any] | None:
    """(name, system) of the AzureML system that runs this workflow, or None for a local run. The host runs the
    passes; a target on Azure ML (and a local host) means the same: the run goes where its model is evaluated."""
    for role in ("host", "target"):
        name = getattr(config, role)
        system = config.systems.get(name) if name else None
        if system is not None and system.type == REMOTE_TYPE:
            return name, system
    return None


def check_system(system_name: str, system: Any) -> None:
    """What an AzureML system needs that its settings alone tell (no Azure call)."""
    if not system.aml_compute:
        raise UserError(
            f"systems.{system_name}.aml_compute: not given; name the Azure ML compute cluster the job runs on"
        )
    if (system.instance_count or 1) > 1 and system.process_count_per_instance is None:
        raise UserError(
            f"systems.{system_name}.process_count_per_instance: with instance_count {system.instance_count}, give "
            "the processes per node: one per GPU of the compute's VM size (e.g. 4 for Standard_NC96ads_A100_v4)"
        )


def check(name: str, system: Any) -> None:
    """A pass hosted on Azure ML: the SDK installed and the system's settings (no Azure call)."""
    import importlib.util

    try:
        installed = importlib.util.find_spec("azure.ai.ml") is not None
    except ModuleNotFoundError:  # no azure namespace at all
        installed = False
    if not installed:
        raise UserError(
            f"systems.{name} is an AzureML system, and the Azure ML SDK is not installed here: "
            "pip install 'slimtune[azureml]' (azure-ai-ml azure-identity)"
        )
    check_system(name, system)


register_system(
    SystemSpec(
        type=REMOTE_TYPE,
        connect="slimtune.systems.azureml.runner:connect",
        summary="one pass as an Azure ML command job, its output back in the local cache",
        check=check,
    )
)
