"""A cache on object storage (`cache_dir: s3://bucket/prefix`, `az://container/prefix`, `abfs://...`) that several
machines share, each computing an entry only if no other has.

Remote layout under the URL (the local cache's entries/ layout, see engine/cache.py):
  entries/<key>/output/...    the pass's output files, uploaded first
  entries/<key>/entry.json    the manifest (size, sha256 of every file), uploaded last: an entry without it is
                              absent (a partial upload is ignored and redone)
  entries/<key>/lease.json    while a run computes the entry: which run, until when (engine/lease.py)

Each machine works in a local mirror, `$SLIMTUNE_HOME/remote/<hash of the URL>` (default under
~/.cache/slimtune): an ordinary local cache holding the entries this machine computed or downloaded, its attempt
and checkpoint folders, the data fingerprints and the evaluation cache. A lookup that misses the mirror reads the
remote manifest and downloads the entry, checking every file against it; a file that does not match is reported,
the entry is not used, and the pass runs again (its upload replaces the bad entry). A committed entry is uploaded
while the run holds the entry's lease; a run that finds the lease held by a live run waits (saying for whom)
until the entry appears, then downloads it.

Evaluation results stay in the mirror, per machine: latency depends on the machine, and the other metrics are
quick next to the passes. Run records go to output_dir (which may be remote too: engine/remote_output.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slimtune.engine.cache import Cache, Entry, _counter
from slimtune.engine.lease import Lease, holder_text
from slimtune.files import sha256_file, write_json_atomic
from slimtune.redact import redact_url
from slimtune.storage.fs import open_filesystem

MANIFEST = "entry.json"
LEASE = "lease.json"
POLL_S = 1.0  # how often a waiting run looks whether the entry appeared or the lease expired


def open_cache(location: str | Path) -> Cache:
    """The cache at `location`: a local folder, or an s3:// / az:// / abfs:// URL (a shared cache)."""
    if "://" in str(location):  # the config's schema admits only those schemes
        return SharedCache(str(location))
    return Cache(location)


def mirror_root(url: str) -> Path:
    """The local folder mirroring the cache at `url` (the same URL, with or without a query, gets one folder)."""
    from slimtune.models.store import slimtune_home

    plain = url.split("?", 1)[0].rstrip("/")
    return slimtune_home() / "remote" / hashlib.sha256(plain.encode()).hexdigest()[:16]


