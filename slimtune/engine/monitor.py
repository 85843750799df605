"""Peak memory of a pass (this process and its children) and its wall time."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

# A sampling thread may use at most 1/BACKOFF of the time: a slow sample waits BACKOFF times its own cost
# before the next. psutil's recursive child walk reads every process in /proc, 160 ms a sample on a lent GPU
# machine; sampled every 0.2 s it took the GIL from the training loop of a small model.
BACKOFF = 20


class PeakMemory:
    """Peak resident memory while the block runs, this process's and its children's, sampled in a background
    thread (children found through /proc/<pid>/task/*/children when the kernel has that file, otherwise
    psutil). On Linux this process's high-water mark (VmHWM, reset at the start through /proc/self/clear_refs)
    is counted too, so a peak between two samples is not lost while it is still held at the end or the kernel
    recorded it (it does so lazily)."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_bytes = 0
        self._own_peak = False
        self._sampled = 0  # largest sample of this process and its children together
        self._children = 0  # largest sample of the children alone
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        children = sum(_rss(pid) for pid in _descendants(os.getpid()))
        self._children = max(self._children, children)
        self._sampled = max(self._sampled, children + _rss(os.getpid()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            self._sample()
            cost = time.perf_counter() - start
            self._stop.wait(max(self.interval, BACKOFF * cost))

    def __enter__(self) -> PeakMemory:
        self._own_peak = _reset_high_water_mark()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="slimtune-peak-memory")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self._sample()
        own = _high_water_mark() if self._own_peak else None
        self.peak_bytes = max(self._sampled, (own or 0) + self._children)


def _reset_high_water_mark() -> bool:
    """Reset this process's VmHWM; True where the kernel keeps one and it could be reset (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _high_water_mark() is not None


def _high_water_mark() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss(pid: int) -> int:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0  # ended between the listing and the read


def _descendants(pid: int) -> list[int]:
    if not Path(f"/proc/{pid}/task/{pid}/children").exists():  # not Linux, or a kernel without the file
        import psutil

        try:
            return [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    out, todo = [], _proc_children(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(_proc_children(child))
    return out


def _proc_children(pid: int) -> list[int]:
    """Children of `pid` from /proc/<pid>/task/<tid>/children (none once the process has ended)."""
    task = Path(f"/proc/{pid}/task")
    out: list[int] = []
    try:
        threads = os.listdir(task)
    except OSError:
        return out
    for tid in threads:
        try:
            out += [int(x) for x in (task / tid / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # the thread ended
    return out


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
