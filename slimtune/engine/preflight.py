"""Checks that run before any pass: everything a run needs that we can know without doing the work.
A problem found here costs the user seconds instead of a failed training run.

`engine.input_checks.check_before_run` calls these in order, for `slimtune run` and `slimtune validate` alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slimtune.config.load import LoadedConfig
from slimtune.config.resolve import is_remote
from slimtune.errors import UserError
from slimtune.systems import needs_runner, pass_device

_NOT_YET = "is not implemented in this version of slimtune"


def check_systems(loaded: LoadedConfig) -> None:
    from slimtune.systems import get_system

    cfg = loaded.config
    roles = [("host", cfg.host), ("target", cfg.target)]
    roles += [(f"passes.{plan.name}.host", plan.host) for plan in loaded.passes if plan.host]
    for role, name in roles:
        if name is None:
            continue
        system = cfg.systems[name]
        if system.type == "AzureML" and not role.startswith("passes."):
            # `slimtune run` sends these to a job (slimtune.systems.azureml) before the engine sees them
            raise UserError(
                f"{role} system `{name}` is AzureML: the run goes to an Azure ML job, not this machine "
                f"(`slimtune run` submits it; `slimtune run --print-job DIR` writes it). Point `{role}` at a "
                f"LocalSystem to run here, or set `host: {name}` on one pass to run that pass alone there."
            )
        spec = get_system(system.type)
        if spec is not None:  # a registered system checks its own settings
            if spec.check is not None:
                spec.check(name, system)
            continue
        if system.type in ("Docker", "PythonEnvironment"):
            raise UserError(f"{role} system `{name}` is {system.type}, which {_NOT_YET}; use a LocalSystem")


def check_remote_inputs(loaded: LoadedConfig) -> None:
    """Remote inputs this version cannot read are refused; a model at a storage URL is downloaded into the cache
    (its local copy replaces the URL from here on: the checks and passes read a folder); local data files must
    exist (remote ones are fetched, and their problems named, when their rows are checked)."""
    from slimtune.storage import is_remote_url

    cfg = loaded.config
    if not is_remote_url(cfg.cache_dir):
        from slimtune.storage.download import set_download_root

        set_download_root(cfg.cache_dir)
    path = cfg.input_model.model_path
    if isinstance(path, str) and is_remote_url(path) and not path.startswith("azureml://registries/"):
        from slimtune.storage.download import fetch_model

        cfg.input_model.model_path = str(fetch_model(path))
    elif isinstance(path, str) and is_remote(path) and not path.startswith("hf://"):
        raise UserError(
            f"input_model.model_path {path!r} is a remote store, which {_NOT_YET}; give a local path"
        )
    for data in cfg.data_configs:
        files = data.load_dataset_config.data_files
        values = (
            files if isinstance(files, list) else list(files.values()) if isinstance(files, dict) else [files]
        )
        for value in values:
            if value is None or not isinstance(value, (str, list)):
                continue  # a datastore or job output resource: read with the rows
            for item in value if isinstance(value, list) else [value]:
                if is_remote_url(item):
                    continue
                if is_remote(item):
                    raise UserError(
                        f"data config `{data.name}`: {item!r} is a remote store, which {_NOT_YET}"
                    )
                if not any(c in item for c in "*?[") and not Path(item).exists():
                    raise UserError(f"data config `{data.name}`: data file not found: {item}")


def device_for(loaded: LoadedConfig) -> tuple[str, str]:
    """(torch device for the passes, execution provider for exported models).

    A GPU whose only providers are DirectML / WebGPU (the seed's Windows target) is a target for the exported
    model, not a device torch trains on: training and merging use CUDA when present, else the CPU."""
    cfg = loaded.config
    host = cfg.systems.get(cfg.host) if cfg.host else None
    target = cfg.systems.get(cfg.target) if cfg.target else host
    wants_gpu = bool(host and any(a.device in ("gpu", "cuda") for a in host.accelerators))
    host_providers = {p for a in (host.accelerators if host else []) for p in (a.execution_providers or [])}
    export_only = bool(host_providers) and host_providers <= {
        "DmlExecutionProvider",
        "WebGpuExecutionProvider",
    }
    device = "cpu"
    if wants_gpu and needs_runner(cfg, cfg.host):
        device = "cuda"  # the system's workers have the GPUs, not necessarily this process's machine
    elif wants_gpu:
        import torch

        if not torch.cuda.is_available() and not export_only:
            raise UserError(
                f"system `{cfg.host}` asks for a GPU, but no CUDA device is available here; "
                'set its accelerators to ["cpu"] to run on the CPU'
            )
        device = "cuda" if torch.cuda.is_available() else "cpu"
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


# ---------------------------------------------------------------- the input model, devices (light)


@dataclass(frozen=True)
class Ready:
    """What the checks before the weights found: the input model's local folder when it exists now (None while a
    known model or GGUF file still waits to be converted: its memory is checked once converted), the device."""

    model: Path | None
    device: str
    execution_provider: str


def check_input_model(loaded: LoadedConfig) -> Path | None:
    """The input model as far as headers tell, converting nothing: a folder's config.json, weights' headers and
    tokenizer; a known name's package (did you mean, for a near miss); a GGUF file's header. Returns the folder
    the passes will read, when it exists already."""
    from slimtune.models.known import KNOWN_MODELS, did_you_mean

    model = loaded.config.input_model
    path = model.model_path
    allow_pickle = model.load_kwargs.use_safetensors is False
    if not isinstance(
        path, str
    ):  # an Azure ML model: its version is looked up, downloaded when the run starts
        from slimtune.models.azureml import check_model

        check_model(path, loaded.config.azureml_client)
        return None
    if model.type == "ONNXModel":
        from slimtune.models.loading import check_onnx_model

        check_onnx_model(Path(path).expanduser())
        return Path(path).expanduser().resolve()
    if path in KNOWN_MODELS or path.lower().endswith(".gguf"):
        from slimtune.models.gguf import inspect_gguf
        from slimtune.models.store import find_prepared, gguf_sha256, gguf_source

        gguf_path = gguf_source(path)  # a known model's package installed; a .gguf file there
        prepared = find_prepared(gguf_sha256(gguf_path))
        if prepared is None:
            inspect_gguf(gguf_path)  # its architecture is one slimtune converts
        return prepared
    folder = Path(path).expanduser()
    if not folder.exists():
        from slimtune.errors import ModelError
        from slimtune.hub import parse_name
        from slimtune.models.hub import check_model

        hub_name = parse_name(path)
        if hub_name:  # asked of the hub (exists, readable, a model); downloaded when the run starts
            check_model(hub_name[0], hub_name[1] or model.load_kwargs.revision, allow_pickle=allow_pickle)
            return None
        hint = did_you_mean(folder.name)
        if hint:
            raise ModelError(f"input_model.model_path: model folder {folder} does not exist; {hint}")
    from slimtune.models.loading import input_model_folder

    resolved = input_model_folder(model, loaded.config.azureml_client)
    check_tokenizer_files(loaded, resolved)
    return resolved


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")


def check_tokenizer_files(loaded: LoadedConfig, folder: Path) -> None:
    """The input model's Hugging Face folder has readable weights and a tokenizer (without one, the first pass
    fails inside transformers). GGUF files and known models are checked when resolved."""
    from slimtune.errors import ModelError

    model = loaded.config.input_model
    if model.type != "HfModel" or not Path(folder, "config.json").is_file():
        return
    from slimtune.models.loading import check_model_folder

    # weights and config.json first: their problems are the more basic ones
    check_model_folder(folder, allow_pickle=model.load_kwargs.use_safetensors is False)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES) and not any(folder.glob("*.tiktoken")):
        raise ModelError(
            f"model folder {folder} has no tokenizer ({', '.join(TOKENIZER_FILES)} or *.tiktoken); copy the "
            "tokenizer files of the model into the folder (tokenizer.save_pretrained does it)"
        )


_DEVICE_WORDS = {"cpu": "the CPU", "cuda": "a CUDA GPU"}


def check_pass_devices(loaded: LoadedConfig, run_device: str) -> None:
    """Each pass runs where its spec says it can (PassSpec.devices), on the device this run has."""
    from slimtune.passes.registry import get_pass

    for plan in loaded.passes:
        spec = get_pass(plan.type)
        device = pass_device(loaded.config, plan.host, run_device)  # a pass hosted elsewhere: that machine's
        if spec is None or device in spec.devices:
            continue
        needs = " or ".join(_DEVICE_WORDS.get(d, d) for d in spec.devices)
        gpu = "cuda" in spec.devices and device != "cuda"
        fix = (
            'run it on a system whose accelerators ask for a GPU (accelerators: ["gpu"]) on a machine with CUDA'
            if gpu
            else "run it on a system with one of those devices"
        )
        raise UserError(
            f"passes.{plan.name}: {spec.type} runs only on {needs}, and this run has {_DEVICE_WORDS.get(device, device)};"
            f" {fix}, or use another pass (`slimtune passes` lists them)"
        )
