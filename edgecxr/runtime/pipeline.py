"""Decode ahead of the model: the inputs of a folder are read by worker threads while the model runs.

`Classifier.predict` used to decode one file, then the next, then run the model on the batch: for
the INT8 CoroNet on a CPU, decoding a scanner JPEG costs about twice the inference, so most of the
end-to-end time the model was idle. `prepared_batches` runs the decode half (`inputs.prepare`, a
pure function of one input) in a thread pool and hands the model half batches in input order:

* **order kept**: results are taken from the futures in submission order, so batch k holds inputs
  k*B .. k*B+B-1 exactly as the sequential path does;
* **bounded**: at most `prefetch` inputs are submitted and not yet consumed, so memory holds a few
  batches of tensors whether the folder has 10 or 10,000 files;
* **per-file errors intact**: `prepare` turns a bad file into its Prediction's error; anything else
  a worker raises (a bug, an unexpected library error) becomes that file's error too, never the
  batch's, never a hung pool;
* **clean shutdown**: on Ctrl-C (KeyboardInterrupt in the consumer), on an exception in the model
  half, or when the caller stops iterating, futures not yet started are cancelled and the threads
  are joined (at most the decodes already running finish) before the exception goes on.

Threads, not processes: cv2's decode and resize, hashlib and most of numpy release the GIL, and a
thread hands its tensor over without pickling. The decoders' warnings are captured on fd 2, which
the whole process shares; `data.decoder_log.judged_call` lets the decodes overlap and keeps each
verdict with its own file (a decode that may have seen another's warning runs again alone).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from edgecxr.core.spec import PreprocessSpec
from edgecxr.runtime.input_checks import InputRules
from edgecxr.runtime.inputs import prepare, source_of
from edgecxr.runtime.prediction import Prediction

Prepared = tuple[Prediction, "np.ndarray | None"]

#: most decode threads chosen by default (more only add contention for the cores the model uses)
MAX_DEFAULT_WORKERS = 8


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def default_workers(cpus: int | None = None) -> int:
    """Decode threads when none are asked for: one per CPU, at most MAX_DEFAULT_WORKERS; 0 on one CPU.

    On a single CPU a pool cannot overlap anything, so the sequential path is taken. On two CPUs two
    threads still pay off: one decodes while the model (which itself uses every core) waits for I/O
    or the other decodes.
    """
    cpus = available_cpus() if cpus is None else cpus
    return 0 if cpus < 2 else min(cpus, MAX_DEFAULT_WORKERS)


def resolve_workers(workers: int | None, n_items: int) -> int:
    """The number of decode threads for `n_items` inputs: 0 means the sequential path.

    None picks `default_workers()`, and the sequential path for a single input (a pool would only
    add a thread start to one decode). 0 and 1 are the sequential path.
    """
    if workers is None:
        return default_workers() if n_items > 1 else 0
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
    return 0 if workers <= 1 else workers


def default_prefetch(batch_size: int, workers: int) -> int:
    """Inputs decoded ahead: two batches, and at least two per worker, so no thread waits for a slot."""
    return max(2 * batch_size, 2 * workers)


def _prepare_safely(item: Any, index: int, spec: PreprocessSpec, rules: InputRules) -> Prepared:
    """`prepare`, with any exception it lets through turned into this input's error."""
    try:
        return prepare(item, index, spec, rules)
    except Exception as exc:  # noqa: BLE001 - one input's failure must not end the batch
        pred = Prediction(source_of(item, index))
        pred.error = _describe(exc)
        return pred, None


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 200:
        text = text[:197] + "..."
    name = "out of memory while decoding" if isinstance(exc, MemoryError) else type(exc).__name__
    return f"{name}: {text}" if text else name


def prepared_batches(
    items: Sequence[Any],
    spec: PreprocessSpec,
    rules: InputRules,
    batch_size: int,
    workers: int,
    prefetch: int | None = None,
) -> Iterator[list[Prepared]]:
    """Yield `prepare`d inputs in batches of `batch_size`, in input order, decoded by `workers` threads.

    Args:
        items: paths or arrays (indexed: a Prediction of an array is named by its index).
        spec, rules: the model's preprocessing and input checks (as `prepare` takes them).
        batch_size: inputs per yielded batch (the last may be shorter).
        workers: decode threads (>= 1).
        prefetch: most inputs submitted and not yet yielded; default `default_prefetch`. Never less
            than one batch, or the first batch could not be formed.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if workers < 1:
        raise ValueError("workers must be >= 1")
    limit = max(batch_size, prefetch if prefetch is not None else default_prefetch(batch_size, workers))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgecxr-decode")
    pending: deque[Future[Prepared]] = deque()
    submitted = 0
    try:
        batch: list[Prepared] = []
        while submitted < len(items) or pending:
            while submitted < len(items) and len(pending) < limit:
                pending.append(pool.submit(_prepare_safely, items[submitted], submitted, spec, rules))
                submitted += 1
            batch.append(pending.popleft().result())
            if len(batch) == batch_size or (not pending and submitted == len(items)):
                yield batch
                batch = []
    finally:
        # Ctrl-C, an error in the model half, or a caller that stopped early: drop what has not
        # started, let the running decodes end (each is bounded by the decode limits), join.
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
