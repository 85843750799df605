"""MLflow model folders (`model_file_format: PyTorch.MLflow`, the layout of Azure ML registry models) as
Hugging Face folders.

An MLflow model is a folder with an `MLmodel` file (YAML) beside its artifacts. The Hugging Face files sit in
one of two layouts:

    mlflow.transformers.save_model     MLmodel, model/ (config.json, weights), components/tokenizer/
    Azure ML's hftransformers flavor   MLmodel, data/model/ (weights), data/config/, data/tokenizer/

(Azure ML downloads put the folder one level down, e.g. `<name>/mlflow_model_folder/MLmodel`.) When the weights
folder holds everything, it is the model folder; otherwise a folder of symbolic links to the parts is made once
in the model store (`$SLIMTUNE_HOME/models/mlflow/`), keyed by the parts' paths, sizes and mtimes, so nothing
is copied and the user's folder is never written to. A model saved with `save_pretrained=False` holds only a
reference to a hub repository and commit (`source_model_name`, `source_model_revision`): that reference is
returned for the caller to download. Reads file names and the MLmodel file only; imports neither mlflow nor
torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimtune.errors import ModelError

MLMODEL = "MLmodel"
MLFLOW_FORMAT = "PyTorch.MLflow"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# where the parts may be, in order of preference, relative to the folder holding MLmodel
_WEIGHT_FOLDERS = ("model", "data/model", "data/model/model", "data")
_PART_FOLDERS = ("data/config", "data/tokenizer", "components/tokenizer", "tokenizer")


@dataclass(frozen=True)
class HubReference:
    """An MLflow model saved without its weights: the hub repository and commit they come from."""

    repo_id: str
    revision: str | None


def find_mlmodel(path: str | Path) -> Path | None:
    """The folder holding `MLmodel`: `path` itself, or the one sub-folder (an Azure ML download's
    `mlflow_model_folder`) that holds it, two levels down at most. None for anything else."""
    path = Path(path)
    if not path.is_dir():
        return None
    if (path / MLMODEL).is_file():
        return path
    for pattern in (f"*/{MLMODEL}", f"*/*/{MLMODEL}"):
        found = sorted(p.parent for p in path.glob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(f.relative_to(path)) for f in found)
            raise ModelError(f"{path} holds several MLflow models ({names}); give the folder of one of them")
    return None


def read_mlmodel(root: Path) -> dict[str, Any]:
    import yaml

    file = root / MLMODEL
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ModelError(f"{file} is not a readable MLmodel file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("flavors"), dict):
        raise ModelError(f"{file} has no `flavors` mapping, so it is not an MLflow model description")
    return data


def hf_folder(path: str | Path) -> Path | HubReference:
    """The Hugging Face folder of the MLflow model at `path` (the folder holding MLmodel, or above it), or the
    hub reference of a model saved without weights."""
    root = find_mlmodel(path)
    if root is None:
        raise ModelError(
            f"{path} is not an MLflow model folder: it has no {MLMODEL} file (model_file_format "
            f"{MLFLOW_FORMAT} expects one, with the Hugging Face files under model/ or data/model/)"
        )
    flavors = read_mlmodel(root)["flavors"]
    transformers = flavors.get("transformers") or {}
    preferred = [transformers["model_binary"]] if isinstance(transformers.get("model_binary"), str) else []
    weights = next((root / f for f in (*preferred, *_WEIGHT_FOLDERS) if _has_weights(root / f)), None)
    if weights is None:
        source = transformers.get("source_model_name")
        if isinstance(source, str) and source:
            return HubReference(source, transformers.get("source_model_revision"))
        found = ", ".join(sorted(flavors)) or "none"
        raise ModelError(
            f"MLflow model {root}: no Hugging Face weights found (looked in "
            f"{', '.join(dict.fromkeys((*preferred, *_WEIGHT_FOLDERS)))}; flavors: {found}). slimtune reads "
            "models saved by mlflow.transformers or Azure ML's hftransformers flavor"
        )
    components = [f"components/{c}" for c in transformers.get("components") or [] if isinstance(c, str)]
    parts = [weights] + [
        root / f
        for f in dict.fromkeys((*components, *_PART_FOLDERS))
        if (root / f).is_dir() and root / f != weights
    ]
    if len(parts) == 1:
        return weights
    return _linked_folder(root, parts)


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix in WEIGHT_SUFFIXES and p.is_file() for p in folder.iterdir())


def _linked_folder(root: Path, parts: list[Path]) -> Path:
    """One folder of symbolic links to the files of `parts` (the first part wins a name both hold), made once
    in the model store and renamed into place when complete."""
    from slimtune.models.store import models_dir

    files: dict[str, Path] = {}
    for part in parts:
        for file in sorted(part.iterdir()):
            if file.is_file() and file.name not in files:
                files[file.name] = file.resolve()
    identity = [(name, str(f), f.stat().st_size, f.stat().st_mtime_ns) for name, f in sorted(files.items())]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    label = re.sub(r"[^a-z0-9._]+", "-", root.resolve().parent.name.lower() + "-" + root.name.lower()).strip(
        "-."
    )
    store = models_dir() / "mlflow"
    final = store / f"{label or 'model'}-{digest}"
    if final.is_dir():
        return final
    partial = store / f".partial-{digest}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for name, file in files.items():
            (partial / name).symlink_to(file)
        (partial / "mlflow_source.json").write_text(json.dumps({"mlflow_model": str(root.resolve())}) + "\n")
        os.rename(partial, final)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not final.is_dir():
            raise
        # another process made it first
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final
