"""Latency and throughput benchmarks, measured the way trtexec does.

For each batch size: warm up for a fixed time (clocks, caches, lazy initialisation, cuDNN/TensorRT
tactic loading all settle), then run a fixed number of iterations and report min / max / mean /
median / p90 / p95 / p99 latency and throughput, with the H2D / compute / D2H split where the
backend can time it (`Runner.timings()`: CUDA events for TensorRT, only compute for ONNX Runtime
and Keras). A coefficient of variation above 2.5% is flagged: such numbers are not stable enough to
compare (another process, thermal throttling, too few iterations).

JSON field names are snake_case versions of trtexec's (`latency_ms`, `h2d_ms`, `compute_ms`, `d2h_ms`,
`throughput_qps`, `p90`/`p95`/`p99` for its `percentile(90%)`...), so results can be read next to
`trtexec --exportTimes` output.

With `image=` a full-size X-ray is also measured end to end (decode + preprocess + batch-1
inference), which is what a scanner-side user waits for. `compare=` runs several artifacts of one
bundle (e.g. keras, onnx_fp32, onnx_int8, engine) in one process and reports ratios against the
first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.artifacts import BY_KEY, MAX_BATCH
from edgecxr.core.errors import ArgumentError, BundleError, EdgeCXRError
from edgecxr.core.fileutil import recorded_path
from edgecxr.core.spec import PreprocessSpec, preprocess
from edgecxr.core.version import __version__
from edgecxr.runtime.store import DEFAULT_MODEL
from edgecxr.runtime.timing import CV_WARN_PCT, PERCENTILES, percentile, stability_warnings, summarize  # noqa: F401

#: what a comparison accepts: the artifact keys of core.artifacts
COMPARE_NAMES = tuple(BY_KEY)  #: keras, onnx_fp32, onnx_fp16, onnx_int8, engine


def synthetic_batch(spec: PreprocessSpec, batch: int, seed: int = 0) -> np.ndarray:
    """A deterministic batch inside the spec's output range (what real preprocessed images occupy)."""
    lo, hi = spec.output_range
    rng = np.random.default_rng(seed)
    return rng.uniform(lo, hi, size=(batch, *spec.input_shape)).astype(np.float32)


