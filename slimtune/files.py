"""File helpers every part uses: content hashing, fingerprints, folder sizes, atomic writes.

Imports nothing of slimtune: it sits below every other module.

Content hashes are always of the whole file. Reading a multi-gigabyte model or data file on every run would
cost seconds, so `sha256_remembered` keeps each file's hash by (resolved path, size, mtime_ns): in this process,
and, given a sidecar JSON file, across processes. A file whose size or mtime changed is read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20

_memo: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256, for this process


def sha256_file(path: str | Path) -> str:
    """sha256 hex of the whole content of a file; always reads it (see `sha256_remembered`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_remembered(path: str | Path, sidecar: str | Path | None = None) -> str:
    """sha256 of the whole content of `path`, read only when its (resolved path, size, mtime_ns) was not seen
    before: in this process, or in `sidecar` (a JSON file, updated when a file is hashed)."""
    return _hashes([Path(path)], sidecar)[0]


def fingerprint(path: str | Path, sidecar: str | Path | None = None) -> str:
    """sha256 over (relative name, content sha256) of every file under `path`, or of the file itself (its
    name then). Symbolic links to files are followed: a Hugging Face snapshot is a folder of links."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file, file_hash in zip(files, _hashes(files, sidecar), strict=True):
        rel = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{rel}\0{file_hash}\n".encode())
    return digest.hexdigest()


def _hashes(files: Iterable[Path], sidecar: str | Path | None) -> list[str]:
    """Content sha256 of each file; the sidecar is read once and written once (if anything was hashed)."""
    known: dict[str, Any] | None = None
    new: dict[str, dict[str, Any]] = {}
    out = []
    for file in files:
        resolved = str(file.resolve())
        stat = os.stat(resolved)
        key = (resolved, stat.st_size, stat.st_mtime_ns)
        file_hash = _memo.get(key)
        if file_hash is None and sidecar is not None:
            if known is None:
                known = _read_sidecar(sidecar)
            record = known.get(resolved)
            if record and record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
                file_hash = record["sha256"]
        if file_hash is None:
            file_hash = sha256_file(resolved)
            new[resolved] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_hash}
        _memo[key] = file_hash
        out.append(file_hash)
    if new and sidecar is not None:
        # read again just before writing, so that entries other processes added meanwhile are kept; two
        # concurrent writers: the last one wins, and a lost entry only costs a re-hash
        write_json_atomic(sidecar, {**_read_sidecar(sidecar), **new}, indent=None)
    return out


def _read_sidecar(sidecar: str | Path) -> dict[str, Any]:
    try:
        known = json.loads(Path(sidecar).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def folder_size(path: str | Path) -> int:
    """Bytes of a file, or of every regular file under a folder (symbolic links not followed or counted)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old content or the new, never a part: written to a
    file beside it, flushed to disk, then renamed over it. On failure the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per call (pid alone is not: two threads may write the same path); dot-prefixed: hidden
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # 0o666 less the umask, as a plain open() would create it (mkstemp's 0600 would hide reports)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not reach the disk before the content does
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent, default=str, ensure_ascii=False) + "\n")
