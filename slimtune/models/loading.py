"""From a config's `input_model.model_path` (or a `--model` folder) to a checked local folder and its ModelRef.

`resolve_model` and `model_ref` never import torch: they read file headers only, so a bad model is reported
before any pass starts. `linear_layer_names` needs torch and is meant for passes; loading is in models/hf.py.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from slimtune.errors import ModelError, UserError
from slimtune.hub import parse_name
from slimtune.models.hub import download_model
from slimtune.models.kind import ADAPTER_CONFIG, model_kind
from slimtune.models.known import KNOWN_MODELS
from slimtune.models.mlflow import MLFLOW_FORMAT, HubReference, find_mlmodel
from slimtune.models.mlflow import hf_folder as mlflow_hf_folder
from slimtune.models.ref import ModelKind, ModelRef

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_REMOTE = {
    "az://": "reading from Azure storage (azure-storage-blob and credentials)",
    "azureml://": "reading from an Azure ML datastore (azure-ai-ml and credentials)",
    "s3://": "reading from S3 (boto3 and credentials)",
    "gs://": "reading from Google Cloud Storage (google-cloud-storage and credentials)",
    "https://": "downloading over HTTPS",
    "http://": "downloading over HTTP",
}
_REMOTE_RESOURCES = {
    "azureml_datastore": "reading from an Azure ML datastore (azure-ai-ml and credentials)",
    "azureml_job_output": "reading an Azure ML job output (azure-ai-ml and credentials)",
}
_FIX_REMOTE = "download the model yourself and give its local folder (or a .gguf file) as model_path"


def input_model_folder(model: Any, azureml_client: Any = None) -> Path:
    """The local folder of a config's `input_model` (an InputModel), downloaded first when it is a hub id or an
    Azure ML model; `azureml_client` is the config's, for an azureml_model that names none."""
    return resolve_model(
        model.model_path,
        kind="onnx" if model.type == "ONNXModel" else "hf",
        allow_pickle=model.load_kwargs.use_safetensors is False,  # pickled .bin weights only when asked for
        file_format=model.model_file_format,
        revision=model.load_kwargs.revision,
        azureml_client=azureml_client,
    )


def resolve_model(
    model_path: Any,
    *,
    allow_pickle: bool = False,
    kind: ModelKind | None = None,
    file_format: str | None = None,
    revision: str | None = None,
    azureml_client: Any = None,
) -> Path:
    """A local model folder for a known model name, a `.gguf` file, a local folder (checked; an MLflow model
    folder gives the Hugging Face folder inside it), a hub id (downloaded, `revision` unless the id has one) or
    an Azure ML model resource (downloaded).

    `kind`: "hf" accepts only a Hugging Face folder, "onnx" only an ONNX model (folder or .onnx file);
    None accepts either, told apart by config.json vs *.onnx files.
    """
    if isinstance(model_path, os.PathLike):
        model_path = os.fspath(model_path)
    if not isinstance(model_path, str):
        if getattr(model_path, "type", None) in ("azureml_registry_model", "azureml_model"):
            from slimtune.models import azureml

            folder = azureml.download_model(model_path, azureml_client)
            return resolve_model(folder, allow_pickle=allow_pickle, kind=kind, file_format=file_format)
        raise _remote_resource(model_path)
    from slimtune.storage import is_remote_url

    if is_remote_url(model_path) and not model_path.startswith("azureml://registries/"):
        # a model folder or .gguf file in storage (a datastore path too): downloaded into the cache
        from slimtune.storage.download import fetch_model

        model_path = str(fetch_model(model_path))
    for prefix, needs in _REMOTE.items():
        if model_path.startswith(prefix):
            raise UserError(
                f"model_path {model_path!r}: remote models are not implemented yet ({prefix} needs {needs}); "
                f"{_FIX_REMOTE}"
            )
    if model_path in KNOWN_MODELS:
        from slimtune.models.store import prepared_path

        return prepared_path(model_path)
    path = Path(model_path).expanduser()
    if kind == "onnx" or (kind is None and _is_onnx(path)):
        check_onnx_model(path)
        return path.resolve()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist")
        from slimtune.models.store import prepared_path

        return prepared_path(str(path))
    if path.is_dir():
        if file_format == MLFLOW_FORMAT or (not (path / "config.json").is_file() and find_mlmodel(path)):
            return _mlflow_model(path, allow_pickle)
        check_model_folder(path, allow_pickle=allow_pickle)
        return path.resolve()
    if path.exists():
        raise ModelError(
            f"model path {path} is a file; give a model folder, a .gguf file or a known model name"
        )
    hub_name = parse_name(model_path)
    if hub_name:
        folder = download_model(hub_name[0], hub_name[1] or revision, allow_pickle=allow_pickle)
        check_model_folder(folder, allow_pickle=allow_pickle)
        return folder
    raise ModelError(f"model folder {path} does not exist")


