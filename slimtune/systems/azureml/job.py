"""The Azure ML job of a workflow, as plain data: what `sdk.py` turns into a `CommandJob` and what a local replay
of the job runs. Nothing here imports an Azure package, so the plan is built and tested without them.

The config in the code folder is the config as written (migrated to the current form, `${ENV}` references kept),
with every input replaced by a placeholder `{{input:NAME}}` that the job's entry (`entry.py`) fills with the path
where Azure ML mounted the input. The AzureML system becomes a LocalSystem with the same accelerators: inside the
job the run is local.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimtune.config.load import LoadedConfig
from slimtune.config.migrate import migrate
from slimtune.config.resolve import is_remote, resolve_path
from slimtune.errors import UserError

CONFIG_NAME = "config.json"
LIB_DIR = ".slimtune-lib"
OUTPUT = "output"  # the job's one output: output/ (model, run.json, reports) and cache/ (the pass outputs)
# a CUDA image of Azure ML's own curated set; the conda file adds Python and slimtune's pipeline packages
DEFAULT_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-cuda11.8-cudnn8-ubuntu22.04"
# in the job beside slimtune's own: the key vault (hf_token), the workspace's MLflow tracking
JOB_PACKAGES = ["azure-identity", "azure-keyvault-secrets", "azure-ai-ml", "mlflow", "azureml-mlflow"]


def placeholder(name: str) -> str:
    return "{{input:" + name + "}}"


PLACEHOLDER = re.compile(r"\{\{input:([A-Za-z0-9_]+)\}\}")


@dataclass
class JobInput:
    name: str
    type: str  # uri_file, uri_folder, custom_model, mlflow_model
    path: str  # a local path (uploaded by the SDK) or an azureml:// URI

    @property
    def local(self) -> bool:
        return not self.path.startswith(("azureml:", "https:", "wasbs:", "abfss:"))


@dataclass
class EnvironmentPlan:
    """One of: an existing environment (`existing`), an image with a conda file, a docker build context."""

    existing: str | None = None  # azureml:NAME:VERSION or azureml:NAME@LABEL
    image: str | None = None
    conda_file: str | None = None
    build_context: str | None = None
    dockerfile: str | None = None
    name: str | None = None
    version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class JobPlan:
    name: str  # from the workflow's key: a re-run of the same workflow finds its job
    key: str
    system: str
    code_dir: Path
    command: str
    inputs: list[JobInput]
    environment: EnvironmentPlan
    compute: str | None
    instance_count: int
    processes_per_instance: int  # with instance_count: the ranks of a data-parallel pass
    resources: dict[str, Any]
    tags: dict[str, str]
    environment_variables: dict[str, str]
    display_name: str
    experiment: str
    client: Any = None  # AzureMLClient: the system's, else the config's
    notes: list[str] = field(default_factory=list)


def build_plan(loaded: LoadedConfig, system_name: str, system: Any, code_dir: Path) -> JobPlan:
    """Write the code folder (config, wheel, user scripts, requirements) into `code_dir` and describe the job."""
    code_dir.mkdir(parents=True, exist_ok=True)
    cfg, _ = migrate(loaded.raw)  # `${ENV}` references stay references: no secret enters the code folder
    inputs: list[JobInput] = []
    _rewrite_model(loaded, cfg, inputs)
    _rewrite_data(loaded, cfg, inputs)
    _rewrite_pass_adapters(loaded, cfg, inputs)
    _copy_user_scripts(loaded, cfg, code_dir)
    _local_systems(cfg)
    for key in ("cache_dir", "output_dir"):  # the job's entry places both
        cfg.pop(key, None)
    if loaded.config.skip_memory_check:  # `--no-memory-check` given here holds there too
        cfg["skip_memory_check"] = True
    (code_dir / CONFIG_NAME).write_text(json.dumps(cfg, indent=2))
    from slimtune.files import fingerprint

    identity = {"config": cfg, "inputs": {i.name: fingerprint(i.path) if i.local else i.path for i in inputs}}
    return job_plan(loaded, system_name, system, code_dir, inputs, f"--config {CONFIG_NAME}", identity)


def job_plan(
    loaded: LoadedConfig,
    system_name: str,
    system: Any,
    code_dir: Path,
    inputs: list[JobInput],
    entry_args: str,
    identity: dict[str, Any],
    part: str | None = None,
) -> JobPlan:
    """The job around a code folder that holds what the entry runs (`entry_args`): slimtune's wheel, the
    requirements, the environment, the command. `identity`: what the job computes, besides the code and the
    machine (its name is a hash of both, so the same work finds the same job); `part`: the pass it runs, when
    it runs one (shown in the studio)."""
    from slimtune.systems.azureml.wheel import write_wheel

    wheel = write_wheel(code_dir)
    requirements = None
    if system.requirements_file:
        requirements = Path(system.requirements_file)
        if not requirements.is_file():
            raise UserError(f"systems.{system_name}.requirements_file: {requirements} does not exist")
        shutil.copy2(requirements, code_dir / "requirements.txt")
    environment = _environment(system_name, system, code_dir)
    client = system.azureml_client or loaded.config.azureml_client or _datastore_client(loaded.config)
    env_vars = {"SLIMTUNE_REMOTE_SYSTEM": system_name}
    env_vars.update(_env_references(loaded))
    if system.hf_token and client is not None and client.keyvault_name:
        env_vars["SLIMTUNE_KEYVAULT"] = client.keyvault_name
    command = _command(inputs, wheel.name, requirements is not None, bool(system.hf_token), entry_args)
    key = _job_key(identity, wheel, environment, system)
    label = loaded.config.workflow_id or (loaded.file.stem if loaded.file else "workflow")
    tags = {"slimtune_workflow_key": key, "slimtune_version": _version(), **(system.tags or {})}
    return JobPlan(
        name=f"slimtune-{key[:32]}",
        key=key,
        system=system_name,
        code_dir=code_dir,
        command=command,
        inputs=inputs,
        environment=environment,
        compute=system.aml_compute,
        instance_count=system.instance_count or 1,
        processes_per_instance=system.process_count_per_instance or 1,
        resources=dict(system.resources or {}),
        tags=tags,
        environment_variables=env_vars,
        display_name=f"slimtune {label}" + (f": {part}" if part else ""),
        experiment=_experiment(loaded, label),
        client=client,
    )


# ---------------------------------------------------------------- inputs


def _rewrite_model(loaded: LoadedConfig, cfg: dict[str, Any], inputs: list[JobInput]) -> None:
    model = loaded.config.input_model
    written = cfg["input_model"]
    path = model.model_path
    if not isinstance(path, str):  # a registry or workspace model: by URI
        if path.type == "azureml_registry_model":
            uri = f"azureml://registries/{path.registry_name}/models/{path.name}/versions/{path.version}"
        else:
            uri = f"azureml:{path.name}:{path.version}"
        kind = "mlflow_model" if (model.model_file_format or "").endswith("MLflow") else "custom_model"
        inputs.append(JobInput("model", kind, uri))
        written["model_path"] = placeholder("model")
    elif is_remote(path):
        if path.startswith("azureml://"):
            inputs.append(JobInput("model", "uri_folder", path))
            written["model_path"] = placeholder("model")
    elif Path(path).exists():
        local = Path(path)
        inputs.append(JobInput("model", "uri_file" if local.is_file() else "uri_folder", str(local)))
        written["model_path"] = placeholder("model")
    # else a known model name or a hub name: the job resolves it as a local run would
    if model.adapter_path:
        inputs.append(JobInput("adapter", "uri_folder", model.adapter_path))
        written["adapter_path"] = placeholder("adapter")


def _rewrite_data(loaded: LoadedConfig, cfg: dict[str, Any], inputs: list[JobInput]) -> None:
    for i, data in enumerate(loaded.config.data_configs):
        load = data.load_dataset_config
        written = cfg["data_configs"][i].setdefault("load_dataset_config", {})
        prefix = f"data_{i}"
        if load.data_files is not None:
            written["data_files"] = _files(load.data_files, prefix, inputs, loaded.config)
        elif Path(load.data_name).is_absolute() and Path(load.data_name).exists():
            inputs.append(JobInput(prefix, "uri_folder", load.data_name))
            written["data_name"] = placeholder(prefix)


def _files(value: Any, name: str, inputs: list[JobInput], config: Any) -> Any:
    if isinstance(value, list):
        return [_files(v, f"{name}_{j}", inputs, config) for j, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _files(v, f"{name}_{_safe(k)}", inputs, config) for k, v in value.items()}
    if isinstance(value, str):
        if any(c in value for c in "*?["):  # a pattern: its folder goes up, the pattern stays
            folder = Path(value).parent
            inputs.append(JobInput(name, "uri_folder", str(folder)))
            return f"{placeholder(name)}/{Path(value).name}"
        if value.startswith("azureml://"):
            inputs.append(JobInput(name, "uri_folder" if value.endswith("/") else "uri_file", value))
            return placeholder(name)
        if is_remote(value):
            return value  # http(s) and hub stores: read by the job as a local run would
        if not Path(value).exists():
            raise UserError(f"data file not found: {value} (it would be uploaded as job input `{name}`)")
        inputs.append(JobInput(name, "uri_folder" if Path(value).is_dir() else "uri_file", value))
        return placeholder(name)
    # an azureml_datastore resource
    client = value.azureml_client or config.azureml_client
    rel = value.relative_path.lstrip("/")
    if client and client.subscription_id and client.resource_group and client.workspace_name:
        uri = (
            f"azureml://subscriptions/{client.subscription_id}/resourcegroups/{client.resource_group}/"
            f"workspaces/{client.workspace_name}/datastores/{value.datastore_name}/paths/{rel}"
        )
    else:
        uri = f"azureml://datastores/{value.datastore_name}/paths/{rel}"
    inputs.append(JobInput(name, "uri_folder" if rel.endswith("/") else "uri_file", uri))
    return placeholder(name)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def _rewrite_pass_adapters(loaded: LoadedConfig, cfg: dict[str, Any], inputs: list[JobInput]) -> None:
    for plan in loaded.passes:
        path = getattr(plan.params, "adapter_path", None)
        entry = cfg["passes"].get(plan.name)
        if path and isinstance(entry, dict) and not is_remote(path):
            name = f"adapter_{_safe(plan.name)}"
            inputs.append(JobInput(name, "uri_folder", path))
            entry["adapter_path"] = placeholder(name)


def _copy_user_scripts(loaded: LoadedConfig, cfg: dict[str, Any], code_dir: Path, prefix: str = "") -> None:
    """user_script / script_dir files travel in the code folder, under user/, at the same relative paths
    (written as `prefix` + that path)."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("user_script", "script_dir") and isinstance(value, str):
                    source = Path(resolve_path(value, loaded.base_dir))
                    relative = Path("user") / _inside(source, loaded.base_dir)
                    target = code_dir / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if source.is_dir():
                        shutil.copytree(source, target, dirs_exist_ok=True)
                    elif source.is_file():
                        shutil.copy2(source, target)
                    node[key] = prefix + relative.as_posix()
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(cfg)


