"""The conditions a latency figure was taken under: when, and how busy the machine was with other work.

Latency is only true when nothing else competes for the CPU. Two slimtune processes never measure at once:
a measurement holds a machine-wide lock (a file lock the kernel drops when the holder dies) and a second one
waits, saying so. Other programs cannot be locked out, so the CPU time they used during the measurement is
recorded (system-wide busy time minus this process's own, over the measurement's wall time and the CPUs):
a figure taken while others used more than CONTENDED of the machine is marked, reported, and measured again
rather than reused from the evaluation cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CONTENDED = (
    0.25  # share of the machine's CPU time used by other processes that makes a latency figure doubtful
)


def lock_path() -> Path:
    """One lock per user and machine (SLIMTUNE_MEASURE_LOCK moves it, e.g. onto a shared node's disk)."""
    given = os.environ.get("SLIMTUNE_MEASURE_LOCK")
    return Path(given) if given else Path(tempfile.gettempdir()) / f"slimtune-measure-{os.getuid()}.lock"


def _busy_seconds() -> tuple[float, float]:
    """(system-wide busy CPU seconds, this process's CPU seconds incl. its threads and waited-for children)."""
    import psutil

    system = psutil.cpu_times()
    idle = system.idle + getattr(system, "iowait", 0.0)
    busy = sum(system) - idle - getattr(system, "guest", 0.0) - getattr(system, "guest_nice", 0.0)
    own = psutil.Process().cpu_times()
    return busy, own.user + own.system + own.children_user + own.children_system


@contextlib.contextmanager
def measuring_alone(log=None) -> Iterator[dict[str, Any]]:
    """Hold the measurement lock while the block runs; yields a dict that is filled, when the block ends, with
    measured_at (UTC, ISO 8601), wall_s, waited_s, other_cpu_share and contended."""
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))  # stdout may be JSON
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conditions: dict[str, Any] = {}
    with open(path, "a+") as handle:
        asked = time.monotonic()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            log(f"waiting for another slimtune process (pid {holder}) to finish measuring latency...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        waited = time.monotonic() - asked
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            busy0, own0 = _busy_seconds()
            start = time.monotonic()
            yield conditions
            wall = time.monotonic() - start
            busy1, own1 = _busy_seconds()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    cpus = os.cpu_count() or 1
    others = max(0.0, (busy1 - busy0) - (own1 - own0))
    share = min(1.0, others / (wall * cpus)) if wall > 0 else 0.0
    conditions.update(
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        wall_s=round(wall, 3),
        waited_s=round(waited, 3),
        other_cpu_share=round(share, 3),
        contended=share > CONTENDED,
    )


def contended(latency: dict[str, Any] | None) -> bool:
    """True when a recorded latency was taken under load (or records no conditions: taken before they were)."""
    if not isinstance(latency, dict):
        return False
    conditions = latency.get("conditions")
    return not isinstance(conditions, dict) or bool(conditions.get("contended"))
