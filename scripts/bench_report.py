"""One benchmark table per model for docs/BENCHMARKS.md: every CPU runtime, in one process, interleaved.

    .venv/bin/python scripts/bench_report.py                       # both reference models, into runs/bench/
    .venv/bin/python scripts/bench_report.py --models coronet --rounds 3 --iterations 10
    .venv/bin/python scripts/bench_report.py --markdown runs/bench/report.json   # the tables again

Configurations per model (batch 1 and 8 unless --batch-sizes):

  keras          the same architecture in Keras, eager `model(x, training=False)` as a Python caller
                 runs it (random weights: latency depends on the graph, not on the trained values;
                 needs TensorFlow, skipped with the reason where it is missing)
  ort-fp32       ONNX Runtime on the FP16 file up-cast to FP32 at load (runtime/arithmetic.py): the
                 FP32 arithmetic of the shipped weights
  ort-fp16       ONNX Runtime on the shipped FP16 file (on x86 ONNX Runtime casts around its FP32 kernels)
  ort-int8       ONNX Runtime on the shipped Q/DQ INT8 file
  ov-fp16        OpenVINO on the FP16 file
  ov-int8        OpenVINO on the INT8 file (timed even where its gate verdict does not cover this CPU:
                 the table says so)
  end-to-end     decode + preprocess + batch-1 inference of a 4280x3520 JPEG with each ONNX runner,
                 as `edgecxr infer` decodes it (reduced-size JPEG decode)

Every configuration runs once per round, rounds interleave the configurations (so a busy spell
hits all of them, not one), and each figure is the min / median / max over rounds of the round's
median latency. Ratios against Keras are taken within each round, then summarised the same way.
Machine, load average before and after, versions and the command line go into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.runtime.bench import bench_end_to_end, bench_runner, synthetic_batch

ORIGINAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-originals" / "files" / \
    "covid__covid-19-pneumonia-23-day1.jpg"
CONFIGS = ("keras", "ort-fp32", "ort-fp16", "ort-int8", "ov-fp16", "ov-int8")


def _runners(model: str, scratch: Path) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """The bundle's preprocessing spec, loaded runners by configuration, and reasons for those skipped."""
    import onnx

    from edgecxr.core.bundle import Bundle
    from edgecxr.runtime.arithmetic import upcast_fp16
    from edgecxr.runtime.backends import availability, create_runner
    from edgecxr.runtime.store import resolve

    bundle = Bundle.load(resolve(model))
    spec = bundle.spec
    files = {p: bundle.artifact(f"onnx_{p}") for p in ("fp16", "int8")}
    fp32 = scratch / f"{model}.fp32.onnx"
    onnx.save(upcast_fp16(onnx.load(str(files["fp16"]))), str(fp32))
    wanted = {"ort-fp32": ("onnxruntime", fp32), "ort-fp16": ("onnxruntime", files["fp16"]),
              "ort-int8": ("onnxruntime", files["int8"]), "ov-fp16": ("openvino", files["fp16"]),
              "ov-int8": ("openvino", files["int8"])}
    skipped: dict[str, str] = {}
    reasons = availability()
    if reasons.get("keras") is None:
        from edgecxr.models import build_model

        path = scratch / f"{model}.keras"
        build_model(bundle.model, weights=None, input_size=spec.height).save(path)
        wanted = {"keras": ("keras", path), **wanted}
    else:
        skipped["keras"] = str(reasons["keras"])
    runners = {}
    for name, (backend, path) in wanted.items():
        if reasons.get(backend):
            skipped[name] = str(reasons[backend])
            continue
        runners[name] = create_runner(backend, path).load()
    return spec, runners, skipped


def _summary(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(float(np.median(values)), 3), "max": round(max(values), 3)}