class SharedCache(Cache):
    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        super().__init__(mirror_root(url))
        self.url = url.rstrip("/")
        self.shown = redact_url(self.url.split("?", 1)[0])  # for messages and records
        self.fs, base = open_filesystem(url, storage_options)
        self.base = base.split("?", 1)[0].rstrip("/")
        self._leases: dict[str, Lease] = {}
        self._bad: set[str] = set()  # keys whose remote entry failed its check (reported once)
        self._shared: set[str] = set()  # keys known to be on the store (or being put there by another run)
        self.root.mkdir(parents=True, exist_ok=True)
        source = self.root / "source.json"
        if not source.exists():  # which remote this folder mirrors, for people looking at ~/.cache
            write_json_atomic(source, {"url": self.shown})

    def remote(self, key: str, *parts: str) -> str:
        return "/".join([self.base, "entries", key, *parts])

    def location(self, key: str) -> str:
        return f"{self.shown}/entries/{key}"

    # ------------------------------------------------------------ lookups

    def lookup(self, key: str, report: bool = True) -> Entry | None:
        entry = super().lookup(key, report)
        if entry is not None:
            self._share(entry)
            return entry
        return self._download(key, report)

    def entries(self) -> list[Entry]:
        """The mirror's entries (listing them shares nothing)."""
        found = [
            super(SharedCache, self).lookup(p.name, report=False)
            for p in sorted((self.root / "entries").glob("*"))
        ]
        return [entry for entry in found if entry is not None]

    def _share(self, entry: Entry) -> None:
        """Upload a mirror entry the store lacks (its run was killed before the upload, or the upload failed),
        under its lease; nothing when another run holds the lease (it computes or uploads the entry)."""
        if entry.key in self._shared:
            return
        self._shared.add(entry.key)
        if entry.key in self._leases or self.fs.exists(self.remote(entry.key, MANIFEST)):
            return
        lease = Lease(self.fs, self.remote(entry.key, LEASE))
        if lease.try_take()[0]:
            try:
                self._upload(entry)
            finally:
                lease.release()

    def has(self, key: str) -> bool:
        return super().lookup(key, report=False) is not None or self.fs.exists(self.remote(key, MANIFEST))

    def _download(self, key: str, report: bool = True) -> Entry | None:
        """The remote entry, downloaded into the mirror and checked against its manifest; None when there is none
        or it does not match (said once, with the files)."""
        try:
            info = json.loads(self.fs.cat_file(self.remote(key, MANIFEST)))
        except FileNotFoundError:
            return None
        except ValueError:
            info = None
        attempt = self.root / "tmp" / f"{key}.{os.getpid()}.{next(_counter)}.download"
        try:
            problems = (
                self._fetch(key, info, attempt) if isinstance(info, dict) else [f"{MANIFEST}: unreadable"]
            )
            if problems:
                if report and key not in self._bad:
                    print(
                        f"remote cache entry {key[:12]}.. at {self.location(key)} does not match its manifest: "
                        f"{'; '.join(problems[:5])}. It is not used: the pass runs again and replaces it",
                        flush=True,
                    )
                self._bad.add(key)
                return None
            local = super().lookup(key, report=False)  # another process of this machine placed it meanwhile
            if local is not None:
                return local
            try:
                entry = self._place(key, attempt, info)
            except OSError:  # ... just now
                return super().lookup(key, report=False)
            self._shared.add(key)
            print(f"cache entry {key[:12]}.. ({info.get('pass_name', '?')}) from {self.shown}", flush=True)
            return entry
        finally:
            shutil.rmtree(attempt, ignore_errors=True)

    def _fetch(self, key: str, info: dict[str, Any], attempt: Path) -> list[str]:
        """Download the manifest's files into attempt/output; what does not match it (nothing: all is well). The
        manifest's modification times become the local files' (the mirror's own lookups compare them)."""
        files = info.get("files")
        if info.get("key") != key or not isinstance(files, dict):
            return [f"{MANIFEST}: not the manifest of this key"]
        problems = []
        for name, expected in files.items():
            local = attempt / "output" / name
            if ".." in Path(name).parts or Path(name).is_absolute():
                return [f"{name}: a path outside the entry"]
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.fs.get_file(self.remote(key, "output", name), str(local))
            except FileNotFoundError:
                problems.append(f"output/{name}: missing")
                continue
            size = local.stat().st_size
            if size != expected.get("size"):
                problems.append(f"output/{name}: {size} bytes, {expected.get('size')} in the manifest")
            elif sha256_file(local) != expected.get("sha256"):
                problems.append(f"output/{name}: content differs (sha256)")
            expected["mtime_ns"] = local.stat().st_mtime_ns
        return problems

    # ------------------------------------------------------------ computing an entry

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the entry's lease while the caller computes it; or return once another run's entry is here.
        The local lock first: processes of one machine share the mirror."""
        with super().lock(key):
            lease = Lease(self.fs, self.remote(key, LEASE))
            told = False
            while True:
                taken, holder = lease.try_take()
                if taken:
                    break
                if self._download(key) is not None:  # the holder finished: the caller's lookup finds it
                    yield
                    return
                if holder and not told:
                    until = max(0.0, holder.get("expires", 0) - time.time())
                    print(
                        f"waiting for another run ({holder_text(holder)}) working on cache entry {key[:12]}.. in "
                        f"{self.shown} (its lease runs {until:.0f} s more unless renewed)",
                        flush=True,
                    )
                    told = True
                time.sleep(POLL_S)
            if holder:
                print(
                    f"took over the expired lease of {holder_text(holder)} on cache entry {key[:12]}.. (that run "
                    "stopped renewing it)",
                    flush=True,
                )
            self._leases[key] = lease
            try:
                yield
            finally:
                del self._leases[key]
                lease.release()

    def commit(self, key: str, attempt: Path, info: dict[str, Any]) -> Entry:
        entry = super().commit(key, attempt, info)
        lease = self._leases.get(key)
        if lease is not None and not lease.lost:
            self._upload(entry)
        return entry

    def _upload(self, entry: Entry) -> None:
        """The output files, then the manifest. An older manifest (of an entry that failed its check) goes first,
        so that no reader pairs it with the new files."""
        manifest = self.remote(entry.key, MANIFEST)
        try:
            if self.fs.exists(manifest):
                self.fs.rm_file(manifest)
            for name in entry.info["files"]:
                self.fs.put_file(str(entry.output / name), self.remote(entry.key, "output", name))
            self.fs.pipe_file(manifest, json.dumps(entry.info, indent=2, default=str).encode())
        except Exception as err:  # the run's result is good locally; only sharing it failed
            print(
                f"could not upload cache entry {entry.key[:12]}.. to {self.shown}: {err}. It stays in {self.root}; "
                "other machines will compute it themselves",
                flush=True,
            )
            return
        self._bad.discard(entry.key)
        self._shared.add(entry.key)
        print(f"cache entry {entry.key[:12]}.. uploaded to {self.shown}", flush=True)
