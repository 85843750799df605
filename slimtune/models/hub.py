"""Hugging Face Hub models: a model id downloaded with huggingface_hub's `snapshot_download` into the hub's own
cache (so a model other programs fetched is not fetched again), only the files a model folder needs: config,
tokenizer and safetensors weights at the top of the repository; pickled weights only where allowed and no
safetensors exist. Offline mode uses the local copy.

A download lands in `<cache>/models--org--name/snapshots/<commit sha>/`: `origin` reads the repository and the
resolved commit back from that path, and the engine puts them into the input model's identity, so a branch that
moved is a new input.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from slimtune.errors import ModelError
from slimtune.hub import HubUnreachable, cached_commit, hub_errors, is_offline, parse_name

log = logging.getLogger(__name__)

__all__ = ["check_model", "download_model", "origin", "parse_name"]

_SNAPSHOT = re.compile(r"(?P<type>models|datasets)--(?P<repo>[^/]+?)/snapshots/(?P<commit>[0-9a-f]{40})$")
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]
PICKLED_FILES = ["*.bin"]


def origin(folder: str | Path) -> dict[str, str] | None:
    """{"hub": repo id, "commit": sha} for a folder in the hub cache (a snapshot), None for any other folder."""
    match = _SNAPSHOT.search(Path(folder).as_posix())
    if not match:
        return None
    return {"hub": match["repo"].replace("--", "/", 1), "commit": match["commit"]}


def download_model(repo_id: str, revision: str | None, *, allow_pickle: bool = False) -> Path:
    """The snapshot folder of a hub model, downloaded (or found in the local cache) with huggingface_hub."""
    from huggingface_hub import HfApi, snapshot_download

    what = f"{repo_id}@{revision}" if revision else repo_id
    with hub_errors(what, "model"):
        patterns = list(MODEL_FILES)
        if allow_pickle and not is_offline():
            files = HfApi().list_repo_files(repo_id, revision=revision)
            if not any(f.endswith(".safetensors") for f in files):
                patterns += PICKLED_FILES
        elif allow_pickle:
            patterns += PICKLED_FILES
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            ignore_patterns=["*/*"],  # sub-folders (onnx/, original/, gguf/) are other formats
        )
    return Path(folder)


def check_model(repo_id: str, revision: str | None, *, allow_pickle: bool = False) -> None:
    """The repository and revision exist, the token may read them, and they hold a Hugging Face model:
    asked of the hub without downloading weights. In offline mode, the local copy must be there."""
    from huggingface_hub import HfApi, snapshot_download

    what = f"{repo_id}@{revision}" if revision else repo_id
    try:
        with hub_errors(what, "model"):
            if is_offline():
                snapshot_download(
                    repo_id, revision=revision, local_files_only=True, allow_patterns=["config.json"]
                )
                return
            files = set(HfApi().list_repo_files(repo_id, revision=revision))
    except HubUnreachable as err:  # a copy in the hub cache serves (snapshot_download falls back to it too)
        commit = cached_commit(repo_id, revision)
        if commit is None or not (Path(_snapshots(repo_id)) / commit / "config.json").is_file():
            raise
        log.warning("%s; using the copy in the local cache (commit %s)", err, commit)
        return
    if "config.json" not in files:
        raise ModelError(f"hub model {what} has no config.json, so it is not a Hugging Face model")
    if not any(f.endswith(".safetensors") and "/" not in f for f in files):
        pickled = [f for f in files if f.endswith(".bin") and "/" not in f]
        if not pickled:
            raise ModelError(f"hub model {what} has no safetensors weights at the top of the repository")
        if not allow_pickle:
            raise ModelError(
                f"hub model {what} has only pickled weights ({', '.join(sorted(pickled))}), which can run code "
                "when loaded; allow them with input_model.load_kwargs.use_safetensors: false if you trust them"
            )


def _snapshots(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE, f"models--{repo_id.replace('/', '--')}", "snapshots")
