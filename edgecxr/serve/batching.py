"""Dynamic batching: requests that arrive close together run through the model as one batch.

Why: a model runs a batch of 8 in much less than 8 times the time of one (on a GPU by far), so a
service that runs each request alone wastes most of the device under load. Like Triton's
`dynamic_batching`, a batch runs as soon as it holds `max_batch` rows, or when the oldest request
has waited `max_delay_s`, whichever comes first.

The queue is bounded (`max_queue` rows admitted and not yet answered, running ones included, and,
with `max_wait_s`, no more rows than the measured batch time can serve within that wait): a
request that does not fit is refused at once with `Overloaded` (the service answers 503 with
Retry-After) instead of waiting behind a queue that grows without limit or that it would outlive. A request whose caller
gave up (timeout, client gone) is cancelled: if it has not run yet it is dropped from the queue,
never computed; if it is running its result is discarded. Every other request gets exactly its own
rows back, in order.

One batcher per model and kind of work; the model itself runs on a one-thread executor per model
(shared by its batchers), so a backend never sees two batches at once and the event loop never
blocks on inference.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """The queue is full; try again after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"server busy: the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Entry:
    items: list[Any]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What the batcher did, for /metrics and the tests (counters only ever grow)."""

    batches: int = 0
    rows: int = 0
    largest: int = 0
    dropped: int = 0  #: requests cancelled before they ran (never computed)


class DynamicBatcher:
    """Collects rows from concurrent requests into batches for one run function.

    Args:
        run: called in `executor` with the rows of one batch; returns one result per row, in order.
        executor: where `run` runs (one thread per model).
        max_batch: most rows in one batch.
        max_delay_s: longest the oldest queued row waits for others before its batch runs.
        max_queue: most rows admitted and not yet answered; more are refused with Overloaded.
        on_batch: called with (rows, seconds) after each batch (metrics).
        on_run: called after each batch with (each part's seconds in the queue, rows, seconds, ok)
            (the per-model statistics of stats.py).
        max_wait_s: refuse rows whose expected wait behind the queue is longer (the request
            timeout: better a 503 now than a 504 after a model run nobody receives); None: no limit.
    """

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], executor: Executor, max_batch: int,
                 max_delay_s: float, max_queue: int, on_batch: Callable[[int, float], None] | None = None,
                 max_wait_s: float | None = None,
                 on_run: Callable[[list[float], int, float, bool], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_delay_s < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_delay_s >= 0")
        self.run, self.executor = run, executor
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_s, max_queue
        self.on_batch, self.on_run = on_batch, on_run
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self.pending = 0  #: rows admitted and not yet answered (queued or running)
        self._queue: deque[_Entry] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._batch_s = 0.0  #: moving average of a batch's run time, for Retry-After

    # -- lifecycle (inside the event loop) ---------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        """Stop taking requests, run what is queued (no more waiting for fuller batches), then stop."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task

    def expect(self, batch_s: float) -> None:
        """Seed the batch-time estimate (from the warm-up) so the first Retry-After is not a guess."""
        if self.stats.batches == 0:
            self._batch_s = batch_s

    # -- requests -----------------------------------------------------------------------------------
    def expected_wait_s(self, rows: int = 0) -> float:
        """How long `rows` more rows would wait for their answer: the batches ahead times a batch's run time."""
        return math.ceil(max(self.pending + rows, 1) / self.max_batch) * self._batch_s

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (for the Retry-After header), 1 to 60."""
        return int(min(60, max(1, math.ceil(self.expected_wait_s()))))

    def would_refuse(self, rows: int) -> bool:
        """True when `rows` more rows do not fit: past max_queue, or (with a queue ahead of them) they
        would wait longer than max_wait_s, so they would time out after costing a model run anyway."""
        if self.pending + rows > self.max_queue:
            return True
        return self.max_wait_s is not None and self.pending > 0 and self.expected_wait_s(rows) > self.max_wait_s

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Queue `items` (one request's rows) and wait for their results, in order.

        Raises Overloaded when they do not fit in the queue (nothing is queued then), RuntimeError
        once the batcher is closing, and what `run` raised for the batch they ran in.
        """
        items = list(items)
        if not items:
            return []
        if self._closing or self._wake is None:
            raise RuntimeError("the server is shutting down")
        if self.would_refuse(len(items)):
            raise Overloaded(self.retry_after())
        loop = asyncio.get_running_loop()
        entries = [_Entry(items[i : i + self.max_batch], loop.create_future())
                   for i in range(0, len(items), self.max_batch)]
        self.pending += len(items)
        self._queue.extend(entries)
        self._wake.set()
        try:
            parts = await asyncio.gather(*(e.future for e in entries))
        except BaseException:
            for e in entries:  # the caller gave up (or one part failed): nothing more is computed for it
                e.future.cancel()
            raise
        return [r for part in parts for r in part]

    # -- the loop ------------------------------------------------------------------------------------
    def _queued_rows(self) -> int:
        return sum(len(e.items) for e in self._queue if not e.future.done())

    def _drop_cancelled(self) -> None:
        while self._queue and self._queue[0].future.done():
            gone = self._queue.popleft()
            self.pending -= len(gone.items)
            self.stats.dropped += 1

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            self._drop_cancelled()
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = self._queue[0].enqueued + self.max_delay_s
            while not self._closing and self._queued_rows() < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            await self._run_batch(self._take())

    def _take(self) -> list[_Entry]:
        """The entries of the next batch: from the front, skipping cancelled ones, up to max_batch rows."""
        batch: list[_Entry] = []
        rows = 0
        while self._queue:
            entry = self._queue[0]
            if entry.future.done():
                self._queue.popleft()
                self.pending -= len(entry.items)
                self.stats.dropped += 1
                continue
            if rows + len(entry.items) > self.max_batch:
                break
            batch.append(self._queue.popleft())
            rows += len(entry.items)
        return batch

    async def _run_batch(self, batch: list[_Entry]) -> None:
        if not batch:
            return
        rows = [item for e in batch for item in e.items]
        waits = [time.monotonic() - e.enqueued for e in batch]
        t0 = time.perf_counter()
        ok = False
        try:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.run, rows)
            if len(results) != len(rows):
                raise RuntimeError(f"batch run returned {len(results)} results for {len(rows)} rows")
        except Exception as exc:  # the whole batch failed: every request in it is told why
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(exc)
        else:
            ok = True
            at = 0
            for e in batch:
                if not e.future.done():  # a request cancelled while running: its result is dropped
                    e.future.set_result(list(results[at : at + len(e.items)]))
                at += len(e.items)
        finally:
            seconds = time.perf_counter() - t0
            self._batch_s = seconds if self.stats.batches == 0 else 0.8 * self._batch_s + 0.2 * seconds
            self.pending -= len(rows)
            self.stats.batches += 1
            self.stats.rows += len(rows)
            self.stats.largest = max(self.stats.largest, len(rows))
            if self.on_batch is not None:
                self.on_batch(len(rows), seconds)
            if self.on_run is not None:
                self.on_run(waits, len(rows), seconds, ok)
