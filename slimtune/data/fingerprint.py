"""A content fingerprint of a data config: part of the cache key of every pass that reads it.

The config (as resolved: absolute paths) and the whole content of each local data file go into one sha256.
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
from slimtune.hub import commit_of, parse_name


def data_fingerprint(data_config: Any, sidecar: str | Path | None = None) -> str:
    """sha256 hex of the resolved data config and its local files' contents (their hashes remembered in
    `sidecar`, see `slimtune.files.sha256_remembered`)."""
    config = data_config.model_dump(mode="json") if hasattr(data_config, "model_dump") else data_config
    digest = hashlib.sha256()
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    load = config.get("load_dataset_config", {})
    hub_name = parse_name(load.get("data_name") or "")
    if hub_name:  # a hub data set: the commit its revision points at (a moved branch is new data)
        digest.update(f"\0hub\0{commit_of(hub_name[0], hub_name[1], 'dataset')}".encode())
    files = load.get("data_files")
    for path in local_files(files):
        digest.update(f"\0{path}\0{file_digest(path, sidecar)}".encode())
    if config.get("user_script"):  # its pre/post-processing functions shape the rows and answers
        digest.update(f"\0user_script\0{file_digest(config['user_script'], sidecar)}".encode())
    return digest.hexdigest()


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
