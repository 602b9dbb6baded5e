"""Calibration of the shipped models on held-out data: none, temperature, vector and Dirichlet compared.

    python scripts/calibration_report.py --data ../shared/data/cxr/manifest.csv
    python scripts/calibration_report.py --data ../shared/data/cxr/manifest.csv --update-docs --write-bundles

For each model the artifact its confidence fit names (FP16) runs on `val`, `calib` and `test`
through edgecxr's ONNX Runtime runner. Every calibrator kind is cross-validated on the pool
`val` + `calib` (`calib`'s labels are free: INT8 calibration used only its pixels, for activation
ranges) and fitted on the whole pool; the kind with the lowest CV ECE is chosen (CV NLL breaks
near-ties; `none` is a candidate). `test` is only reported: ECE (15 bins) with a bootstrap 95%
interval, NLL, and the ECE a perfectly calibrated model with the same confidences would show on
this many images (ECE's small-sample bias), per kind; plus the INT8 artifact's `test` ECE with the
same calibrator. A second table repeats the comparison with `val` alone as the pool (the old fit).

Writes calibration.json and MODEL-reliability.png into --out (default runs/calibration/, git-ignored);
--update-docs writes docs/results/calibration.json and docs/img/MODEL-reliability.png instead;
--write-bundles records the chosen calibrator in edgecxr/reference/MODEL/bundle.json (its
confidence.calibrator only). --cache DIR keeps the probability arrays between runs (they take
minutes to compute on a small CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.data.dataset import load_arrays
from edgecxr.data.manifest import read_manifest, select
from edgecxr.runtime import store
from edgecxr.runtime.confidence import KINDS, SECTION, Confidence
from edgecxr.stages.confidence import calibrate, fit
from edgecxr.stages.confidence.report import plot_reliability
from edgecxr.stages.confidence.run import CALIBRATOR_POOL, calibrator_section, outputs_of

REPO = Path(__file__).resolve().parents[1]
MODELS = ("coronet", "cnn-lstm")
SPLITS = (*CALIBRATOR_POOL, "test")


def probabilities(bundle: Bundle, manifest: Path, artifacts: list[str], cache: Path | None) -> dict[str, np.ndarray]:
    """{SPLIT_ARTIFACT: probs, SPLIT_y: labels} for val, calib and test, from --cache when it has them."""
    path = cache / f"{bundle.model}-probs.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            got = {k: data[k] for k in data.files}
        if all(f"{s}_{a}" in got for s in SPLITS for a in artifacts):
            return got
    records, got = read_manifest(manifest), {}
    for split in SPLITS:
        x, y = load_arrays(select(records, split), bundle.spec, bundle.classes, progress=f"loading {split}")
        got[f"{split}_y"] = y
        for key in artifacts:
            got[f"{split}_{key}"] = outputs_of(bundle.artifact(key), x)[0]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **got)
    return got


def compare(pool_p: np.ndarray, pool_y: np.ndarray, test_p: np.ndarray, test_y: np.ndarray,
            int8_p: np.ndarray | None, repeats: int, bootstrap: int) -> dict[str, Any]:
    """The CV table on the pool and, per kind fitted on the whole pool, what it does on test."""
    choice = calibrate.cross_validate(pool_p, pool_y, repeats=repeats)
    rows: dict[str, Any] = {}
    for kind in KINDS:
        cal, inner = calibrate.fit_calibrator(kind, pool_p, pool_y)
        q = cal.apply(test_p)
        lo, hi = calibrate.bootstrap_ece(test_p, q, test_y, n=bootstrap)
        row = {**{k: round(v, 4) for k, v in choice.table[kind].items()},
               "test_ece": round(calibrate.ece(test_p, q, test_y), 4), "test_ece_ci95": [round(lo, 4), round(hi, 4)],
               "test_nll": round(fit.nll(q, test_y), 4),
               "test_ece_if_calibrated": {k: round(v, 4) for k, v in calibrate.calibrated_ece(test_p, q, bootstrap).items()},
               "test_accuracy": round(float(np.mean(np.asarray(q).argmax(1) == test_y)), 4),
               "test_labels_moved": int((np.asarray(q).argmax(1) != test_p.argmax(1)).sum()),
               "params": cal.params(), **({"fit": inner} if inner else {})}
        if int8_p is not None:
            q8 = cal.apply(int8_p)
            row["test_ece_int8"] = round(calibrate.ece(int8_p, q8, test_y), 4)
            row["test_nll_int8"] = round(fit.nll(q8, test_y), 4)
        rows[kind] = row
    return {"n_pool": int(len(pool_y)), "rule": choice.rule, "chosen": choice.kind, "methods": rows}


def report_model(name: str, manifest: Path, args: argparse.Namespace, img: Path) -> dict[str, Any]:
    bundle = Bundle.load(store.REFERENCE_DIR / name)
    section = bundle.meta.get(SECTION) or {}
    old = section.get("calibrator") or section.get("temperature") or {}
    ref = old.get("artifact") or "onnx_fp16"
    artifacts = [ref] + (["onnx_int8"] if bundle.artifact("onnx_int8", must_exist=False) and ref != "onnx_int8" else [])
    got = probabilities(bundle, manifest, artifacts, args.cache)
    test_p, test_y = got[f"test_{ref}"], got["test_y"]
    int8_p = got.get("test_onnx_int8")
    pool_p = np.concatenate([got[f"{s}_{ref}"] for s in CALIBRATOR_POOL])
    pool_y = np.concatenate([got[f"{s}_y"] for s in CALIBRATOR_POOL])
    out: dict[str, Any] = {
        "artifact": ref, "n_test": int(len(test_y)),
        "test_accuracy": round(float((test_p.argmax(1) == test_y).mean()), 4),
        "pool": {"splits": list(CALIBRATOR_POOL),
                 **compare(pool_p, pool_y, test_p, test_y, int8_p, args.repeats, args.bootstrap)},
        "pool_val_only": {"splits": ["val"],
                          **compare(got[f"val_{ref}"], got["val_y"], test_p, test_y, int8_p, args.repeats, args.bootstrap)},
    }
    chosen = out["pool"]["chosen"]
    out["chosen"] = chosen
    if args.write_bundles:
        section = dict(section)
        section.pop("temperature", None)
        section["calibrator"] = calibrator_section(pool_p, pool_y, "auto", list(CALIBRATOR_POOL), ref)
        bundle.update(**{SECTION: section})
        out["bundle_written"] = str(bundle.path.relative_to(REPO))
    cal = Confidence.from_bundle(Bundle.load(bundle.dir)).calibrator if args.write_bundles else \
        calibrate.fit_calibrator(chosen, pool_p, pool_y)[0]
    curves = {"test, raw": (test_p, test_y), f"test, {chosen}": (cal.apply(test_p), test_y)}
    plot_reliability(curves, img / f"{name}-reliability.png",
                     f"{name}: reliability on test ({chosen} fitted on {' + '.join(CALIBRATOR_POOL)})")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(MODELS))
    ap.add_argument("--data", required=True, type=Path, help="manifest.csv with val, calib and test splits")
    ap.add_argument("--out", type=Path, default=Path("runs/calibration"), help="folder for the JSON and figures")
    ap.add_argument("--update-docs", action="store_true", help="write docs/results/ and docs/img/ instead of --out")
    ap.add_argument("--write-bundles", action="store_true",
                    help="record the chosen calibrator in the reference bundles' confidence section")
    ap.add_argument("--cache", type=Path, default=None, help="folder to keep the probability arrays in")
    ap.add_argument("--repeats", type=int, default=calibrate.CV_REPEATS, help="CV repeats")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the ECE interval")
    args = ap.parse_args()
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        print(f"error: unknown model {unknown[0]!r}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    img = REPO / "docs" / "img" if args.update_docs else args.out
    results = REPO / "docs" / "results" if args.update_docs else args.out
    img.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    doc = {"ece_bins": fit.ECE_BINS, "cv_folds": calibrate.CV_FOLDS, "cv_repeats": args.repeats,
           "bootstrap": args.bootstrap,
           "label": "the argmax of the calibrated probabilities; ECE is its probability against its correctness",
           "models": {m: report_model(m, args.data, args, img) for m in args.models}}
    dest = results / "calibration.json"
    dest.write_text(json.dumps(doc, indent=1) + "\n")
    for m, r in doc["models"].items():
        print(f"\n{m} (test n={r['n_test']}, chosen {r['chosen']} on {' + '.join(r['pool']['splits'])})")
        print(f"{'kind':<12} {'CV ECE':>7} {'CV NLL':>7} {'test ECE':>8} {'95% CI':>15} {'NLL':>6} {'calib. floor':>12}")
        for kind, row in r["pool"]["methods"].items():
            ci = row["test_ece_ci95"]
            print(f"{kind:<12} {row['cv_ece']:>7.3f} {row['cv_nll']:>7.3f} {row['test_ece']:>8.3f} "
                  f"{f'[{ci[0]:.3f}, {ci[1]:.3f}]':>15} {row['test_nll']:>6.3f} {row['test_ece_if_calibrated']['mean']:>12.3f}")
    print(f"\nwritten: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
