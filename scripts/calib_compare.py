"""Calibration methods x calibration-set sizes, scored on `val` (never `test`): the table of docs/QUANTIZATION.md.

    python scripts/calib_compare.py runs/int8/cnn-lstm --methods minmax,percentile,entropy --views 0,1 \
        --out runs/calib-compare-cnn-lstm.json
    python scripts/calib_compare.py --markdown docs/results/calib-compare-cnn-lstm.json   # the table

For each method and number of augmented views (`--views 1` = the 127 `calib` images plus one
augmented view of each, as `edgecxr calibrate --views`), calibrates the bundle's FP32 ONNX once and
scores on `val`, with the gate's rule, (a) the fully quantized model and (b) the same calibration
with every activation-only node in float (Q/DQ only on the inputs of nodes with a weight, made by
graph surgery: calibration ranges come from FP32 activations, so excluding nodes does not change
the others'). Rows are appended to the JSON as they finish, so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx

from edgecxr.core.bundle import Bundle
from edgecxr.core.fileutil import recorded_path
from edgecxr.data.dataset import load_split
from edgecxr.stages.export.calib_set import with_views
from edgecxr.stages.export.fp32 import ensure_fp32
from edgecxr.stages.export.int8 import quantize_qdq
from edgecxr.stages.export.qdq_check import resolve_keep_float
from edgecxr.stages.export.sensitivity import Scorer, hybrid, quantized_nodes, score_row
from edgecxr.stages.gate.config import Gates

REPO = Path(__file__).resolve().parents[1]


def markdown(record: dict) -> str:
    """The table of docs/QUANTIZATION.md from a finished (or stopped) run's JSON."""
    extra = record.get("keep_float")
    lines = ["| method | calibration inputs | fully quantized: agreement / accuracy / COVID sens. | "
             "activation-only nodes in float: agreement / accuracy / COVID sens. | gate (2nd column) |"
             + (f" `{extra}` in float: agreement / accuracy / COVID sens. | gate |" if extra else ""),
             "|---|---:|---|---|---|" + ("---|---|" if extra else "")]
    for r in record["rows"]:
        f, a = r["fully_quantized"], r["activation_only_in_float"]

        def cell(x: dict) -> str:
            sens = "" if x["covid_sensitivity"] is None else f"{x['covid_sensitivity']:.2%}"
            return f"{x['top1_agreement']:.2%} / {x['accuracy']:.2%} / {sens}"

        lines.append(f"| {r['method']} | {r['calibration_inputs']} ({record['calib_images']} calib"
                     f"{' + ' + str(r['views']) + ' view(s)' if r['views'] else ''}) | "
                     f"{cell(f)} | {cell(a)} | {'pass' if a['passed'] else 'fail'} |"
                     + (f" {cell(r['keep_float'])} | {'pass' if r['keep_float']['passed'] else 'fail'} |" if extra else ""))
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--markdown":
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cxr" / "manifest.csv"))
    ap.add_argument("--methods", default="minmax,percentile,entropy")
    ap.add_argument("--views", default="0,1")
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep-float", default="", help="also score each calibration with these nodes in float "
                    "(edgecxr calibrate --keep-float aliases, e.g. first-conv: CoroNet's shipped placement)")
    args = ap.parse_args()
    bundle = Bundle.load(args.bundle)
    fp32_path = ensure_fp32(bundle)
    fp32 = onnx.load(str(fp32_path))
    _, calib, _ = load_split(bundle, args.data, "calib", progress=False)
    _, x, y = load_split(bundle, args.data, "val", progress=False)
    scorer = Scorer(fp32, x, y, bundle.classes, Gates())
    out = Path(args.out)
    record = {"bundle": recorded_path(args.bundle), "model": bundle.model, "selection_split": "val", "val_images": len(y),
              "calib_images": len(calib), "date": _dt.date.today().isoformat(),
              "command": "python scripts/calib_compare.py " + " ".join(sys.argv[1:]),
              "reference_accuracy": scorer.ref_result.metrics["accuracy"], "rows": [],
              **({"keep_float": args.keep_float} if args.keep_float else {})}
    also = [n for names in resolve_keep_float(fp32, [k for k in args.keep_float.split(",") if k]).values() for n in names]
    for views in (int(v) for v in args.views.split(",")):
        images = with_views(calib, views, bundle.spec.scale, bundle.spec.offset)
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "q.onnx"
                quantize_qdq(fp32_path, path, images, method=method, progress=False)
                qdq = onnx.load(str(path))
            seconds = round(time.perf_counter() - t0, 1)
            weighted = {n.name for n in quantized_nodes(qdq)}
            activation_only = [n.name for n in quantized_nodes(qdq, weighted_only=False) if n.name not in weighted]
            row = {"method": method, "views": views, "calibration_inputs": len(images), "calibration_s": seconds,
                   "fully_quantized": score_row(scorer.score(qdq)),
                   "activation_only_in_float": {"nodes": len(activation_only),
                                                **score_row(scorer.score(hybrid(qdq, fp32, activation_only)))}}
            if also:
                row["keep_float"] = {"nodes": len(also), **score_row(scorer.score(hybrid(qdq, fp32, also)))}
            record["rows"].append(row)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=2) + "\n")
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