def bench_runner(
    runner: Any,
    batch: np.ndarray,
    iterations: int = 200,
    warmup_s: float = 2.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Warm up `runner` on `batch` for warmup_s, then time `iterations` calls (one batch each)."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    t_end = clock() + max(0.0, warmup_s)
    warm = 0
    while True:
        runner.infer(batch)
        warm += 1
        if clock() >= t_end:
            break
    latency: list[float] = []
    split: dict[str, list[float]] = {}
    t_start = clock()
    for _ in range(iterations):
        t0 = clock()
        runner.infer(batch)
        latency.append((clock() - t0) * 1e3)
        for key, value in runner.timings().items():
            split.setdefault(key, []).append(value)
    total = clock() - t_start
    n = int(batch.shape[0])
    result: dict[str, Any] = {
        "batch": n,
        "iterations": iterations,
        "warmup_iterations": warm,
        "warmup_s": warmup_s,
        "total_host_walltime_s": round(total, 4),
        "throughput_qps": round(iterations / total, 3) if total > 0 else None,
        "throughput_images_per_s": round(iterations * n / total, 3) if total > 0 else None,
        "latency_ms": summarize(latency),
    }
    for key, values in split.items():  # h2d_ms, compute_ms, d2h_ms (Runner.timings() keys)
        result[key] = summarize(values)
    result["warnings"] = stability_warnings(f"latency at batch {n}", result["latency_ms"])
    return result


def bench_end_to_end(
    runner: Any,
    spec: PreprocessSpec,
    image: str | Path,
    iterations: int = 50,
    warmup_s: float = 1.0,
    clock: Callable[[], float] = time.perf_counter,
    full_decode: bool = False,
) -> dict[str, Any]:
    """Decode + preprocess + batch-1 inference of one real (full-size) image, per iteration.

    Decodes as `edgecxr infer` does (large JPEGs at a reduced scale, see edgecxr.data.io) unless
    `full_decode`, which measures the full-resolution decode for comparison.
    """
    from edgecxr.data.io import load_image

    image = Path(image)
    min_size = None if full_decode else (spec.height, spec.width)
    first = load_image(image)  # raises ImageLoadError up front for a bad --image; gives the full size
    t_end = clock() + max(0.0, warmup_s)
    while True:
        runner.infer(preprocess(load_image(image, min_size), spec)[None])
        if clock() >= t_end:
            break
    decode, prep, infer, total = [], [], [], []
    for _ in range(iterations):
        t0 = clock()
        pixels = load_image(image, min_size)
        t1 = clock()
        x = preprocess(pixels, spec)[None]
        t2 = clock()
        runner.infer(x)
        t3 = clock()
        decode.append((t1 - t0) * 1e3)
        prep.append((t2 - t1) * 1e3)
        infer.append((t3 - t2) * 1e3)
        total.append((t3 - t0) * 1e3)
    result = {
        "image": str(image),
        "image_size": [int(first.shape[1]), int(first.shape[0])],
        "decoded_size": [int(pixels.shape[1]), int(pixels.shape[0])],
        "decode": "full" if full_decode else "reduced-if-large",
        "iterations": iterations,
        "decode_ms": summarize(decode),
        "preprocess_ms": summarize(prep),
        "infer_ms": summarize(infer),
        "end_to_end_ms": summarize(total),
    }
    result["warnings"] = stability_warnings("end-to-end latency", result["end_to_end_ms"])
    return result


def _bench_classifier(
    clf: Any,
    batch_sizes: Iterable[int],
    iterations: int,
    warmup_s: float,
    image: str | Path | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from edgecxr.data.io import load_image

    base = preprocess(load_image(image, (clf.spec.height, clf.spec.width)), clf.spec)[None] if image else None
    results = []
    for b in batch_sizes:
        batch = np.repeat(base, b, axis=0) if base is not None else synthetic_batch(clf.spec, b)
        log(f"  batch {b}: warm-up {warmup_s:g} s, {iterations} iterations")
        results.append(bench_runner(clf.runner, batch, iterations, warmup_s))
    backend = dict(clf.backend_info)
    if backend.get("artifact"):  # the report may be committed: no absolute path of this machine
        backend["artifact"] = recorded_path(backend["artifact"])
    out: dict[str, Any] = {"backend": backend, "results": results}
    if image:
        e2e_iters = max(1, min(iterations, 50))
        log(f"  end to end on {image}: {e2e_iters} iterations")
        out["end_to_end"] = bench_end_to_end(clf.runner, clf.spec, image, e2e_iters, min(warmup_s, 1.0))
        if out["end_to_end"]["decoded_size"] != out["end_to_end"]["image_size"]:
            log(f"  end to end with full-resolution decode (for comparison): {e2e_iters} iterations")
            out["end_to_end_full_decode"] = bench_end_to_end(
                clf.runner, clf.spec, image, e2e_iters, min(warmup_s, 1.0), full_decode=True
            )
    if clf.orientation != "off":  # the orientation gate runs on every decoded film before the model
        from edgecxr.runtime import cxr_score
        from edgecxr.runtime.orientation import bench_gate, synthetic_film

        log("  orientation gate: one film at a time")
        film = load_image(image) if image else None
        out["orientation_gate"] = gate = bench_gate(film, max(iterations, 100), min(warmup_s, 0.5))
        if cxr_score.enabled(clf.input_rules):
            gate["cxr_score_ms"] = cxr_score.bench_distance(film if film is not None else synthetic_film(), max(iterations, 100))
    out["warnings"] = [w for r in results for w in r["warnings"]]
    for key in ("end_to_end", "end_to_end_full_decode"):
        out["warnings"] += list((out.get(key) or {}).get("warnings", []))
    return out


def parse_batch_sizes(text: str | Sequence[int]) -> list[int]:
    """'1,8' -> [1, 8]; every size must be in 1..MAX_BATCH (a typo like 10000 would exhaust memory)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        sizes = [int(str(s).strip()) for s in items if str(s).strip()]
    except ValueError:
        raise ValueError(f"batch sizes must be integers like 1,8; got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"batch sizes must be >= 1; got {text!r}")
    if max(sizes) > MAX_BATCH:
        raise ValueError(f"batch sizes must be <= {MAX_BATCH} (the largest engine batch); got {text!r}")
    return sizes


def compare_table(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch size, each entry's median latency and throughput and its ratios against the first entry.

    `speedup` > 1 means faster than the first (reference) entry. Entries that were skipped or lack a
    batch size are left out of that batch's rows.
    """
    ran = [e for e in entries if "results" in e]
    if not ran:
        return []
    ref = ran[0]
    rows = []
    ref_by_batch = {r["batch"]: r for r in ref["results"]}
    for entry in ran:
        for r in entry["results"]:
            base = ref_by_batch.get(r["batch"])
            med = r["latency_ms"]["median"]
            row = {
                "name": entry["name"],
                "batch": r["batch"],
                "median_latency_ms": med,
                "throughput_images_per_s": r["throughput_images_per_s"],
                "reference": ref["name"],
            }
            if base is not None and med > 0:
                row["latency_ratio"] = round(med / base["latency_ms"]["median"], 4)
                row["speedup"] = round(base["latency_ms"]["median"] / med, 4)
            rows.append(row)
    return rows


def _load_for_compare(bundle_dir: Path, name: str, **options: Any) -> Any:
    from edgecxr.core.bundle import Bundle
    from edgecxr.runtime.classifier import Classifier
    from edgecxr.runtime.select import choose_engine

    if name not in COMPARE_NAMES:
        raise ArgumentError(f"unknown artifact {name!r} to compare; choose from {COMPARE_NAMES}")
    if name == "keras":
        return Classifier.load(bundle_dir, backend="keras", **options)
    if name.startswith("onnx_"):
        return Classifier.load(bundle_dir, backend="onnxruntime", precision=name.split("_", 1)[1], **options)
    from edgecxr.runtime.sysinfo import current_platform

    bundle = Bundle.load(bundle_dir)
    engine, rejected = choose_engine(bundle.dir, bundle.meta, current_platform())
    if engine is None:
        raise BundleError("no usable engine" + (f": {'; '.join(rejected)}" if rejected else " in the bundle"))
    return Classifier.load(engine, backend="tensorrt", **options)


def run_bench(
    model: str | Path,
    *,
    backend: str = "auto",
    precision: str | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    iterations: int = 200,
    warmup_s: float = 2.0,
    image: str | Path | None = None,
    compare: Sequence[str] | None = None,
    options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Benchmark a model (bundle, engine or ONNX), or with `compare` several artifacts of one bundle.

    `compare` items are artifact keys (COMPARE_NAMES), each run on its own backend; the first is the
    reference of the ratios. Unknown items are refused before anything runs.
    """
    from edgecxr.runtime.classifier import Classifier
    from edgecxr.runtime.sysinfo import cpu_info

    if compare is not None:
        unknown = [c for c in compare if c not in COMPARE_NAMES]
        if unknown or not compare:
            raise ArgumentError(f"artifacts to compare: unknown {unknown or 'none given'}; choose from "
                                f"{', '.join(COMPARE_NAMES)}", params=("compare",))
        if backend != "auto" or precision is not None:
            raise ArgumentError("a comparison picks the backend and precision of each artifact; leave them unset",
                                params=("compare", "backend", "precision"))
    options = options or {}
    report: dict[str, Any] = {
        "model": recorded_path(model) if model and Path(str(model)).exists() else str(model or DEFAULT_MODEL),
        "edgecxr_version": __version__,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpu": cpu_info()},
        "batch_sizes": list(batch_sizes),
        "iterations": iterations,
        "warmup_s": warmup_s,
    }
    if compare:
        from edgecxr.runtime import store

        model = store.resolve(model)
        if not Path(model).is_dir():
            raise BundleError(f"{model}: comparing artifacts needs a bundle directory")
        entries = []
        for name in compare:
            log(f"{name}:")
            try:
                clf = _load_for_compare(Path(model), name, **options)
            except EdgeCXRError as exc:
                log(f"  skipped: {exc}")
                entries.append({"name": name, "skipped": str(exc)})
                continue
            with clf:
                entry = _bench_classifier(clf, batch_sizes, iterations, warmup_s, image, log)
            entries.append({"name": name, **entry})
        report["entries"] = entries
        report["comparison"] = compare_table(entries)
        report["warnings"] = [f"{e['name']}: {w}" for e in entries for w in e.get("warnings", [])]
        return report
    with Classifier.load(model, backend=backend, precision=precision, **options) as clf:
        log(clf.describe())
        report.update(_bench_classifier(clf, batch_sizes, iterations, warmup_s, image, log))
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable summary (the JSON has everything)."""
    lines = []

    def block(title: str, entry: dict[str, Any]) -> None:
        lines.append(title)
        for r in entry.get("results", []):
            lat = r["latency_ms"]
            line = (
                f"  batch {r['batch']:>3}: throughput {r['throughput_images_per_s']:.1f} img/s "
                f"({r['throughput_qps']:.1f} qps); latency ms min {lat['min']:.3f} median {lat['median']:.3f} "
                f"mean {lat['mean']:.3f} p90 {lat['p90']:.3f} p95 {lat['p95']:.3f} "
                f"p99 {lat['p99']:.3f} (CV {lat['coefficient_of_variance_pct']:.1f}%)"
            )
            lines.append(line)
            split = [f"{k[:-3]} {r[k]['median']:.3f}" for k in ("h2d_ms", "compute_ms", "d2h_ms") if r.get(k)]
            if split:
                lines.append("             median split ms: " + ", ".join(split))
        for key, how in (("end_to_end", ""), ("end_to_end_full_decode", ", full-resolution decode")):
            e2e = entry.get(key)
            if not e2e:
                continue
            lines.append(
                f"  end to end ({e2e['image_size'][0]}x{e2e['image_size'][1]} image decoded at "
                f"{e2e['decoded_size'][0]}x{e2e['decoded_size'][1]}{how}), median ms: "
                f"decode {e2e['decode_ms']['median']:.2f} + preprocess {e2e['preprocess_ms']['median']:.2f} "
                f"+ infer {e2e['infer_ms']['median']:.2f} = {e2e['end_to_end_ms']['median']:.2f}"
            )
        gate = entry.get("orientation_gate")
        if gate:
            lines.append(f"  orientation gate per film ({gate['image_size'][0]}x{gate['image_size'][1]}), median ms: "
                         f"resize {gate['resize_ms']['median']:.3f} + run {gate['onnx_ms']['median']:.3f} = "
                         f"{gate['total_ms']['median']:.3f} (p99 {gate['total_ms']['p99']:.3f})"
                         + (f"; CXR score on its logits {gate['cxr_score_ms']['median']:.4f}" if "cxr_score_ms" in gate else ""))

    if "entries" in report:
        for e in report["entries"]:
            if "skipped" in e:
                lines.append(f"{e['name']}: skipped ({e['skipped']})")
            else:
                block(f"{e['name']}: {e['backend'].get('backend')} {e['backend'].get('artifact')}", e)
        if report.get("comparison"):
            lines.append(f"ratios against {report['comparison'][0]['reference']} (speedup > 1 = faster):")
            for row in report["comparison"]:
                if "speedup" in row:
                    lines.append(f"  {row['name']:>10} batch {row['batch']:>3}: speedup {row['speedup']:.2f}x")
    else:
        b = report.get("backend", {})
        block(f"{b.get('backend')} ({b.get('precision')}): {b.get('artifact')}", report)
    return "\n".join(lines)  # warnings are the caller's to print, on stderr
