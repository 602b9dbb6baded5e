"""Distillation soft labels: an ensemble of teacher models' probabilities on every training image, as a small JSON.

    .venv/bin/python scripts/soft_labels.py --student coronet --teacher coronet --teacher cnn-lstm \
        --data ../shared/data/cxr/manifest-extended.csv --out runs/soft-labels/soft-labels-coronet.json
    .venv/bin/edgecxr train coronet --data ../shared/data/cxr/manifest-extended.csv \
        --soft-labels runs/soft-labels/soft-labels-coronet.json --distill-alpha 0.5

Teachers are model names or bundle folders (anything `edgecxr infer -m` takes); each runs on the
deployed runtime with its calibration, on every `train` image of the manifest, with the input
checks off (a teacher's opinion is wanted for every training image). How the class sets are
mapped and averaged: edgecxr/stages/train/distill.py. Commit the file (docs/results/) so
distillation can be rerun without the teachers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from edgecxr.data.manifest import read_manifest
from edgecxr.models import get as get_model_def
from edgecxr.runtime.classifier import Classifier
from edgecxr.stages.train import distill


def teacher_probs(model: str, paths: list[Path], log=sys.stderr) -> tuple[list[str], np.ndarray, dict]:
    """(classes, (N, C) calibrated probabilities, a description) of one teacher on `paths`."""
    t0 = time.perf_counter()
    with Classifier.load(model, input_rules=None) as clf:
        preds = clf.predict(paths, batch_size=16)
        classes = list(clf.classes)
        audit = clf.audit
        about = {"model": Path(model).name if Path(model).exists() else model, "classes": classes,
                 **{k: audit.get(k) for k in ("artifact_sha256", "precision", "backend", "preprocess")}}
    failed = [p.source for p in preds if not p.probabilities]
    if failed:
        raise SystemExit(f"soft_labels: teacher {model} gave no probabilities for {len(failed)} image(s), e.g. {failed[0]}")
    probs = np.array([[p.probabilities[c] for c in classes] for p in preds])
    print(f"teacher {model}: {len(paths)} images in {time.perf_counter() - t0:.0f} s", file=log, flush=True)
    return classes, probs, about


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, choices=["coronet", "cnn-lstm"], help="architecture to teach")
    ap.add_argument("--teacher", action="append", required=True, help="a model name or bundle folder (repeat)")
    ap.add_argument("--data", type=Path, required=True, help="manifest CSV (its train rows are labelled)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--limit", type=int, help="only the first N rows (a quick check)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = [r for r in read_manifest(args.data) if r.split == args.split][: args.limit]
    if not rows:
        print(f"soft_labels: no {args.split} rows in {args.data}", file=sys.stderr)
        return 2
    student = get_model_def(args.student).classes
    results = [teacher_probs(t, [r.path for r in rows]) for t in args.teacher]
    soft = distill.ensemble([(c, p) for c, p, _ in results], student)
    hard = np.array([student.index(r.label) if r.label in student else -1 for r in rows])
    known = hard >= 0
    agree = float(np.mean(soft[known].argmax(1) == hard[known])) if known.any() else float("nan")
    doc = distill.document({r.relative_path: p for r, p in zip(rows, soft, strict=True)}, student,
                           [a for _, _, a in results], args.data.name, args.split)
    doc["ensemble_train_accuracy"] = round(agree, 4)
    text = json.dumps(doc, indent=None, separators=(",", ":")) + "\n"
    out = args.out or Path("runs/soft-labels") / f"soft-labels-{args.student}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    print(f"soft labels for {len(rows)} {args.split} images ({args.student}: {', '.join(student)}), "
          f"{len(args.teacher)} teacher(s), ensemble agrees with the true label on {agree:.1%} -> {out} "
          f"({len(text) // 1024} KiB, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
