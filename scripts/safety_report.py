"""The numbers and figures of docs/SAFETY.md for a model whose confidence fit is done (`edgecxr confidence`).

    python scripts/safety_report.py coronet  --data ../shared/data/cxr/manifest.csv
    python scripts/safety_report.py cnn-lstm --data ../shared/data/cxr/manifest.csv

Nothing is fitted or chosen here: the calibrator, OOD method and thresholds are read from the
bundle. `test` is read for the report only: the share of test images rejected or abstained (the
whole product: input checks, then the model's OOD score, as `edgecxr infer` runs it), ECE before
and after the bundle's calibrator, per-class ROC. The reliability diagrams and the comparison of
calibrators are scripts/calibration_report.py's. The built-in OOD set goes through the same
`Classifier.predict` (arrays; DICOM files by path, so the header rules apply too).
Writes safety-MODEL.json and MODEL-{roc-test,ood-scores}.png into --out (default
runs/safety/, git-ignored); --update-docs writes them where SAFETY.md reads them instead
(docs/results/ and docs/img/), the one way this script changes the checkout.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.core.fileutil import recorded_path
from edgecxr.core.spec import preprocess
from edgecxr.data.dataset import load_arrays
from edgecxr.data.manifest import read_manifest, select
from edgecxr.runtime import store
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.confidence import Confidence
from edgecxr.stages.confidence import fit, ood_set
from edgecxr.stages.confidence.report import plot_ood_scores, plot_roc
from edgecxr.stages.confidence.run import outputs_of

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--per-kind", type=int, default=8)
    ap.add_argument("--out", type=Path, default=Path("runs/safety"), help="folder for the JSON and figures")
    ap.add_argument("--update-docs", action="store_true",
                    help="write into docs/results/ and docs/img/ (the committed copies) instead of --out")
    args = ap.parse_args()

    bundle = Bundle.load(store.resolve(args.model))
    conf = Confidence.from_bundle(bundle)
    fitted = bundle.meta.get("confidence") or {}
    if conf.ood is None or not (fitted.get("calibrator") or fitted.get("temperature")):
        raise SystemExit(f"error: {bundle.dir} has no confidence fit; run `edgecxr confidence` first")
    records = read_manifest(args.data)
    out: dict = {"model": args.model, "bundle": recorded_path(bundle.dir), "confidence": bundle.meta["confidence"]}

    # the product on test and val: what `edgecxr infer` answers
    with Classifier.load(bundle.dir) as clf:
        out["runtime"] = {k: clf.backend_info[k] for k in ("backend", "precision", "artifact", "confidence")}
        out["runtime"]["artifact"] = recorded_path(out["runtime"]["artifact"])
        for split in ("val", "test"):
            recs = select(records, split)
            preds = clf.predict([r.path for r in recs], workers=0)
            status = Counter(p.status if p.error is None else "failed" for p in preds)
            out[f"{split}_status"] = {"n": len(preds), **status,
                                      "not_answered": (len(preds) - status.get("ok", 0)) / len(preds),
                                      "examples": [[Path(p.source).name, p.status, p.reason] for p in preds
                                                   if p.status != "ok"][:10]}
        vals = select(records, "val")
        items = ood_set.from_records(vals, per_kind=args.per_kind)
        preds = clf.predict([it.path if it.path is not None else it.image for it in items], workers=0)
        kinds: dict = {}
        for it, p in zip(items, preds, strict=True):
            row = kinds.setdefault(it.kind, Counter())
            row["n"] += 1
            row[p.status if p.error is None else "failed"] += 1
        out["ood_set_product"] = {k: {**v, "caught": (v["rejected"] + v["abstained"] + v["failed"]) / v["n"]}
                                  for k, v in kinds.items()}
        precision = clf.backend_info["precision"]

    # calibration and ROC from the model's raw outputs (the artifact the fit came from)
    ref_key = (fitted.get("calibrator") or fitted.get("temperature"))["artifact"]
    ref = bundle.artifact(ref_key)
    raw = {}
    for split in ("val", "test"):
        x, y = load_arrays(select(records, split), bundle.spec, bundle.classes, progress=False)
        p, f = outputs_of(ref, x)
        raw[split] = (p, f, y)
        cal = conf.calibrator.apply(p)
        out[f"ece_{split}"] = {"calibrator": conf.calibrator.kind, "before": fit.reliability(p, y)["ece"],
                               "after": fit.reliability(cal, y, labels=p.argmax(axis=1))["ece"],
                               "nll_before": fit.nll(p, y), "nll_after": fit.nll(cal, y), "n": len(y)}
    img = REPO / "docs" / "img" if args.update_docs else args.out
    img.mkdir(parents=True, exist_ok=True)
    name = args.model
    p, _, y = raw["test"]
    plot_roc(conf.calibrator.apply(p), y, bundle.classes, img / f"{name}-roc-test.png",
             f"{name}: per-class ROC on test")
    x_ood = np.stack([preprocess(it.image, bundle.spec) for it in items])
    p_ood, f_ood = outputs_of(ref, x_ood)
    s_ood = conf.ood.score(p_ood, f_ood)
    s_val = conf.ood.score(raw["val"][0], raw["val"][1])
    s_test = conf.ood.score(raw["test"][0], raw["test"][1])
    by_kind = {k: s_ood[[i for i, it in enumerate(items) if it.kind == k]] for k in dict.fromkeys(it.kind for it in items)}
    thr = conf.ood.threshold(ref_key.split("_")[-1])
    plot_ood_scores(np.concatenate([s_val, s_test]), by_kind, thr, img / f"{name}-ood-scores.png",
                    f"{name}: {conf.ood.method} OOD score (val + test vs OOD set)")
    out["ood_score_auroc"] = {"val_vs_all_ood": fit.auroc(s_val, s_ood), "test_vs_all_ood": fit.auroc(s_test, s_ood),
                              **{f"test_vs_{k}": fit.auroc(s_test, v) for k, v in by_kind.items()}}
    out["runtime_precision"] = precision
    dest = (REPO / "docs" / "results" if args.update_docs else args.out) / f"safety-{name}.json"
    dest.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(json.dumps({k: out[k] for k in ("runtime", "val_status", "test_status", "ece_val", "ece_test",
                                          "ood_score_auroc", "ood_set_product")}, indent=1, default=float))


if __name__ == "__main__":
    main()