def bench_model(model: str, rounds: int, iterations: int, batch_sizes: list[int], image: Path | None,
                log: Any = sys.stderr) -> dict[str, Any]:
    """Interleaved rounds over every configuration of one model; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="edgecxr-bench-") as tmp:
        spec, runners, skipped = _runners(model, Path(tmp))
        batches = {b: synthetic_batch(spec, b) for b in batch_sizes}
        per_round: dict[str, list[float]] = {}
        e2e: dict[str, dict[str, list[float]]] = {}
        for r in range(rounds):
            for name, runner in runners.items():
                for b, x in batches.items():
                    res = bench_runner(runner, x, iterations=iterations, warmup_s=0.3)
                    per_round.setdefault(f"{name}@{b}", []).append(res["latency_ms"]["median"])
                if image is not None and name != "keras":
                    res = bench_end_to_end(runner, spec, image, iterations=max(3, iterations // 2), warmup_s=0.2)
                    slot = e2e.setdefault(name, {})
                    for key in ("decode_ms", "preprocess_ms", "infer_ms", "end_to_end_ms"):
                        slot.setdefault(key, []).append(res[key]["median"])
            print(f"{model}: round {r + 1}/{rounds} done", file=log, flush=True)
        for runner in runners.values():
            runner.close()
    rows = []
    for key, values in per_round.items():
        name, b = key.rsplit("@", 1)
        row = {"config": name, "batch": int(b), "latency_ms": _summary(values),
               "images_per_s_median": round(int(b) * 1e3 / float(np.median(values)), 1)}
        ref = per_round.get(f"keras@{b}")
        if ref and name != "keras":
            row["speedup_vs_keras"] = _summary([k / v for k, v in zip(ref, values, strict=True)])
        rows.append(row)
    return {"model": model, "rows": rows, "skipped": skipped,
            "end_to_end": {name: {k: _summary(v) for k, v in parts.items()} for name, parts in e2e.items()},
            "image": image.name if image is not None else None}


def machine() -> dict[str, Any]:
    import onnxruntime

    from edgecxr.runtime.sysinfo import INT8_DOT_FLAGS, cpu_info

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    info: dict[str, Any] = {**cpu_info(), "int8_dot_product": sorted(flags & set(INT8_DOT_FLAGS)),
                            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    try:
        import openvino

        info["openvino"] = openvino.get_version()
    except ImportError:
        info["openvino"] = None
    try:
        import keras

        info["keras"] = keras.__version__
    except ImportError:
        info["keras"] = None
    return info


def markdown(report: dict[str, Any]) -> str:
    """The BENCHMARKS.md tables of one report."""
    m = report["machine"]
    out = [f"{report['date']}, {m['model']}, {m['usable_cores']} cores, int8 dot product: "
           f"{', '.join(m['int8_dot_product']) or 'none'}; onnxruntime {m['onnxruntime']}, openvino {m['openvino']}, "
           f"keras {m['keras']}; load average {report['load_before']} before, {report['load_after']} after; "
           f"{report['rounds']} rounds x {report['iterations']} iterations. `{report['command']}`", ""]
    for mod in report["models"]:
        out += [f"**{mod['model']}**", "",
                "| runtime | batch | median ms (min-max over rounds) | images/s | x Keras (min-max) |",
                "|---|---:|---:|---:|---:|"]
        for r in mod["rows"]:
            lat, sp = r["latency_ms"], r.get("speedup_vs_keras")
            ratio = f"{sp['median']:.1f}x ({sp['min']:.1f}-{sp['max']:.1f})" if sp else ("1.0x" if r["config"] == "keras" else "-")
            out.append(f"| {r['config']} | {r['batch']} | {lat['median']:.1f} ({lat['min']:.1f}-{lat['max']:.1f}) | "
                       f"{r['images_per_s_median']:.1f} | {ratio} |")
        for name, why in mod["skipped"].items():
            out.append(f"| {name} | - | not run: {why} | - | - |")
        if mod["end_to_end"]:
            out += ["", f"End to end, one `{mod['image']}` (decode + preprocess + batch-1 inference), median ms:", "",
                    "| runtime | decode | preprocess | inference | end to end (min-max) |", "|---|---:|---:|---:|---:|"]
            for name, p in mod["end_to_end"].items():
                e = p["end_to_end_ms"]
                out.append(f"| {name} | {p['decode_ms']['median']:.1f} | {p['preprocess_ms']['median']:.1f} | "
                           f"{p['infer_ms']['median']:.1f} | {e['median']:.1f} ({e['min']:.1f}-{e['max']:.1f}) |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["coronet", "cnn-lstm"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=20, help="timed iterations per configuration and round")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--image", type=Path, default=ORIGINAL, help="full-size X-ray for the end-to-end row")
    ap.add_argument("--no-end-to-end", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/report.json"))
    ap.add_argument("--markdown", type=Path, metavar="REPORT", help="print the tables of an existing report and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    image = None if args.no_end_to_end else args.image
    if image is not None and not image.is_file():
        print(f"bench_report: no image {image} (give --image or --no-end-to-end)", file=sys.stderr)
        return 2
    load_before = [round(v, 2) for v in os.getloadavg()]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    models = [bench_model(m, args.rounds, args.iterations, batch_sizes, image) for m in args.models]
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "command": "python scripts/bench_report.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "rounds": args.rounds, "iterations": args.iterations, "load_before": load_before,
              "load_after": [round(v, 2) for v in os.getloadavg()], "models": models}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"-> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"bench_report: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    sys.exit(rc)
