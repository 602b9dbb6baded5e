"""Fit the CXR score: the Mahalanobis distance of the orientation gate's logits to upright `train` films.

What is fitted where (so the `test` numbers of scripts/ood_report.py are a report, not a fit):

- mean and covariance of the gate's 16 logits: the upright `train` films of the manifest;
- the covariance's shrinkage toward its mean variance (Ledoit-Wolf style, a grid): the one whose
  lowest per-kind AUROC of `val` uprights against the FIT half of `ood_large` (every kind, and the
  `val` films turned, flipped and inverted) is highest, ties broken by the mean AUROC;
- the threshold: the split-conformal rank of the `val` uprights' distances, the k-th smallest of n with
  k = ceil((n + 1) x 0.99), so an exchangeable upright film passes with probability >= 99%.

Why the gate's logits and not a PCA of the pixels: measured on the FIT half (2026-12-07), a PCA
reconstruction error of a 32-64 px standardized copy separates text, charts and noise (AUROC
>= 0.98) but not blanks and gradients (0.2-0.7: a standardized ramp is what a PCA of films
rebuilds best), pydicom's CT/MR/US (0.87-0.96) or flipped films (0.89-0.94); the gate's logits
reach >= 0.99 on every kind at the cost of nothing (the gate runs anyway).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.stages.confidence import fit as confidence_fit

SHRINKAGES = (0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
ALPHA = 0.01


def auroc(ood: np.ndarray, ind: np.ndarray) -> float:
    """P(an OOD score > an in-distribution score), ties counted half: confidence.fit.auroc, OOD first."""
    return confidence_fit.auroc(ind, ood)


def conformal_threshold(values: np.ndarray, alpha: float = ALPHA) -> float:
    """The split-conformal threshold of confidence.fit (k-th smallest, k = ceil((n + 1)(1 - alpha)),
    with its small margin above that film's score for run-to-run noise)."""
    return confidence_fit.threshold_for(values, 1 - alpha)


def gate_logits(images: Sequence[np.ndarray], batch: int = 256) -> np.ndarray:
    """The shipped gate's logits (N, 16) for decoded images, as the runtime computes them (`gate_input`)."""
    from edgecxr.runtime.orientation import gate_input, shipped_gate

    gate = shipped_gate()
    rows = []
    for i in range(0, len(images), batch):
        x = np.stack([gate_input(img, gate.size) for img in images[i : i + batch]])
        _, logits = gate.outputs(x)
        if logits is None:
            raise RuntimeError("the orientation gate has no logits output")
        rows.append(logits)
    return np.concatenate(rows) if rows else np.zeros((0, 16), np.float32)


def statistics(train: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and precision of `train` logits, the covariance shrunk toward (trace / d) I by `shrinkage`."""
    x = np.asarray(train, dtype=np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False)
    d = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / d * np.eye(d)
    return mean, np.linalg.inv(cov)


def distances(logits: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = np.asarray(logits, dtype=np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))


def choose(train: np.ndarray, val: np.ndarray, fit_kinds: dict[str, np.ndarray],
           shrinkages: Sequence[float] = SHRINKAGES) -> tuple[float, list[dict[str, Any]]]:
    """The shrinkage with the highest lowest-per-kind AUROC (`val` uprights vs each FIT kind), and the table."""
    table = []
    for s in shrinkages:
        mean, prec = statistics(train, s)
        ref = distances(val, mean, prec)
        per = {k: round(auroc(distances(v, mean, prec), ref), 5) for k, v in fit_kinds.items()}
        table.append({"shrinkage": s, "min_auroc": min(per.values()), "mean_auroc": round(float(np.mean(list(per.values()))), 5),
                      "auroc": per})
    best = max(table, key=lambda r: (r["min_auroc"], r["mean_auroc"]))
    return float(best["shrinkage"]), table


def fit_items(val_records: Sequence[Any], per_kind: int = 200) -> list:
    """The FIT half: every `ood_large` kind plus the `val` films turned, flipped and inverted."""
    from edgecxr.stages.confidence import ood_large

    return ood_large.build("fit", per_kind) + list(ood_large.film_transforms(val_records, "fit"))


def run(manifest: str | Path, out_dir: str | Path, per_kind: int = 200) -> dict[str, Any]:
    """Fit on `manifest`'s `train` (statistics) and `val` + FIT half (choices); write cxr_score.json."""
    from edgecxr.data.io import load_image
    from edgecxr.data.manifest import read_manifest, select
    from edgecxr.runtime.cxr_score import FORMAT, SCORE_JSON, params_sha256
    from edgecxr.runtime.orientation import shipped_gate

    records = read_manifest(manifest)
    train_recs, val_recs = select(records, "train"), select(records, "val")
    train = gate_logits([load_image(r.path) for r in train_recs])
    val = gate_logits([load_image(r.path) for r in val_recs])
    by_kind: dict[str, list] = defaultdict(list)
    for it in fit_items(val_recs, per_kind):
        by_kind[it.kind].append(it.image)
    fit_kinds = {k: gate_logits(v) for k, v in by_kind.items()}
    shrinkage, table = choose(train, val, fit_kinds)
    mean, prec = statistics(train, shrinkage)
    val_d = distances(val, mean, prec)
    threshold = conformal_threshold(val_d)
    params = {"gate_sha256": shipped_gate().meta["sha256"], "feature": "orientation gate logits (16)",
              "shrinkage": shrinkage, "mean": [float(x) for x in mean],
              "precision": [[float(x) for x in row] for row in prec], "threshold": threshold}
    fit_d = {k: distances(v, mean, prec) for k, v in fit_kinds.items()}
    meta = {
        "format": FORMAT,
        "params_sha256": params_sha256(params),
        "params": params,
        "fitted": {"date": _dt.date.today().isoformat(), "manifest": Path(manifest).name,
                   "train_films": len(train_recs), "val_films": len(val_recs),
                   "rule": f"threshold: split-conformal rank of the val uprights, alpha {ALPHA}; shrinkage: "
                           "highest lowest-per-kind AUROC, val uprights vs the FIT half"},
        "val_upright_pass": round(float(np.mean(val_d <= threshold)), 4),
        "fit_half": {k: {"n": len(v), "caught": round(float(np.mean(v > threshold)), 4),
                         "auroc": round(auroc(v, val_d), 5)} for k, v in fit_d.items()},
        "shrinkage_grid": table,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SCORE_JSON).write_text(json.dumps(meta, indent=1) + "\n")
    return meta
