"""Which CPU runtime `auto` uses for an ONNX file: ONNX Runtime or OpenVINO, whichever measured faster here.

Why measured and not a rule: on the same 2-core EPYC OpenVINO ran CoroNet's INT8 file 1.45x faster
than ONNX Runtime and the CNN-LSTM's 0.71x as fast (issue 26); the winner depends on the model's
layers and the CPU's instructions, so no rule written here would hold on the next workstation.

The first load of a model on a machine times both runtimes on the same file at batch 1
(interleaved, median of 3 to 15 runs within ~3 s) and writes the verdict to
`<cache>/runtime-pick.json` keyed by the file's sha256, the CPU model and both runtime versions;
later loads read it. Any change of file, CPU or runtime measures again. A failure to measure or to
write the cache never stops a load: ONNX Runtime, the reference runtime, is used and the reason said.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.fileutil import sha256_file

#: the runtimes raced, the reference first (it wins ties and every failure)
CANDIDATES = ("onnxruntime", "openvino")
#: timed runs per runtime after WARMUP untimed ones: at most RUNS, at least MIN_RUNS, and no more rounds
#: once BUDGET_S seconds of timed runs have passed (a slow model on a busy CPU still loads in seconds)
RUNS, MIN_RUNS, WARMUP, BUDGET_S = 15, 3, 2, 3.0
#: the cache file's name inside edgecxr's cache folder
CACHE_NAME = "runtime-pick.json"
#: verdicts kept (the newest): one per model file, CPU and runtime versions seen, so the file stays small
MAX_ENTRIES = 64

#: measure(path, input_shape, runtimes, options) -> {runtime: median ms}; swapped out by tests
Measure = Callable[[Path, tuple[int, ...], tuple[str, ...], dict[str, Any]], dict[str, float]]


def cache_file() -> Path:
    from edgecxr.runtime.fetch import cache_dir

    return cache_dir() / CACHE_NAME


def cache_key(sha256: str, options: dict[str, Any] | None = None) -> str:
    """sha256 + CPU model + runtime versions (+ a thread count if one was set): what makes a verdict stale."""
    from edgecxr.runtime.openvino import openvino_version
    from edgecxr.runtime.sysinfo import cpu_info, onnxruntime_info

    threads = (options or {}).get("threads")
    parts = [sha256, cpu_info()["model"], f"onnxruntime {onnxruntime_info().get('version')}",
             f"openvino {openvino_version()}", f"threads {threads or 'default'}"]
    return " | ".join(parts)


def microbench(path: Path, input_shape: tuple[int, ...], runtimes: tuple[str, ...],
               options: dict[str, Any]) -> dict[str, float]:
    """Median batch-1 latency (ms) of each runtime on `path`, runs interleaved so background load hits all alike."""
    from edgecxr.runtime.backends import create_runner

    opts = {k: v for k, v in options.items() if k == "threads"}
    x = np.random.default_rng(0).random((1, *input_shape), dtype=np.float32)
    runners = [create_runner(name, path, **opts) for name in runtimes]
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    try:
        for r in runners:
            r.load()
            for _ in range(WARMUP):
                r.infer(x)
        start = time.perf_counter()
        for i in range(RUNS):
            if i >= MIN_RUNS and time.perf_counter() - start > BUDGET_S:
                break
            for name, r in zip(runtimes, runners, strict=True):
                t0 = time.perf_counter()
                r.infer(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
    finally:
        for r in runners:
            r.close()
    return {name: statistics.median(v) for name, v in times.items()}


def pick_runtime(path: Path, input_shape: tuple[int, ...], sha256: str | None = None,
                 options: dict[str, Any] | None = None, measure: Measure | None = None,
                 cache: Path | None = None) -> tuple[str, str]:
    """(runtime, why) for `path`: the cached verdict for this file, CPU and runtimes, else a fresh measurement.

    `sha256` is the file's verified hash when the caller has it (else it is computed). `measure`
    and `cache` exist for tests (a fake timing table, a temporary cache file).
    """
    options = options or {}
    cache = cache or cache_file()
    key = cache_key(sha256 or sha256_file(path), options)
    table = _read(cache)
    entry = table.get(key)
    if isinstance(entry, dict) and entry.get("runtime") in CANDIDATES and isinstance(entry.get("ms"), dict):
        return entry["runtime"], _why(entry["runtime"], entry["ms"], "measured on this CPU earlier")
    try:
        ms = (measure or microbench)(path, tuple(input_shape), CANDIDATES, options)
    except Exception as exc:  # a runtime that loads in `auto` but fails here: use the reference, say why
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return CANDIDATES[0], f"onnxruntime (could not time openvino against it: {why})"
    winner = min(CANDIDATES, key=lambda name: (ms[name], CANDIDATES.index(name)))
    table[key] = {"runtime": winner, "ms": {k: round(float(v), 3) for k, v in ms.items()},
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "file": str(path)}
    for stale in sorted(table, key=lambda k: str(table[k].get("measured_at", "")) if isinstance(table[k], dict) else "",
                        reverse=True)[MAX_ENTRIES:]:
        del table[stale]
    note = _write(cache, table)
    return winner, _why(winner, ms, "measured now" + (f"; {note}" if note else ""))


def _why(winner: str, ms: dict[str, float], when: str) -> str:
    timed = ", ".join(f"{k} {float(v):.1f} ms" for k, v in ms.items())
    return f"{winner} fastest for this model on this CPU (batch 1: {timed}; {when})"


def _read(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or damaged: measure again and rewrite
    return data if isinstance(data, dict) else {}


def _write(cache: Path, table: dict[str, Any]) -> str | None:
    """Write atomically (two processes measuring at once leave one whole file); None, or why it failed."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, cache)
    except OSError as exc:
        return f"not cached: {exc}"
    return None
