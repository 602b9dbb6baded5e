"""Quantize a shipped reference model to INT8 with automatic fallback, choosing on val, gating on test once.

    python scripts/quantize_reference.py coronet [--views 0] [--method minmax] [--out runs/int8]

Works on a copy (runs/int8/NAME): the FP32 ONNX is widened from the shipped FP16 model, the
sensitivity ranking and the greedy float set are chosen on `val`, the chosen set is re-calibrated
and confirmed on `val`, then the publication gate runs once on `test` against the trained model's
stored reference. The calibration manifest and the ranking go to calibration/. Prints the JSON of
the calibration section. With the default one-pass error ranking (--rank error) it takes 15-30
minutes per model on a 2-core CPU; --rank agreement is one val pass per quantized node.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import EdgeCXRError
from edgecxr.runtime.store import REFERENCE_DIR
from edgecxr.stages.export.int8 import calibrate_bundle

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", choices=sorted(p.name for p in REFERENCE_DIR.iterdir() if p.is_dir()))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cxr" / "manifest.csv"))
    ap.add_argument("--out", default="runs/int8")
    ap.add_argument("--method", default="minmax")
    ap.add_argument("--views", type=int, default=0)
    ap.add_argument("--rank", default="error", choices=["error", "agreement"])
    ap.add_argument("--scope", default="all", choices=["all", "weighted"])
    ap.add_argument("--fallback", default="auto", choices=["auto", "none"],
                    help="none: quantize all but --keep-float (a float set chosen on val before), then gate on test")
    ap.add_argument("--keep-float", default="", help="as edgecxr calibrate --keep-float (e.g. activations)")
    ap.add_argument("--explain", action="store_true", help="also measure each node quantized alone (slower)")
    ap.add_argument("--ship", action="store_true", help="after a passing run, add its INT8 to the shipped model")
    ap.add_argument("--ship-only", action="store_true", help="ship the INT8 of an earlier run in --out, do not calibrate")
    args = ap.parse_args()
    dest = Path(args.out) / args.name
    if args.ship_only:
        ship(dest, REFERENCE_DIR / args.name, args.data)
        return 0
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(REFERENCE_DIR / args.name, dest)
    bundle = Bundle.load(dest)
    t0 = time.perf_counter()
    try:
        section = calibrate_bundle(bundle, args.data, method=args.method, views=args.views, fallback=args.fallback,
                                   keep_float=[k for k in args.keep_float.split(",") if k],
                                   rank=args.rank, scope=args.scope,
                                   explain=args.explain, select_split="val", verify_split="test",
                                   calib_manifest_out=REPO / "calibration", progress=False,
                                   log=lambda m: print(m, flush=True))
    except EdgeCXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    section["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(section, indent=2, sort_keys=True, default=str))
    if args.ship:
        ship(dest, REFERENCE_DIR / args.name, args.data)
    return 0


def ship(work: Path, reference: Path, manifest: str) -> None:
    """Copy a gated INT8 model into the shipped reference bundle with its calibration record, verdict and hash,
    and refit the confidence (its INT8 OOD threshold belongs to the INT8 file) in place, on the same data."""
    from edgecxr.runtime import store

    src = Bundle.load(work)
    int8 = src.artifact("onnx_int8")
    verdict = src.gate_verdicts().get("onnx_int8") or {}
    if verdict.get("passed") is not True or verdict.get("split") != "test":
        raise SystemExit(f"{work}: its INT8 has not passed the gate on test; nothing shipped")
    shutil.copy2(int8, reference / "model.int8.onnx")
    dst = Bundle.load(reference)
    dst.set_artifact("onnx_int8", reference / "model.int8.onnx")
    calib = {k: v for k, v in src.meta["calibration"].items() if k not in ("sidecar",)}
    calib["manifest"] = f"calibration/{Path(calib['manifest']).name}"  # the repository's copy, not this machine's path
    dst.meta["calibration"] = calib
    dst.meta.setdefault("export", {})["fp32_from_fp16"] = src.meta["export"]["fp32_from_fp16"]
    dst.save()
    run = {k: verdict[k] for k in ("time", "split", "n", "manifest_sha256", "reference", "gates") if k in verdict}
    row = {k: v for k, v in verdict.items() if k not in run and k not in ("by", "path")}
    dst.record_gate({"onnx_int8": row}, run, by="calibrate")
    stats = ((dst.meta.get("confidence") or {}).get("ood") or {}).get("statistics_from") or {}
    if stats:  # `edgecxr confidence -m NAME` would fit a writable copy in the models folder; the shipped one is refitted here
        from edgecxr.stages.confidence.run import fit_confidence

        train = Path(manifest).with_name(stats.get("manifest") or Path(manifest).name)
        fit_confidence(reference, manifest, train_manifest=train, progress=False)
        print(f"refitted the confidence of {reference.name} (OOD statistics from {train.name}, threshold on val)")
    store.record_hashes(Bundle.load(reference))
    size = sum(p.stat().st_size for p in reference.iterdir())
    print(f"shipped {int8.name} into {reference} ({size / 1e6:.1f} MB in the folder)")


if __name__ == "__main__":
    sys.exit(main())