def local_model_folder(folder: str | Path) -> Path:
    """`folder`, or the Hugging Face folder of the MLflow model it holds (for commands given a folder)."""
    folder = Path(folder)
    if model_kind(folder) is None and find_mlmodel(folder):
        return _mlflow_model(folder, allow_pickle=False)
    return folder


def _mlflow_model(path: Path, allow_pickle: bool) -> Path:
    folder = mlflow_hf_folder(path)
    if isinstance(folder, HubReference):  # saved without weights: they come from the hub
        folder = download_model(folder.repo_id, folder.revision, allow_pickle=allow_pickle)
    check_model_folder(folder, allow_pickle=allow_pickle)
    return folder


def _is_onnx(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".onnx"
    return path.is_dir() and not (path / "config.json").is_file() and any(path.glob("*.onnx"))


def check_onnx_model(path: Path) -> None:
    """An ONNX model: a .onnx file, or a folder holding one (ONNX Runtime GenAI folders: genai_config.json)."""
    if not path.exists():
        raise ModelError(f"ONNX model {path} does not exist")
    if path.is_file():
        if path.suffix != ".onnx":
            raise ModelError(f"ONNX model {path} is not a .onnx file")
        return
    if not any(path.glob("*.onnx")):
        raise ModelError(f"ONNX model folder {path} holds no .onnx file")


def command_model(value: str | Path) -> Path:
    """A command's --model as a local path: a local folder or file as given; a model folder or .gguf file at a
    storage URL, or a hub model id (org/name[@revision]), downloaded first, as an input model of a config is."""
    text = os.fspath(value)
    path = Path(text).expanduser()
    if path.exists():
        return path
    from slimtune.storage import is_remote_url

    if is_remote_url(text) and not text.startswith("azureml://registries/"):
        from slimtune.storage.download import fetch_model

        return fetch_model(text)
    if parse_name(text):
        return resolve_model(text, kind="hf")
    return path


def model_ref(folder: str | Path) -> ModelRef:
    """A ModelRef for a model folder (or a .gguf file, run by llama.cpp), its kind told by the files it holds
    (an adapter's base found too); a storage URL or hub id is downloaded first (`command_model`)."""
    path = command_model(folder)
    if path.is_file() and model_kind(path) == "gguf":
        return ModelRef(str(path), "gguf")
    if not path.is_dir():
        raise UserError(f"--model {path}: no such folder")
    path = local_model_folder(path)
    kind = model_kind(path)
    if kind == "adapter":
        return ModelRef(str(path), "adapter", base_path=str(adapter_base(path)))
    if kind in ("onnx", "hf", "gguf"):
        return ModelRef(str(path), kind)
    raise ModelError(
        f"{path} is not a model folder: it has no genai_config.json (ONNX GenAI), {ADAPTER_CONFIG} (PEFT "
        "adapter), config.json (Hugging Face) or one .gguf file (llama.cpp)"
    )


def adapter_base(folder: str | Path) -> Path:
    """The base model folder an adapter's config names: a path (absolute, or relative to the adapter) or a
    known model name."""
    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path")
    path = Path(base).expanduser()
    if not path.is_absolute() and not path.is_dir():
        path = folder / base
    if path.is_dir():
        return path.resolve()
    try:
        return resolve_model(base, kind="hf")
    except UserError as err:
        raise ModelError(f"adapter {folder}: its base model {base!r} cannot be found ({err})") from err


def _remote_resource(value: Any) -> UserError:
    data = value.model_dump() if hasattr(value, "model_dump") else value
    kind = data.get("type") if isinstance(data, dict) else None
    needs = _REMOTE_RESOURCES.get(str(kind), "a way to fetch this resource")
    config = data.get("config") if isinstance(data, dict) else None
    details = ", ".join(
        f"{k}={v!r}" for k, v in (config or {}).items() if k in ("name", "version", "registry_name")
    )
    what = f"{kind} ({details})" if details else str(kind or type(value).__name__)
    return UserError(
        f"model_path {what}: remote models are not implemented yet (needs {needs}); {_FIX_REMOTE}"
    )


def check_model_folder(folder: str | Path, *, allow_pickle: bool = False) -> None:
    """A Hugging Face model folder: config.json and readable weights. Reads headers only."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        hint = ""
        kind = model_kind(folder)
        if kind == "adapter":
            hint = (
                " It holds a LoRA adapter: give its base model as model_path and this folder as adapter_path."
            )
        elif kind == "onnx":
            hint = (
                " It holds an ONNX Runtime GenAI model: set input_model.type to ONNXModel to use it as one."
            )
        elif any(folder.glob("*.gguf")):
            names = ", ".join(sorted(p.name for p in folder.glob("*.gguf")))
            hint = f" It holds GGUF files ({names}): give the .gguf file itself as model_path."
        raise ModelError(
            f"model folder {folder} has no config.json, so it is not a Hugging Face model.{hint}"
        )
    config = _read_config_json(folder / "config.json")
    safetensors = sorted(folder.glob("*.safetensors"))
    pickled = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if safetensors:
        _check_safetensors(folder, safetensors)
        _check_embedding_shape(folder, safetensors, config)
        _check_tokenizer_fits(folder, config)
        return
    if pickled:
        names = ", ".join(p.name for p in pickled)
        if allow_pickle:
            log.warning("%s: loading pickled weights (%s); they can run code when loaded", folder, names)
            return
        raise ModelError(
            f"model folder {folder} has only pickled weights ({names}). Pickled weights can run arbitrary code "
            "when loaded, so they are refused unless allowed: convert them to safetensors (load the model with "
            "transformers and save_pretrained it), or, if you trust the source, allow them explicitly with "
            "input_model.load_kwargs.use_safetensors: false."
        )
    raise ModelError(f"model folder {folder} has config.json but no weights (*.safetensors)")


def _check_safetensors(folder: Path, files: list[Path]) -> None:
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError) as err:
            raise ModelError(f"{index} is not a valid safetensors index ({err})") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise ModelError(
                f"{folder} is missing weight shards listed in {index.name}: {', '.join(missing)}"
            )
    for file in files:
        try:
            with safe_open(file, framework="numpy") as handle:  # parses and checks the header only
                handle.keys()
        except Exception as err:  # SafetensorsError, OSError, ...
            raise ModelError(
                f"weights file {file} is corrupt or truncated ({err}); prepare or download the model again"
            ) from None


def _read_config_json(path: Path) -> dict[str, Any]:
    """config.json parsed, with a model type transformers knows."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelError(f"{path} is not UTF-8 text, so not a model config") from None
    except ValueError as err:
        raise ModelError(
            f"{path} is not valid JSON (line {err.lineno}: {err.msg}); the model folder is damaged: "
            "prepare or download it again"
        ) from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} must hold a JSON object (the model's configuration)")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or config.get("auto_map"):
        # no model_type: transformers guesses it from the folder name; auto_map: the model brings its own
        # code (trust_remote_code decides whether it may run)
        return config
    try:  # the plain table of model types: importing it does not import torch
        from transformers.models.auto.auto_mappings import CONFIG_MAPPING_NAMES
    except ImportError:  # no transformers, or one laid out differently: the loading pass will tell
        return config
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ModelError(
            f"{path}: model_type {model_type!r} is not known to the installed transformers, and the folder "
            "brings no code for it (auto_map); check the model folder, or upgrade transformers"
        )
    return config


def _check_embedding_shape(folder: Path, files: list[Path], config: dict[str, Any]) -> None:
    """The input embedding's shape agrees with config.json (weights and config of different models)."""
    from safetensors import safe_open

    vocab, hidden = config.get("vocab_size"), config.get("hidden_size")
    if not isinstance(vocab, int) or not isinstance(hidden, int):
        return
    for file in files:
        with safe_open(file, framework="numpy") as handle:
            for name in handle.keys():
                if name.endswith(("embed_tokens.weight", "wte.weight", "word_embeddings.weight")):
                    shape = list(handle.get_slice(name).get_shape())
                    if shape != [vocab, hidden]:
                        raise ModelError(
                            f"{file}: {name} has shape {shape}, but config.json says vocab_size {vocab} and "
                            f"hidden_size {hidden}: the weights and config.json belong to different models"
                        )
                    return


def _check_tokenizer_fits(folder: Path, config: dict[str, Any]) -> None:
    """Every token id the tokenizer can produce has a row in the model's embedding."""
    vocab = config.get("vocab_size")
    path = folder / "tokenizer.json"
    if not isinstance(vocab, int) or not path.is_file():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = list((data.get("model") or {}).get("vocab", {}).values()) if isinstance(data, dict) else []
        ids += [t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict)]
    except (OSError, ValueError, AttributeError) as err:
        raise ModelError(f"{path} is not a readable tokenizer file ({err})") from None
    ids = [i for i in ids if isinstance(i, int)]
    if ids and max(ids) >= vocab:
        raise ModelError(
            f"{folder}: the tokenizer has {len(set(ids))} tokens (ids up to {max(ids)}), but config.json says "
            f"vocab_size {vocab}: tokens past the embedding would crash training. The tokenizer belongs to "
            "another model; copy the model's own tokenizer files into the folder"
        )


def linear_layer_names(model) -> list[str]:
    """Unique leaf names of the linear layers (q_proj, o_proj, gate_up_proj...), in the order they appear,
    without the output head. Linear layers wrapped by peft count under their own name."""
    import torch
    from transformers.pytorch_utils import Conv1D

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    output_leaf = next((q.split(".")[-1] for q, m in model.named_modules() if m is output), None)
    names: list[str] = []
    for qualified, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, Conv1D)):
            continue
        parts = qualified.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue  # peft's own adapter layers
        leaf = parts[-2] if parts[-1] == "base_layer" and len(parts) > 1 else parts[-1]
        if leaf != output_leaf and leaf not in names:
            names.append(leaf)
    return names
