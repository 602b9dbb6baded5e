"""The dynamic batcher on its own: merging, splitting, the bound, cancellation and failures (no HTTP)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgecxr.serve.batching import DynamicBatcher, Overloaded


class Recorder:
    """A run function that doubles its rows and remembers every batch it saw."""

    def __init__(self, fail: bool = False):
        self.batches: list[list[int]] = []
        self.fail = fail

    def __call__(self, rows: list[int]) -> list[int]:
        self.batches.append(list(rows))
        if self.fail:
            raise RuntimeError("model failed")
        return [2 * r for r in rows]


def _run(coro_fn, **kw):
    async def main():
        run = kw.pop("run", Recorder())
        with ThreadPoolExecutor(1) as pool:
            batcher = DynamicBatcher(run, pool, **kw)
            batcher.start()
            try:
                return await coro_fn(batcher), run, batcher
            finally:
                await batcher.close()

    return asyncio.run(main())


def test_concurrent_requests_share_a_batch_and_get_their_own_rows() -> None:
    async def go(b):
        return await asyncio.gather(b.submit([1]), b.submit([2, 3]), b.submit([4]))

    results, run, batcher = _run(go, max_batch=4, max_delay_s=30, max_queue=8)
    assert results == [[2], [4, 6], [8]]
    assert run.batches == [[1, 2, 3, 4]] and batcher.stats.batches == 1 and batcher.pending == 0


def test_a_large_request_is_split_into_batches_in_order() -> None:
    results, run, _ = _run(lambda b: b.submit([1, 2, 3, 4, 5]), max_batch=2, max_delay_s=0, max_queue=8)
    assert results == [2, 4, 6, 8, 10] and [len(x) for x in run.batches] == [2, 2, 1]


def test_a_full_queue_refuses_without_queueing() -> None:
    async def go(b):
        first = asyncio.ensure_future(b.submit([1, 2]))
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded) as refused:
            await b.submit([3])
        assert refused.value.retry_after >= 1 and b.pending == 2
        b.max_delay_s = 0
        return await first

    results, run, _ = _run(go, max_batch=4, max_delay_s=0.5, max_queue=2)
    assert results == [2, 4] and run.batches == [[1, 2]]


def test_a_cancelled_request_is_never_computed() -> None:
    async def go(b):
        gone = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client left while its row waited for company
        return await asyncio.gather(b.submit([2]), b.submit([3]))

    results, run, batcher = _run(go, max_batch=2, max_delay_s=30, max_queue=8)
    assert results == [[4], [6]] and run.batches == [[2, 3]] and batcher.stats.dropped == 1


def test_a_failing_batch_fails_each_of_its_requests() -> None:
    async def go(b):
        return await asyncio.gather(b.submit([1]), b.submit([2]), return_exceptions=True)

    results, _, batcher = _run(go, run=Recorder(fail=True), max_batch=2, max_delay_s=30, max_queue=8)
    assert [str(r) for r in results] == ["model failed", "model failed"] and batcher.pending == 0


def test_rows_that_would_outlive_the_timeout_are_refused_while_a_queue_is_ahead() -> None:
    async def go(b):
        b.expect(5.0)  # a batch takes 5 s; the request timeout (max_wait_s) is 1 s
        first = asyncio.ensure_future(b.submit([1]))  # nothing ahead of it: admitted (and it re-measures)
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await b.submit([2])  # room in the queue, but it would wait ~5 s for a 1 s timeout
        return await first

    results, run, _ = _run(go, max_batch=4, max_delay_s=0.05, max_queue=8, max_wait_s=1.0)
    assert results == [2] and run.batches == [[1]]
