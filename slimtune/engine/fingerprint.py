"""Content fingerprints of model folders and the cache keys built from them.

Hashing a 500 MB model on every run would cost seconds, so each file's sha256 is remembered in a sidecar
(inside the cache, never in the user's folder) keyed by path, size and mtime: a file whose size or mtime
changed is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
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
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(cache_dir: Path) -> Path:
    return cache_dir / "fingerprints.json"


def fingerprint_path(path: str | Path, cache_dir: str | Path) -> str:
    """sha256 over (relative name, content sha256) of every file under `path` (or of the file itself)."""
    path = Path(path)
    sidecar = _sidecar(Path(cache_dir))
    try:
        known: dict[str, Any] = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        known = {}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    changed = False
    for file in files:
        stat = file.stat()
        record = known.get(str(file.resolve()))
        if record and record["size"] == stat.st_size and record["mtime_ns"] == stat.st_mtime_ns:
            file_hash = record["sha256"]
        else:
            file_hash = sha256_file(file)
            known[str(file.resolve())] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": file_hash,
            }
            changed = True
        rel = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{rel}\0{file_hash}\n".encode())
    if changed:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        tmp = sidecar.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, sidecar)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in KEY_LIBRARIES:
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
