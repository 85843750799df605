"""Where admitted requests generate: `lanes` threads, each running one batch at a time.

A batch is up to `batch_size` waiting requests on the same adapter, generated together by one ONNX Runtime
GenAI generator (decode.generate_batch): each row keeps its own sampling settings, seed, stop strings and time
limit, and streams to its own client. The generator's batch is static: rows are fixed when it starts, so a
request that arrives while a lane is busy waits for a free lane, and a row that ends early (its client gone,
its stop string met) is answered and its slot given back at once, but the lane runs until its last row ends.
When a lane frees, the oldest waiting request leads the next batch, with the others of its kind. Clients that
just had an answer tend to send their next request at once, so while answers that ended within the last
`gather_s` have not been followed by as many new requests, the lane waits for them (up to `gather_s` after
the first of those ends, for at most `batch_size` rows): a lone client, whose next request follows its own
answer, never waits. Requests that cannot share a batch run alone on a lane, as `generate` runs them: a
Hugging Face model, a prompt ending with the pad id, the predict route's scoring (`work`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimtune.serve.admission import Job
from slimtune.serve.decode import Outcome, Row, ServedModel, generate, generate_batch


@dataclass
class _Waiting:
    job: Job
    row: Row | None  # a generation; else `work` runs alone
    work: Callable[[Callable[[str], None], threading.Event], Any] | None
    adapter: str | None
    since: float
    stream: bool


class Scheduler:
    def __init__(self, served: ServedModel, lanes: int, batch_size: int, gather_s: float):
        self.served, self.batch_size, self.gather_s = served, batch_size, gather_s
        self._cond = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._free = lanes
        self._ends: deque[float] = deque(maxlen=batch_size)  # when the latest answers ended (time.monotonic)
        self._gather_until = 0.0
        self.largest_batch = 0  # the most rows generated together so far (GET /health shows it)
        threading.Thread(target=self._dispatch, daemon=True, name="slimtune-schedule").start()

    def submit(
        self,
        job: Job,
        *,
        row: Row | None = None,
        work: Callable[[Callable[[str], None], threading.Event], Any] | None = None,
        adapter: str | None = None,
        stream: bool = False,
    ) -> Job:
        """Queues `row` (a generation) or `work` (run alone) for the next free lane; returns `job`."""
        waiting = _Waiting(job, row, work, adapter, time.monotonic(), stream)
        job.on_stop = lambda: self._drop(waiting)
        with self._cond:
            self._waiting.append(waiting)
            self._cond.notify_all()
        return job

    def _drop(self, waiting: _Waiting) -> None:
        """A request whose client left before it started: out of the queue, its slot given back now."""
        with self._cond:
            if waiting not in self._waiting:
                return
            self._waiting.remove(waiting)
        waiting.job.end("end", Outcome("cancelled", 0, ""))

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not (self._waiting and self._free):
                    self._cond.wait()
                batch = self._take()
                if batch is None:  # gathering: wait for more requests of the head's kind, or the window's end
                    self._cond.wait(max(0.0, self._gather_until - time.monotonic()))
                    continue
                self._free -= 1
            threading.Thread(target=self._run, args=(batch,), daemon=True, name="slimtune-lane").start()

    def _take(self) -> list[_Waiting] | None:
        """The next batch (under the lock): the oldest request and the others that may share its batch, or
        None while it may still gather more."""
        head = self._waiting[0]
        if head.row is None or self.batch_size == 1 or not self.served.batchable(head.row.prompt_ids):
            return [self._waiting.pop(0)]
        batch, width, new = [], 0, 0
        for waiting in self._waiting:
            if len(batch) == self.batch_size:
                break
            row = waiting.row
            if row is None or waiting.adapter != head.adapter or not self.served.batchable(row.prompt_ids):
                continue
            w, n = max(width, len(row.prompt_ids)), max(new, row.sampling.max_tokens)
            if w + n > self.served.context_length:  # the padded batch would not fit: a later batch
                continue
            batch.append(waiting)
            width, new = w, n
        now = time.monotonic()
        recent = [t for t in self._ends if t >= now - self.gather_s]
        if recent and len(batch) < self.batch_size:
            # the requests already waiting when those answers ended, and one per answer to come back
            expected = sum(w.since < recent[0] for w in batch) + len(recent)
            if len(batch) < min(expected, self.batch_size):
                self._gather_until = recent[0] + self.gather_s
                return None
        for waiting in batch:
            self._waiting.remove(waiting)
        return batch

    def _finish(self, waiting: _Waiting, kind: str, value: Any) -> None:
        """Ends a request; its end is noted first, since its client's next request may follow at once."""
        with self._cond:
            self._ends.append(time.monotonic())
        waiting.job.end(kind, value)

    def _run(self, batch: list[_Waiting]) -> None:
        try:
            rows = [
                dataclasses.replace(w.row, emit=w.job.emit if w.stream else None, cancel=w.job.cancel)
                for w in batch
                if w.row is not None
            ]
            if len(rows) > 1:
                self.largest_batch = max(self.largest_batch, len(rows))
                try:
                    generate_batch(
                        self.served,
                        rows,
                        lambda i, outcome: self._finish(batch[i], "end", outcome),
                        batch[0].adapter,
                    )
                except Exception as err:  # every row not yet answered gets the error; the server stays up
                    for waiting in batch:
                        self._finish(waiting, "error", err)
                return
            alone, job = batch[0], batch[0].job
            try:
                if alone.row is None:
                    result = alone.work(job.emit, job.cancel)
                else:
                    row = rows[0]
                    result = generate(
                        self.served,
                        row.prompt_ids,
                        row.sampling,
                        adapter=alone.adapter,
                        emit=row.emit,
                        cancel=row.cancel,
                        deadline=row.deadline,
                        stop_text=row.stop_text,
                    )
            except Exception as err:  # reported to the client as a 500 body; the server stays up
                self._finish(alone, "error", err)
                return
            self._finish(alone, "end", result)
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()
