"""A content fingerprint of a data config: part of the cache key of every pass that reads it.

The config (as resolved: absolute paths) and the content of each local data file go into one sha256. Files
under 64 MiB are hashed whole; bigger ones by size, modification time and their first and last MiB, which
catches edits without reading gigabytes on every run.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from slimtune.config.resolve import is_remote

FULL_HASH_MAX = 64 << 20
EDGE = 1 << 20
_cache: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> digest, for this process


def data_fingerprint(data_config: Any) -> str:
    """sha256 hex of the resolved data config and its local files' contents."""
    config = data_config.model_dump(mode="json") if hasattr(data_config, "model_dump") else data_config
    digest = hashlib.sha256()
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    files = config.get("load_dataset_config", {}).get("data_files")
    for path in local_files(files):
        digest.update(f"\0{path}\0{file_digest(path)}".encode())
    if config.get("user_script"):  # its pre/post-processing functions shape the rows and answers
        digest.update(f"\0user_script\0{file_digest(config['user_script'])}".encode())
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


def file_digest(path: str | Path) -> str:
    """sha256 of a file's content (full below 64 MiB; size + mtime + first/last MiB above); 'missing' if absent."""
    try:
        stat = os.stat(path)
    except OSError:
        return "missing"
    if os.path.isdir(path):  # a data folder: every file in it, by relative path
        digest = hashlib.sha256()
        for child in sorted(p for p in Path(path).rglob("*") if p.is_file()):
            digest.update(f"\0{child.relative_to(path)}\0{file_digest(child)}".encode())
        return digest.hexdigest()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _cache:
        return _cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        if stat.st_size < FULL_HASH_MAX:
            for block in iter(lambda: f.read(EDGE), b""):
                digest.update(block)
        else:
            digest.update(f"size={stat.st_size} mtime={stat.st_mtime_ns}".encode())
            digest.update(f.read(EDGE))
            f.seek(stat.st_size - EDGE)
            digest.update(f.read(EDGE))
    _cache[key] = digest.hexdigest()
    return _cache[key]
