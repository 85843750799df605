"""A lease on one entry of a shared cache: the object `entries/<key>/lease.json` says which run computes the entry
and until when. It replaces the local file lock when the cache is on object storage, where several machines run.

- taken with a conditional create (S3 `If-None-Match: *`, Azure `if_none_match="*"`): of two runs, one wins;
- renewed by a background thread every third of its time to live, each renewal conditional on the version it
  wrote last (a run that lost its lease, because it stalled past the expiry and another took it over, finds out
  at the next renewal and does not upload);
- an expired lease (its holder was killed, or lost its network) is taken over with a conditional replace of the
  version read, so of two runs that see it expired, one takes it;
- released (deleted, if still ours) after the entry's manifest is uploaded.

Expiry times are the holders' clocks: machines sharing a cache need clocks within a few seconds of each other
(NTP), far less than the time to live (SLIMTUNE_LEASE_TTL seconds, default 120).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from slimtune.storage import conditional

DEFAULT_TTL_S = 120.0


def lease_ttl() -> float:
    return float(os.environ.get("SLIMTUNE_LEASE_TTL") or DEFAULT_TTL_S)


def holder_text(lease: dict[str, Any]) -> str:
    """Whom a lease names, for people: 'pid 123 on host-a'."""
    return f"pid {lease.get('pid', '?')} on {lease.get('host', '?')}"


@dataclass
class Lease:
    """One run's lease on `path` (in `fs`). `lost` turns True when a renewal found it taken over."""

    fs: Any
    path: str
    ttl: float = field(default_factory=lease_ttl)
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    etag: str | None = None
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def body(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "renewed": now,
                "expires": now + self.ttl,
                "ttl_s": self.ttl,
            }
        ).encode()

    def try_take(self) -> tuple[bool, dict[str, Any] | None]:
        """(taken, the holder's lease when not taken). Takes a free lease, or an expired one over (the second
        element then is the expired lease, to say whose it was)."""
        etag = conditional.create(self.fs, self.path, self.body())
        if etag is not None:
            self._hold(etag)
            return True, None
        current = conditional.read(self.fs, self.path)
        if current is None:  # released between the two calls: try again next time
            return False, {}
        holder = _parse(current.data)
        if holder.get("expires", 0) >= time.time():
            return False, holder
        etag = conditional.replace(self.fs, self.path, self.body(), current.etag)
        if etag is None:  # another run took it over first
            return False, holder
        self._hold(etag)
        return True, holder

    def _hold(self, etag: str) -> None:
        self.etag = etag
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="slimtune-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                etag = conditional.replace(self.fs, self.path, self.body(), self.etag)
            except Exception as err:  # a network hiccup: the next renewal may get through before expiry
                print(f"could not renew the cache lease {self.path}: {err}", flush=True)
                continue
            if etag is None:
                self.lost = True
                print(
                    f"the cache lease {self.path} was taken over by another run (this one stalled past its "
                    "expiry); this run's result is kept locally and not uploaded",
                    flush=True,
                )
                return
            self.etag = etag

    def release(self) -> None:
        """Stop renewing and delete the lease object, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost and self.etag is not None:
            try:
                conditional.delete(self.fs, self.path, self.etag)
            except Exception as err:  # it expires on its own
                print(f"could not release the cache lease {self.path}: {err}", flush=True)


def _parse(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}  # unreadable: no expiry, so it counts as expired
    return value if isinstance(value, dict) else {}
