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


def data_fingerprint(data_config: Any, sidecar: str | Path | None = None) -> str:
    """sha256 hex of the resolved data config and its local files' contents (their hashes remembered in
    `sidecar`, see `slimtune.files.sha256_remembered`)."""
    config = data_config.model_dump(mode="json") if hasattr(data_config, "model_dump") else data_config
    load = config.get("load_dataset_config", {})
    digest = hashlib.sha256()
    digest.update(json.dumps(_without_credentials(config), sort_keys=True, default=str).encode())
    files = load.get("data_files")
    for path in local_files(files):
        digest.update(f"\0{path}\0{file_digest(path, sidecar)}".encode())
    for url, sha256 in remote_contents(files, load.get("storage_options")):
        digest.update(f"\0{url}\0{sha256}".encode())
    if config.get("user_script"):  # its pre/post-processing functions shape the rows and answers
        digest.update(f"\0user_script\0{file_digest(config['user_script'], sidecar)}".encode())
    return digest.hexdigest()


def _without_credentials(config: dict[str, Any]) -> dict[str, Any]:
    """The config as it shapes the rows: storage options and the tokens in URLs are who reads, not what is
    read (two users with their own SAS tokens share cache entries)."""
    from slimtune.storage import is_remote_url
    from slimtune.storage.download import url_key

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k != "storage_options"}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return url_key(value) if isinstance(value, str) and is_remote_url(value) else value

    return clean(config)


def names_remote(data_config: Any) -> bool:
    """Whether a data config reads remote files (its fingerprint then needs their content: a download)."""
    from slimtune.data.load import remote_source

    files = data_config.load_dataset_config.data_files
    values = list(files.values()) if isinstance(files, dict) else [files]
    items = [i for v in values for i in (v if isinstance(v, list) else [v])]
    return any(remote_source(i) is not None for i in items)


def remote_contents(data_files: Any, storage_options: dict | None = None) -> list[tuple[str, str]]:
    """(URL without credentials, sha256 of the content) of every remote object data_files names, fetched into
    the download cache if needed: a remote file is fingerprinted by its content, like a local one."""
    from slimtune.data.load import remote_source
    from slimtune.storage.download import content_sha256, fetch_all, url_key

    if data_files is None:
        return []
    if isinstance(data_files, dict) and "type" not in data_files:
        values = [v for value in data_files.values() for v in (value if isinstance(value, list) else [value])]
    else:
        values = data_files if isinstance(data_files, list) else [data_files]
    out = []
    for value in values:
        if isinstance(value, dict) and "type" in value:
            from slimtune.config.schema import RESOURCE_TYPES

            value = RESOURCE_TYPES[value["type"]].model_validate(value)
        source = remote_source(value, storage_options)
        if source is None:
            continue
        for local in fetch_all(*source):
            out.append((f"{url_key(source[0])}\0{local.name}", content_sha256(local) or file_digest(local)))
    return sorted(out)


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
