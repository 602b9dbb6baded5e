"""Turn a trained bundle into a shipped reference model in edgecxr/reference/NAME.

    python scripts/package_reference.py runs/coronet --name coronet --data ../shared/data/cxr/manifest.csv

Steps (each an ordinary edgecxr stage; `test` is read here once, for the final report and the gate):
  1. evaluate the Keras model on `test` (metrics with CIs -> bundle.json metrics.test) and store its
     probabilities per image sha256 (reference_probs.json), the FP32 reference for later gates;
  2. export ONNX FP32 + FP16 (parity vs Keras), unless already exported;
  3. gate the shipped artifacts against Keras on `test` (exit 3 if one fails);
  4. copy bundle.json, the shipped artifacts and reference_probs.json into edgecxr/reference/NAME,
     with the sha256 of each artifact recorded (checked whenever it is loaded).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.data.manifest import read_manifest, select
from edgecxr.runtime import store
from edgecxr.stages.evaluate import evaluate_bundle
from edgecxr.stages.gate.reference import STORED_REFERENCE, store_reference


def edgecxr(*args: str) -> None:
    print("+ edgecxr " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "edgecxr", *args], check=True)


def scrub_paths(bundle: Bundle) -> None:
    """No path of the machine that trained it in a shipped bundle.json: absolute paths become file names."""

    def scrub(value: object) -> object:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, str) and value.startswith("/") and len(value) > 1:
            return Path(value).name
        return value

    bundle.meta = scrub(bundle.meta)
    bundle.save()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--data", required=True, type=Path, help="manifest with the test split")
    ap.add_argument("--ship", default="onnx_fp16", help="comma-separated artifact keys to ship")
    ap.add_argument("--reference-dir", type=Path, default=store.REFERENCE_DIR, help="where shipped models live")
    ap.add_argument("--init-from", type=Path, help="the bundle whose weights started this run (progressive resizing)")
    args = ap.parse_args()
    keys = tuple(k.strip() for k in args.ship.split(",") if k.strip())

    result = evaluate_bundle(args.bundle, args.data, "test", backend="keras", progress=False)
    bundle = Bundle.load(args.bundle)
    records = select(read_manifest(args.data), "test")
    probs = np.asarray([p["probs"] for p in result["predictions"]], dtype=np.float32)
    store_reference(bundle, records, probs, source="keras", split="test")
    metrics = {k: v for k, v in result.items() if k not in ("predictions", "files")}
    bundle = Bundle.load(args.bundle)
    bundle.update(metrics=dict(bundle.meta.get("metrics") or {}, test=metrics))
    print(f"test accuracy {metrics['accuracy']:.4f}, COVID sensitivity "
          f"{metrics['per_class']['covid']['recall']:.4f}; stored {STORED_REFERENCE}", flush=True)

    if Bundle.load(args.bundle).artifact("onnx_fp16", must_exist=False) is None:
        edgecxr("export", "-m", str(args.bundle), "--data", str(args.data))
    edgecxr("verify", "-m", str(args.bundle), "--data", str(args.data), "--split", "test", "--artifact", ",".join(keys))
    dest = args.reference_dir / args.name
    shipped = store.copy_deployable(args.bundle, dest, keys, replace=True, extra_files=(STORED_REFERENCE,))
    if args.init_from:
        first = Bundle.load(args.init_from).meta
        shipped.meta["progressive"] = {
            "init_from": args.init_from.name,
            "input_shape": first["input_shape"],
            "dataset": {"manifest": Path(first["dataset"]["manifest"]).name, "counts": first["dataset"]["counts"]},
            "epochs_run": first["training"]["epochs_run"],
            "best_epoch": first["training"]["best_epoch"],
            "train_seconds": first["training"]["train_seconds"],
            "recipe": first["training"].get("recipe"),
            "lr": first["training"]["config"]["lr"],
        }
    scrub_paths(shipped)
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"shipped {args.name}: {dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
