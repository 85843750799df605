"""A content fingerprint of a data config: part of the cache key of every pass that reads it.

The config (as resolved), with each local file named by its whole content instead of its path, into one sha256.
A file is read once per (path, size, mtime) in a process, and once across runs when a sidecar is given (the
engine passes the cache's).
"""

from __future__ import annotations

import glob
import hashlib
import json
from pathlib import Path
from typing import Any

from slimtune.config.resolve import is_remote
from slimtune.files import fingerprint, sha256_remembered


def data_fingerprint(data_config: Any, sidecar: str | Path | None = None) -> str:
    """sha256 hex of the resolved data config with each local file (data files, user_script, script_dir) named by
    its content, not its path: the same rows read from another folder (an Azure ML job's mount, a moved checkout)
    give the same key, so pass outputs made there are cache hits here. Hashes are remembered in `sidecar` (see
    `slimtune.files.sha256_remembered`)."""
    config = data_config.model_dump(mode="json") if hasattr(data_config, "model_dump") else data_config
    config = json.loads(json.dumps(config, default=str))
    load = config.get("load_dataset_config") or {}
    if load.get("data_files") is not None:
        load["data_files"] = _by_content(load["data_files"], sidecar)
    for key in ("user_script", "script_dir"):  # their functions shape the rows and answers
        if config.get(key):
            config[key] = f"content:{file_digest(config[key], sidecar)}"
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _by_content(value: Any, sidecar: str | Path | None) -> Any:
    if isinstance(value, list):
        return [_by_content(v, sidecar) for v in value]
    if isinstance(value, dict):
        if "type" in value:  # a remote resource: its config is all we can hash
            return value
        return {k: _by_content(v, sidecar) for k, v in value.items()}
    if not isinstance(value, str) or is_remote(value):
        return value
    if any(ch in value for ch in "*?["):
        matched = local_files(value)
        return {
            "pattern": Path(value).name,
            "files": [[Path(f).name, file_digest(f, sidecar)] for f in matched],
        }
    return f"content:{file_digest(value, sidecar)}"


def local_files(data_files: Any) -> list[str]:
    """Every local path named by data_files (string, list, split mapping; globs expanded), sorted."""
    if data_files is None:
        return []
    if isinstance(data_files, dict):
        if "type" in data_files:  # a remote resource: its config is all we can hash
            return []
        values = [v for value in data_files.values() for v in (value if isinstance(value, list) else [value])]
    else:
        values = data_files if isinstance(data_files, list) else [data_files]
    out = set()
    for value in values:
        if not isinstance(value, str) or is_remote(value):
            continue
        if any(ch in value for ch in "*?["):
            out.update(glob.glob(value, recursive=True))
        else:
            out.add(value)
    return sorted(out)


def file_digest(path: str | Path, sidecar: str | Path | None = None) -> str:
    """sha256 of a file's whole content, or a folder's `fingerprint`; 'missing' if absent."""
    try:
        if Path(path).is_dir():  # a data folder: every file in it, by relative path
            return fingerprint(path, sidecar)
        return sha256_remembered(path, sidecar)
    except FileNotFoundError:
        return "missing"
