"""Does OpenVINO give the gated answers? Top-1 agreement of OpenVINO with ONNX Runtime on a split.

    python scripts/openvino_gate.py --manifest ../shared/data/cxr/manifest.csv --split test

For each reference model (or bundles given with --model) and each ONNX file it ships (FP16, Q/DQ
INT8), runs the split through both runtimes on the same preprocessed arrays and prints top-1
agreement, max |dp| and each runtime's accuracy. ONNX Runtime's answers are the ones the accuracy
gate measured (>= 99.5% agreement with the trained model), so OpenVINO passes where it agrees with
them on >= 99.5% of the images (MIN_AGREEMENT). Exit 0 only when every (model, precision) passes;
docs/BENCHMARKS.md records a run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

#: the accuracy gate's floor, applied to OpenVINO against the gated ONNX Runtime answers
MIN_AGREEMENT = 0.995


def compare(x: np.ndarray, path: str, batch: int = 16) -> dict[str, np.ndarray]:
    """Probabilities of `path` on `x` from each runtime (same arrays, same batching)."""
    from edgecxr.runtime.backends import create_runner
    from edgecxr.runtime.base import infer_in_batches

    out = {}
    for name in ("onnxruntime", "openvino"):
        with create_runner(name, path) as r:
            out[name] = infer_in_batches(r.infer, x, batch)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--model", action="append", help="model name or bundle (default: coronet and cnn-lstm)")
    ap.add_argument("--limit", type=int, help="first N images of the split (class-balanced), for a quick look")
    ap.add_argument("--json", dest="json_out", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)

    from edgecxr.core.artifacts import DEPLOYABLE, kind
    from edgecxr.core.bundle import Bundle
    from edgecxr.data.dataset import load_split
    from edgecxr.runtime import store
    from edgecxr.runtime.openvino import openvino_version
    from edgecxr.runtime.sysinfo import cpu_info, onnxruntime_info

    rows = []
    for model in args.model or ["coronet", "cnn-lstm"]:
        bundle = Bundle.load(store.resolve(model))
        _, x, y = load_split(bundle, args.manifest, args.split, limit=args.limit, progress=False)
        for key in DEPLOYABLE:
            path = bundle.artifact(key, must_exist=False)
            if path is None:
                continue
            t0 = time.perf_counter()
            probs = compare(x, str(path))
            ort, ov = probs["onnxruntime"], probs["openvino"]
            agree = float(np.mean(ort.argmax(1) == ov.argmax(1)))
            rows.append({
                "model": bundle.meta.get("model", model), "precision": kind(key).precision, "images": len(y),
                "agreement": agree, "max_abs_dp": float(np.abs(ort - ov).max()),
                "acc_onnxruntime": float(np.mean(ort.argmax(1) == y)), "acc_openvino": float(np.mean(ov.argmax(1) == y)),
                "passed": agree >= MIN_AGREEMENT, "seconds": round(time.perf_counter() - t0, 1),
            })
            r = rows[-1]
            print(f"{r['model']:9s} {r['precision']}  {r['images']} images  agreement {agree:.2%}  "
                  f"max|dp| {r['max_abs_dp']:.2e}  acc ORT {r['acc_onnxruntime']:.2%} / OV {r['acc_openvino']:.2%}  "
                  f"{'PASS' if r['passed'] else 'FAIL'}", flush=True)
    ok = all(r["passed"] for r in rows)
    env = {"cpu": cpu_info()["model"], "onnxruntime": onnxruntime_info().get("version"),
           "openvino": openvino_version(), "split": args.split, "date": time.strftime("%Y-%m-%d")}
    print(f"openvino gate ({env['openvino']} vs onnxruntime {env['onnxruntime']}, {env['cpu']}, split {args.split}): "
          f"{'all pass' if ok else 'FAILED'} (>= {MIN_AGREEMENT:.1%} top-1 agreement)")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump({"env": env, "rows": rows}, fh, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
