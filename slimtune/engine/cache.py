"""Pass outputs on disk, addressed by their full content key.

Layout under cache_dir:
  entries/<key>/output/     the pass's output folder (a model)
  entries/<key>/entry.json  what made it, with a manifest (size, sha256) of every output file; its presence
                            marks the entry complete
  tmp/<key>.<pid>.<n>/      an attempt in progress; renamed into entries/ when complete
  work/<key>/               checkpoints kept across interrupted attempts (removed on success)
  fingerprints.json         content sha256 of input model and data files, by path, size and mtime
                            (engine/fingerprint.py hash_sidecar)
  locks/<key>.lock          one process works on a key at a time (flock: the kernel drops it when the holder
                            dies, so a killed run never leaves a lock that blocks); others wait, then reuse
  compiled/                 compiled kernels (torch inductor / Triton caches) a pass keeps across runs, so the
                            same shapes are not compiled again (passes/lora/speed.use_compile_cache)
  changed/<key>.<n>/        an entry whose files were changed after it was written, set aside when a run
                            rebuilt it (`cache verify` lists them, `cache clean` removes them)
An interrupted attempt leaves only tmp/ and work/ behind, which never look finished; the next attempt at the
same key removes the old tmp/ folders. An entry whose files no longer match its manifest (size, or content where
the modification time moved) is a miss that is said out loud: which files, where; the run rebuilds it into a
fresh entry and keeps the changed one aside, never overwriting an edit silently.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimtune.files import sha256_file

_counter = itertools.count()


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """relative path -> {size, sha256} of every file under `folder`; every file is read (this checks content,
    so the size+mtime shortcut of `sha256_remembered` would defeat it)."""
    return {
        path.relative_to(folder).as_posix(): {
            "size": path.stat().st_size,
            "sha256": sha256_file(path),
            "mtime_ns": path.stat().st_mtime_ns,  # a moved mtime has the file's content compared on lookup
        }
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
    }


@dataclass
class Entry:
    key: str
    path: Path  # entries/<key>
    info: dict[str, Any]

    @property
    def output(self) -> Path:
        return self.path / "output"


class Cache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._told: set[str] = set()  # keys whose changed entry this process has reported

    def _entry_dir(self, key: str) -> Path:
        return self.root / "entries" / key

    def lookup(self, key: str, report: bool = True) -> Entry | None:
        """The complete, unchanged entry for `key`, or None. Checks every file of the manifest: there, its size,
        and its content where its modification time moved. A changed entry is reported (once per process, with
        `report`): which files, where; the run that asked rebuilds it."""
        info_file = self._entry_dir(key) / "entry.json"
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):
            return None
        entry = Entry(key, info_file.parent, info)
        problems = self.problems(entry, contents=False)
        if problems:
            if report and key not in self._told:
                self._told.add(key)
                print(
                    f"cache entry {key[:12]}.. ({info.get('pass_name', '?')}) was changed after slimtune wrote it: "
                    f"{'; '.join(problems[:5])}. It is not used: the pass runs again into a fresh entry, and the "
                    f"changed one is kept in {self.root / 'changed'}",
                    flush=True,
                )
            return None
        work = self.root / "work" / key
        if work.exists():  # the run that committed it was killed before removing its checkpoints
            shutil.rmtree(work, ignore_errors=True)
        return entry

    def has(self, key: str) -> bool:
        """Whether `lookup(key)` would find the entry (a shared cache answers without downloading it)."""
        return self.lookup(key) is not None

    def problems(self, entry: Entry, contents: bool = True) -> list[str]:
        """How the entry's output differs from its manifest, each with the file's path (entries written before
        manifests: none). Without `contents`, only files whose modification time moved are read."""
        files = entry.info.get("files")
        if files is None:
            return []
        found = []
        actual = {p.relative_to(entry.output).as_posix(): p for p in entry.output.rglob("*") if p.is_file()}
        for name, expected in files.items():
            path = actual.get(name)
            if path is None:
                found.append(f"{entry.output / name}: missing")
                continue
            stat = path.stat()
            if stat.st_size != expected["size"]:
                found.append(f"{path}: {stat.st_size} bytes, {expected['size']} when written")
            elif contents or stat.st_mtime_ns != expected.get("mtime_ns", stat.st_mtime_ns):
                if sha256_file(path) != expected["sha256"]:
                    found.append(f"{path}: content differs")
        found += [
            f"{actual[name]}: not in the entry when written" for name in sorted(set(actual) - set(files))
        ]
        return found

    def compiled_dir(self) -> Path:
        """Where passes keep compiled kernels across runs (not an entry: nothing's output depends on it)."""
        return self.root / "compiled"

    def work_dir(self, key: str) -> Path:
        path = self.root / "work" / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def new_attempt(self, key: str) -> Path:
        """An empty folder to build the entry in: tmp/<key>.<pid>.<n>/output. Call it holding `lock(key)`:
        earlier attempts at this key (from killed or failed runs) are removed, since no one else works on it."""
        self.discard_attempts(key)
        attempt = self.root / "tmp" / f"{key}.{os.getpid()}.{next(_counter)}"
        (attempt / "output").mkdir(parents=True)
        return attempt

    def discard_attempts(self, key: str) -> None:
        for old in (self.root / "tmp").glob(f"{key}.*"):
            shutil.rmtree(old, ignore_errors=True)

    def commit(self, key: str, attempt: Path, info: dict[str, Any]) -> Entry:
        """Write entry.json (with the output's manifest) into the attempt and rename it into place (atomic on
        one file system)."""
        files = file_manifest(attempt / "output")
        info = {
            **info,
            "key": key,
            "created": time.time(),
            "size_bytes": sum(f["size"] for f in files.values()),
            "files": files,
        }
        return self._place(key, attempt, info)

    def adopt(self, key: str, folder: Path) -> Entry:
        """An entry committed elsewhere (entry.json beside output/, e.g. downloaded from a job's output) placed
        under `key`, after every file was checked against its manifest. `folder` must be on the cache's file
        system (it is renamed into place). Raises ValueError naming what does not match."""
        try:
            info = json.loads((folder / "entry.json").read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{folder / 'entry.json'}: unreadable ({err})") from None
        if info.get("key") != key or not isinstance(info.get("files"), dict):
            raise ValueError(f"{folder / 'entry.json'}: not the manifest of cache entry {key}")
        problems = self.problems(Entry(key, folder, info), contents=True)
        if problems:
            raise ValueError("; ".join(problems[:5]))
        for name, expected in info["files"].items():  # this copy's times: later lookups need not read it all
            expected["mtime_ns"] = (folder / "output" / name).stat().st_mtime_ns
        return self._place(key, folder, info)

    def _place(self, key: str, attempt: Path, info: dict[str, Any]) -> Entry:
        """Write `info` as the attempt's entry.json and rename the attempt into entries/<key>."""
        (attempt / "entry.json").write_text(json.dumps(info, indent=2, default=str))
        final = self._entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # an entry that failed lookup: a changed one is set aside, an unreadable one goes
            self._set_aside(final)
        os.rename(attempt, final)
        shutil.rmtree(self.root / "work" / key, ignore_errors=True)
        return Entry(key, final, info)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:  # not "w": that would erase the holder's pid
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                print(
                    f"waiting for another run (pid {holder}) working on cache entry {key[:12]}...", flush=True
                )
                fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _set_aside(self, folder: Path) -> None:
        """Move an entry whose files were changed to changed/ (the user's edit is not thrown away); delete one
        without a readable entry.json (an interrupted write of an older version: nothing of the user's)."""
        if not (folder / "entry.json").is_file():
            self._delete(folder)
            return
        aside = self.root / "changed" / f"{folder.name}.{os.getpid()}.{next(_counter)}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.rename(folder, aside)
        print(f"the changed entry {folder.name[:12]}.. is kept at {aside}", flush=True)

    def set_aside(self) -> list[Path]:
        """Changed entries that runs moved aside."""
        return sorted((self.root / "changed").glob("*"))

    def entries(self) -> list[Entry]:
        found = []
        for folder in sorted((self.root / "entries").glob("*")):
            entry = self.lookup(folder.name, report=False)
            if entry:
                found.append(entry)
        return found

    def leftovers(self) -> list[Path]:
        """Folders of attempts that did not finish (not locked by a live process)."""
        paths = [p for p in (self.root / "tmp").glob("*")] + [p for p in (self.root / "work").glob("*")]
        return [p for p in paths if not self._in_use(p.name.split(".")[0])]

    def _in_use(self, key: str) -> bool:
        path = self.root / "locks" / f"{key}.lock"
        if not path.exists():
            return False
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def remove(self, entry: Entry) -> None:
        self._delete(entry.path)

    def _delete(self, folder: Path) -> None:
        """Move out of entries/ first (atomic), then delete: a kill mid-delete never leaves a partial entry
        in entries/, only a folder in tmp/ that the next attempt or `cache clean --partial` removes."""
        doomed = self.root / "tmp" / f"{folder.name}.deleted.{os.getpid()}.{next(_counter)}"
        doomed.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(folder, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)
