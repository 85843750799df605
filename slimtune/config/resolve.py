"""Relative paths in a config resolve against the config file's folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

REMOTE_PREFIXES = (
    "az://",
    "abfs://",
    "abfss://",
    "azureml://",
    "s3://",
    "https://",
    "http://",
    "hf://",
    "gs://",
)
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_remote(value: str) -> bool:
    return value.startswith(REMOTE_PREFIXES)


def resolve_path(value: str, base: Path) -> str:
    if is_remote(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def resolve_model_path(value: str, base: Path) -> tuple[str, str | None]:
    """(resolved path or name, warning). Known model names and hub names stay names."""
    from slimtune.models.known import KNOWN_MODELS

    if value in KNOWN_MODELS or is_remote(value):
        return value, None
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = (base / candidate).resolve()
    if candidate.exists():
        return str(candidate), None
    if _HUB_NAME.match(value) and not value.startswith("."):
        return value, f"model `{value}` is not a local path; it will be read as a hub name (needs network)"
    return str(candidate), f"model path {candidate} does not exist"


def _files(value: Any, base: Path, warnings: list[str], client: Any = None) -> Any:
    if isinstance(value, str) and value.startswith("azureml://datastores/") and client is not None:
        from slimtune.storage.azureml import WORKSPACE_KEYS, datastore_uri

        workspace = client.model_dump()
        if all(workspace.get(k) for k in WORKSPACE_KEYS):  # the short form, in the config's workspace
            datastore, _, path = value[len("azureml://datastores/") :].partition("/paths/")
            return datastore_uri(datastore, path, workspace)
    if isinstance(value, str):
        resolved = resolve_path(value, base)
        if (
            not is_remote(resolved)
            and not any(ch in resolved for ch in "*?[")
            and not Path(resolved).exists()
        ):
            warnings.append(f"data file {resolved} does not exist")
        return resolved
    if isinstance(value, list):
        return [_files(v, base, warnings, client) for v in value]
    if isinstance(value, dict):
        return {k: _files(v, base, warnings, client) for k, v in value.items()}
    if getattr(value, "azureml_client", "absent") is None and client is not None:
        value.azureml_client = client  # a datastore or job output resource: the config's workspace
    return value  # a remote resource


def resolve_paths(config: Any, plans: list, base: Path) -> list[str]:
    warnings: list[str] = []
    model = config.input_model
    if isinstance(model.model_path, str):
        model.model_path, warning = resolve_model_path(model.model_path, base)
        if warning:
            warnings.append(warning)
    if model.adapter_path:
        model.adapter_path = resolve_path(model.adapter_path, base)
    for data in config.data_configs:
        load = data.load_dataset_config
        if load.data_files is not None:
            load.data_files = _files(load.data_files, base, warnings, config.azureml_client)
        elif load.data_name not in ("json", "csv", "parquet", "text") and Path(base, load.data_name).exists():
            load.data_name = resolve_path(load.data_name, base)
    config.cache_dir = resolve_path(config.cache_dir, base)
    config.output_dir = resolve_path(config.output_dir, base)
    for system in config.systems.values():
        docker = system.aml_docker_config
        if docker and docker.conda_file_path:
            docker.conda_file_path = resolve_path(docker.conda_file_path, base)
        if system.python_environment_path:
            system.python_environment_path = resolve_path(system.python_environment_path, base)
    for plan in plans:
        resolve_pass_params(plan.params, base)
    return warnings


def resolve_pass_params(params: Any, base: Path) -> None:
    if getattr(params, "adapter_path", None):
        params.adapter_path = resolve_path(params.adapter_path, base)
