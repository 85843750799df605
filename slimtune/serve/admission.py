"""How many requests run at once and how many may wait: a bounded queue, never an unbounded pile-up.

`parallel` requests hold a slot at a time (they generate, alone or batched, on the scheduler's threads:
batching.py); up to `queue_size` more wait for a slot; one more is answered 429 with a `Retry-After` computed
from the recent request times. A slot is given back when its request ends, which it does at the next token
once the request is cancelled (a client gone, a time limit passed), or at once if it had not started.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from slimtune.serve.protocol import ApiError


class Admission:
    def __init__(self, parallel: int, queue_size: int):
        self.parallel, self.queue_size = parallel, queue_size
        self._slots = asyncio.Semaphore(parallel)
        self.running = 0
        self.waiting = 0
        self._durations: deque[float] = deque(maxlen=20)

    async def acquire(self, deadline: float, gone: Callable[[], Awaitable[bool]]) -> None:
        """Wait for a slot until `deadline` (time.monotonic), giving up when `gone()` says the client left."""
        if self.running >= self.parallel and self.waiting >= self.queue_size:
            raise ApiError(
                429,
                f"the server is busy: {self.running} request(s) running and {self.waiting} waiting "
                f"(--queue-size {self.queue_size}); retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.retry_after())},
            )
        self.waiting += 1
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ApiError(
                        504,
                        "the request waited for a slot past its time limit (--request-timeout)",
                        type="server_error",
                        code="timeout",
                    )
                try:
                    await asyncio.wait_for(self._slots.acquire(), min(left, 0.5))
                    break
                except TimeoutError:
                    if await gone():
                        raise ApiError(
                            499, "the client closed the connection", code="client_closed"
                        ) from None
        finally:
            self.waiting -= 1
        self.running += 1

    def release(self, seconds: float) -> None:
        """Give the slot back (on the event loop's thread)."""
        self.running -= 1
        self._durations.append(seconds)
        self._slots.release()

    def retry_after(self) -> int:
        typical = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(typical * (self.waiting + 1) / self.parallel))


class Job:
    """One request's generation as the event loop sees it: text pieces and the end come back on an asyncio
    queue (put there from the generating thread); its slot is given back when it ends."""

    def __init__(self, admission: Admission):
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancel = threading.Event()
        self.on_stop: Callable[[], None] | None = None  # set by whoever may drop the job before it starts
        self._admission = admission
        self._start = time.monotonic()
        self._ended = threading.Lock()

    def emit(self, piece: str) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, ("text", piece))

    def end(self, kind: str, value: Any) -> None:
        """`end`, the work's return value, or `error`, the exception it raised; only the first call counts."""
        if not self._ended.acquire(blocking=False):
            return
        self.loop.call_soon_threadsafe(self._admission.release, time.monotonic() - self._start)
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))

    def stop(self) -> None:
        """The client is gone (or its answer is complete): the work ends at its next token."""
        self.cancel.set()
        if self.on_stop is not None:
            self.on_stop()

    async def result(self, gone: Callable[[], Awaitable[bool]]) -> Any:
        """The work's return value, skipping text pieces; stops the work when the client leaves."""
        while True:
            try:
                kind, value = await asyncio.wait_for(self.events.get(), 0.5)
            except TimeoutError:
                if await gone():
                    self.stop()
                    raise ApiError(499, "the client closed the connection", code="client_closed") from None
                continue
            if kind == "end":
                return value
            if kind == "error":
                raise value
