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
"""

from __future__ import annotations

from typing import Any

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
