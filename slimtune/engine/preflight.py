"""Checks that run before any pass: everything a run needs that we can know without doing the work.
A problem found here costs the user seconds instead of a failed training run."""

from __future__ import annotations

from pathlib import Path

from slimtune.config.load import LoadedConfig
from slimtune.config.resolve import is_remote
from slimtune.errors import UserError

_NOT_YET = "is not implemented in this version of slimtune"


def check_systems(loaded: LoadedConfig) -> None:
    cfg = loaded.config
    for role in ("host", "target"):
        name = getattr(cfg, role)
        if name is None:
            continue
        system = cfg.systems[name]
        if system.type == "AzureML":
            raise UserError(
                f"{role} system `{name}` is AzureML, which {_NOT_YET}: running there needs the azure-ai-ml "
                f"package, Azure credentials and the workspace named in azureml_client. Point `{role}` at a "
                "LocalSystem to run here."
            )
        if system.type in ("Docker", "PythonEnvironment"):
            raise UserError(f"{role} system `{name}` is {system.type}, which {_NOT_YET}; use a LocalSystem")


def check_remote_inputs(loaded: LoadedConfig) -> None:
    cfg = loaded.config
    path = cfg.input_model.model_path
    if not isinstance(path, str):
        raise UserError(
            f"input_model.model_path is an Azure ML resource ({path.type}), which {_NOT_YET}: it needs the "
            "azure-ai-ml package and a workspace. Download the model and give its local folder."
        )
    if is_remote(path):
        raise UserError(
            f"input_model.model_path {path!r} is a remote store, which {_NOT_YET}; give a local path"
        )
    for data in cfg.data_configs:
        files = data.load_dataset_config.data_files
        values = (
            files if isinstance(files, list) else list(files.values()) if isinstance(files, dict) else [files]
        )
        for value in values:
            if value is None:
                continue
            if not isinstance(value, (str, list)):
                raise UserError(
                    f"data config `{data.name}`: data_files is an Azure ML datastore, which {_NOT_YET}: it needs "
                    "azure-ai-ml and the datastore's credentials. Download the file and give its path."
                )
            for item in value if isinstance(value, list) else [value]:
                if is_remote(item):
                    raise UserError(
                        f"data config `{data.name}`: {item!r} is a remote store, which {_NOT_YET}"
                    )
                if not any(c in item for c in "*?[") and not Path(item).exists():
                    raise UserError(f"data config `{data.name}`: data file not found: {item}")


def device_for(loaded: LoadedConfig) -> tuple[str, str]:
    """(torch device for the passes, execution provider for exported models)."""
    cfg = loaded.config
    host = cfg.systems.get(cfg.host) if cfg.host else None
    target = cfg.systems.get(cfg.target) if cfg.target else host
    wants_gpu = bool(host and any(a.device in ("gpu", "cuda") for a in host.accelerators))
    device = "cpu"
    if wants_gpu:
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                f"system `{cfg.host}` asks for a GPU, but no CUDA device is available here; "
                'set its accelerators to ["cpu"] to run on the CPU'
            )
        device = "cuda"
    ep = "cpu"
    if target:
        providers = [p for a in target.accelerators for p in (a.execution_providers or [])]
        names = {
            "CUDAExecutionProvider": "cuda",
            "CPUExecutionProvider": "cpu",
            "DmlExecutionProvider": "dml",
            "WebGpuExecutionProvider": "webgpu",
        }
        if providers:
            if providers[0] not in names:
                raise UserError(
                    f"execution provider {providers[0]!r} is not supported; one of {sorted(names)}"
                )
            ep = names[providers[0]]
        elif any(a.device in ("gpu", "cuda") for a in target.accelerators):
            ep = "cuda"
    return device, ep
