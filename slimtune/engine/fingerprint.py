"""Cache keys: a full sha256 of everything that shapes a pass's output.

Content fingerprints of model folders and data files come from `slimtune.files`; their per-file hashes are
remembered in the sidecar `hash_sidecar(cache_dir)` (inside the cache, never in the user's folder), keyed by
path, size and mtime: a file whose size or mtime changed is hashed again.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

# libraries whose versions shape pass outputs: part of every cache key
KEY_LIBRARIES = (
    "slimtune",
    "torch",
    "transformers",
    "peft",
    "onnxruntime-genai",
    "onnx",
    "onnx-ir",
    "datasets",
)


def hash_sidecar(cache_dir: str | Path) -> Path:
    """Where the content hashes of input model and data files are remembered between runs."""
    return Path(cache_dir) / "fingerprints.json"


def library_versions(names: tuple[str, ...] = KEY_LIBRARIES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cache_key(
    *,
    input_fingerprint: str,
    pass_type: str,
    pass_version: int,
    params: dict[str, Any],
    data_fingerprints: dict[str, str],
    libraries: dict[str, str | None],
    extra: dict[str, Any],
) -> str:
    """Full sha256 (64 hex characters) of everything that determines a pass's output."""
    payload = {
        "input": input_fingerprint,
        "pass": pass_type,
        "version": pass_version,
        "params": params,
        "data": data_fingerprints,
        "libraries": libraries,
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
