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


# ---------------------------------------------------------------- CLI


def ls_command(args) -> int:
    cache = Cache(args.cache_dir)
    rows = [
        {
            "key": e.key,
            "pass_type": e.info.get("pass_type"),
            "pass_name": e.info.get("pass_name"),
            "size_bytes": e.info.get("size_bytes"),
            "created": e.info.get("created"),
            "path": str(e.output),
        }
        for e in cache.entries()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"cache {cache.root}: empty")
        return 0
    print(f"{'key':14} {'pass':22} {'size':>10}  created")
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"] or 0))
        print(f"{r['key'][:12]}.. {str(r['pass_type']):22} {r['size_bytes'] / 1e6:8.1f}MB  {created}")
    leftovers = cache.leftovers()
    if leftovers:
        print(f"{len(leftovers)} leftover folders of interrupted passes (`slimtune cache clean --partial`)")
    return 0


def verify_command(args) -> int:
    """Compare every entry's files with its manifest (sizes and sha256) and list the changed ones, with the
    files and their paths, and the entries runs set aside; with --remove, delete them."""
    cache = Cache(args.cache_dir)
    broken = 0
    folders = sorted((cache.root / "entries").glob("*"))
    for folder in folders:
        try:
            entry = Entry(folder.name, folder, json.loads((folder / "entry.json").read_text()))
            problems = cache.problems(entry)
        except (OSError, ValueError) as err:
            entry, problems = Entry(folder.name, folder, {}), [f"{folder / 'entry.json'}: {err}"]
        if problems:
            broken += 1
            print(f"{folder.name[:12]}.. changed: {'; '.join(problems[:5])}")
            if args.remove:
                cache.remove(entry)
    aside = cache.set_aside()
    for folder in aside:
        print(f"{folder.name[:12]}.. changed, set aside by a run that rebuilt it: {folder}")
        if args.remove:
            shutil.rmtree(folder, ignore_errors=True)
    action = "removed" if args.remove else "a re-run rebuilds them; --remove deletes them"
    found = broken + len(aside)
    print(
        f"{len(folders)} entries checked, {broken} changed"
        + (f", {len(aside)} set aside" if aside else "")
        + (f" ({action})" if found else "")
    )
    return 2 if found and not args.remove else 0


def clean_command(args) -> int:
    """Remove leftovers of interrupted passes and changed entries set aside (and, without --partial, the
    entries), then say what went: count and bytes, or that there was nothing to remove."""
    from slimtune.files import folder_size

    cache = Cache(args.cache_dir)
    doomed = [*cache.leftovers(), *cache.set_aside()]
    if not args.partial:
        doomed += [
            e.path for e in cache.entries() if not args.pass_type or e.info.get("pass_type") == args.pass_type
        ]
    removed, freed, failed = 0, 0, []
    for path in doomed:
        size = folder_size(path) if path.exists() else 0
        problem = _remove_folder(path)
        if problem:
            failed.append(f"{path}: {problem}")
        else:
            removed, freed = removed + 1, freed + size
    if removed:
        print(
            f"removed {removed} folder{'s' if removed != 1 else ''} ({freed / 1e6:,.1f} MB) from {cache.root}"
        )
    elif not failed:
        print(f"nothing to remove in {cache.root}")
    for line in failed:
        print(f"could not remove {line}")
    return 2 if failed else 0


def _remove_folder(path: Path) -> str | None:
    """Delete `path`; None when it is gone, else why not (the first error)."""
    errors: list[str] = []
    shutil.rmtree(path, onerror=lambda _func, name, exc: errors.append(f"{name}: {exc[1]}"))
    if not path.exists():
        return None
    return errors[0] if errors else "still there"