def _inside(path: Path, base: Path) -> Path:
    try:
        return path.resolve().relative_to(base.resolve())
    except ValueError:  # outside the config's folder: by name
        return Path(path.name)


def _datastore_client(config: Any) -> Any:
    """The source document names its workspace only in its datastore resources: the job goes to that one."""
    for data in config.data_configs:
        files = data.load_dataset_config.data_files
        if getattr(files, "azureml_client", None) is not None:
            return files.azureml_client
    return None


def _local_systems(cfg: dict[str, Any]) -> None:
    """Inside the job every system is the machine the job runs on."""
    for name, system in (cfg.get("systems") or {}).items():
        if isinstance(system, dict) and system.get("type") == "AzureML":
            cfg["systems"][name] = {"type": "LocalSystem", "accelerators": system.get("accelerators") or []}


def _env_references(loaded: LoadedConfig) -> dict[str, str]:
    """`${NAME}` references of the config: the job needs their values (the code folder holds the references)."""
    import os

    text = json.dumps(loaded.raw)
    names = sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)))
    return {n: os.environ[n] for n in names if n in os.environ}


# ---------------------------------------------------------------- environment, command, key


def _environment(system_name: str, system: Any, code_dir: Path) -> EnvironmentPlan:
    if system.aml_environment_config:
        env = system.aml_environment_config
        ref = f"azureml:{env.name}@{env.label}" if env.label else f"azureml:{env.name}:{env.version or '1'}"
        return EnvironmentPlan(existing=ref)
    docker = system.aml_docker_config
    where = f"systems.{system_name}.aml_docker_config"
    if docker is None:
        conda = code_dir.parent / "conda.yaml" if code_dir.name == "code" else code_dir / "conda.yaml"
        conda.write_text(default_conda_file())
        return EnvironmentPlan(image=DEFAULT_IMAGE, conda_file=str(conda))
    if docker.build_context_path:
        context = Path(docker.build_context_path)
        if not context.is_dir():
            raise UserError(f"{where}.build_context_path: {context} is not a folder")
        dockerfile = docker.dockerfile or "Dockerfile"
        if not (context / dockerfile).is_file():
            raise UserError(f"{where}.dockerfile: {dockerfile} not found in {context}")
        return EnvironmentPlan(
            build_context=str(context), dockerfile=dockerfile, name=docker.name, version=docker.version
        )
    if not docker.base_image:
        raise UserError(f"{where}: give base_image (with conda_file_path) or build_context_path")
    if docker.conda_file_path and not Path(docker.conda_file_path).is_file():
        raise UserError(f"{where}.conda_file_path: {docker.conda_file_path} does not exist")
    return EnvironmentPlan(
        image=docker.base_image, conda_file=docker.conda_file_path, name=docker.name, version=docker.version
    )


