"""One pass of a run hosted here, as an Azure ML command job: what a pass whose `host` names an AzureML system
becomes (`runner.py` submits it). Plain data, like `job.py`: nothing here imports an Azure package.

The code folder holds the pass as the engine hands it to any system (a `PassJob`: the pass's parameters and its
plain-data PassContext, its cache key) with every local path made a job input: the input model (and an
adapter's base), the data files, an adapter named in the parameters; user scripts travel in the code folder.
`${ENV}` values of the config stay references (their values travel as the job's environment variables, as for a
whole workflow). The job's entry (`entry.py --pass-job`) runs exactly that pass into a cache on the job's disk
and writes the committed entry to the job's output; the runner downloads it into the local cache under the same
key, checked against its manifest, and the run goes on here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from slimtune.config.load import LoadedConfig
from slimtune.config.resolve import is_remote
from slimtune.systems import PassJob
from slimtune.systems.azureml.job import (
    JobInput,
    JobPlan,
    _copy_user_scripts,
    _files,
    _safe,
    job_plan,
    placeholder,
)

PASS_JOB = "pass_job.json"
CODE = "code"  # the placeholder the entry fills with the code folder's path (user scripts)
# what the entry sets on the job's disk: the engine's paths of this machine mean nothing there
JOB_LOCAL = ("output_dir", "work_dir")


def build_pass_plan(
    job: PassJob, loaded: LoadedConfig, system_name: str, system: Any, code_dir: Path
) -> JobPlan:
    """Write the pass (pass_job.json), the wheel and the user scripts into `code_dir` and describe the job."""
    code_dir.mkdir(parents=True, exist_ok=True)
    inputs: list[JobInput] = []
    data = job.to_json()
    context = data["context"]
    _rewrite_model(context, inputs)
    for name, config in context["data_configs"].items():
        context["data_configs"][name] = _rewrite_data(name, config, inputs, loaded.config)
    _copy_user_scripts(loaded, context["data_configs"], code_dir, prefix=placeholder(CODE) + "/")
    path = data["params"].get("adapter_path")
    if isinstance(path, str) and not is_remote(path):
        inputs.append(JobInput("adapter", "uri_folder", path))
        data["params"]["adapter_path"] = placeholder("adapter")
    for key in JOB_LOCAL:
        context.pop(key, None)
    context["options"].pop("compiled_dir", None)
    data.pop("cache_root")
    text = _as_references(json.dumps(data, indent=2), loaded)
    (code_dir / PASS_JOB).write_text(text)
    identity = {"pass_key": job.key, "pass_job": json.loads(text)}
    entry = f"--pass-job {PASS_JOB}"
    return job_plan(loaded, system_name, system, code_dir, inputs, entry, identity, job.pass_name)


def _rewrite_model(context: dict[str, Any], inputs: list[JobInput]) -> None:
    model = context["input"]
    for field, name in (("path", "model"), ("base_path", "base")):
        path = model.get(field)
        if path and not is_remote(path):
            inputs.append(JobInput(name, "uri_file" if Path(path).is_file() else "uri_folder", path))
            model[field] = placeholder(name)


def _rewrite_data(
    name: str, config: dict[str, Any], inputs: list[JobInput], run_config: Any
) -> dict[str, Any]:
    """The data config with its local files (and datastore resources) as job inputs."""
    from slimtune.config.schema import DataConfig

    load = DataConfig.model_validate(config).load_dataset_config
    written = json.loads(json.dumps(config))
    target = written.setdefault("load_dataset_config", {})
    prefix = f"data_{_safe(name)}"
    if load.data_files is not None:
        target["data_files"] = _files(load.data_files, prefix, inputs, run_config)
    elif Path(load.data_name).is_absolute() and Path(load.data_name).exists():
        inputs.append(JobInput(prefix, "uri_folder", load.data_name))
        target["data_name"] = placeholder(prefix)
    return written


def _as_references(text: str, loaded: LoadedConfig) -> str:
    """The values the config took from `${NAME}` put back as references (the entry interpolates them from the
    job's environment, where `job_plan` puts them): a token never enters the code folder."""
    from slimtune.redact import MIN_LENGTH
    from slimtune.systems.azureml.job import _env_references as referenced

    for name, value in sorted(referenced(loaded).items(), key=lambda item: -len(item[1])):
        if len(value) >= MIN_LENGTH:
            escaped = json.dumps(value)[1:-1]
            text = re.sub(re.escape(escaped), lambda _m, n=name: "${" + n + "}", text)
    return text
