"""Per-model inference statistics in the shape of Triton's statistics extension
(`GET /v2/models[/NAME[/versions/V]]/stats`, tritonclient's `get_inference_statistics`).

Why besides /metrics: a client or tool written for Triton (tritonclient, perf_analyzer's server-side
numbers) reads these, and they answer per model what Prometheus answers per endpoint.

What is measured, in Triton's terms: `success` / `fail` count each inference request that reached
the model (`/v2` infer with a valid body, `/v1/classify` uploads that passed decoding and the input
checks; a malformed request counts nowhere, as on Triton) with its time from arrival to answer; `queue` and
`compute_infer` count each queued part of a request (a request of more than `--max-batch-size`
rows is queued as several) with its wait for a batch and the run time of the batch it ran in;
`inference_count` / `execution_count` are the rows and batches the model ran; `batch_stats` has
one entry per batch size. Input preparation and output extraction are not timed apart from the
model run (they are inside `compute_infer`): `compute_input` and `compute_output` stay zero, as do
`cache_hit` / `cache_miss` (there is no response cache).

Everything is updated on the event loop (the batcher's callback and the handlers run there), so
no lock is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    """Triton's $duration_stat: how many times, and their total in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def doc(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """The cumulative statistics of one served model (version "1") since the service started."""

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=dict)  #: batch size -> its model runs

    def on_run(self, waits_s: list[float], rows: int, seconds: float, ok: bool) -> None:
        """The batcher's callback after a model run: each part's queue wait, the batch's rows and run time."""
        self.last_inference_ms = int(time.time() * 1000)
        if not ok:
            return
        self.inference_count += rows
        self.execution_count += 1
        for wait in waits_s:
            self.queue.add(wait)
            self.compute_infer.add(seconds)
        self.batches.setdefault(rows, Duration()).add(seconds)

    def on_request(self, ok: bool, seconds: float) -> None:
        """One inference request answered (ok) or failed, with its time from arrival to answer."""
        (self.success if ok else self.fail).add(seconds)

    def document(self, name: str, version: str) -> dict[str, Any]:
        """Triton's $model_stat for this model."""
        zero = Duration().doc()
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {"success": self.success.doc(), "fail": self.fail.doc(), "queue": self.queue.doc(),
                                "compute_input": zero, "compute_infer": self.compute_infer.doc(),
                                "compute_output": zero, "cache_hit": zero, "cache_miss": zero},
            "response_stats": {},  # per-response statistics of decoupled models; none here
            "batch_stats": [{"batch_size": size, "compute_input": zero, "compute_infer": d.doc(), "compute_output": zero}
                            for size, d in sorted(self.batches.items())],
            "memory_usage": [],
        }