def default_conda_file() -> str:
    """Python and slimtune's pipeline packages (as the installed slimtune declares them), plus the job's own."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        declared = requires("slimtune") or []
    except PackageNotFoundError:
        declared = []
    pipeline = [r.split(";")[0].strip() for r in declared if 'extra == "pipeline"' in r]
    pip = "\n".join(f"      - {p}" for p in [*pipeline, *JOB_PACKAGES])
    return (
        "name: slimtune\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n"
        f"{pip}\n"
    )


def _command(inputs: list[JobInput], wheel: str, requirements: bool, hf_token: bool, entry_args: str) -> str:
    steps = []
    if requirements:
        steps.append("python -m pip install --quiet -r requirements.txt")
    steps.append(f"python -m pip install --quiet --no-deps --no-index --target {LIB_DIR} {wheel}")
    run = [f"PYTHONPATH={LIB_DIR}:$PYTHONPATH python -m slimtune.systems.azureml.entry {entry_args}"]
    run += [f"--input {i.name}=${{{{inputs.{i.name}}}}}" for i in inputs]
    run.append(f"--output ${{{{outputs.{OUTPUT}}}}}")
    if hf_token:
        run.append("--hf-token")
    steps.append(" ".join(run))
    return " && ".join(steps)


def _job_key(identity: dict[str, Any], wheel: Path, environment: EnvironmentPlan, system: Any) -> str:
    """Everything that shapes what the job computes: the same work has the same key, hence the same job."""
    from slimtune.files import sha256_file

    parts = {
        **identity,
        "slimtune": sha256_file(wheel),
        "environment": environment.as_dict() | _file_hashes(environment),
        "compute": system.aml_compute,
        "instance_count": system.instance_count,
        "process_count_per_instance": system.process_count_per_instance,
        "resources": system.resources,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_hashes(environment: EnvironmentPlan) -> dict[str, str]:
    from slimtune.files import fingerprint, sha256_file

    out = {}
    if environment.conda_file:
        out["conda_file"] = sha256_file(environment.conda_file)
    if environment.build_context:
        out["build_context"] = fingerprint(environment.build_context)
    return out


def _version() -> str:
    import slimtune

    return slimtune.__version__


def _experiment(loaded: LoadedConfig, label: str) -> str:
    tracking = loaded.config.tracking
    if tracking and tracking.mlflow and tracking.mlflow.experiment != "slimtune":
        return tracking.mlflow.experiment
    return _safe(f"slimtune-{label}")[:255]
