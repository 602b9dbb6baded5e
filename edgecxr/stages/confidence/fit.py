"""The statistics behind calibrated probabilities and OOD abstention: fits and their measures.

Pure numpy on arrays of model outputs, so they are tested on synthetic data where the right
answer is known, and the stage (stages/confidence/run.py) only gathers outputs and records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgecxr.runtime.confidence import OodScore, apply_temperature

#: the share of in-distribution `val` images the OOD threshold lets through
TARGET_PASS = 0.99
#: reliability-diagram / ECE bins (equal width on the top-1 probability, Guo et al. 2017)
ECE_BINS = 15


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = np.clip(np.asarray(probs, dtype=np.float64)[np.arange(len(y)), y], 1e-12, None)
    return float(-np.log(p).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """T minimising NLL of softmax(log p / T) on (probs, y): golden-section search on log T.

    NLL is convex in 1/T for a fixed set of logits, so one bracketed 1-D search finds the optimum
    (to about 1e-4 in log T); no optimizer dependency.
    """
    if len(y) == 0:
        raise ValueError("no images to fit the temperature on")
    a, b = np.log(lo), np.log(hi)
    g = (np.sqrt(5) - 1) / 2

    def f(t: float) -> float:
        return nll(apply_temperature(probs, float(np.exp(t))), y)

    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return float(np.exp((a + b) / 2))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Expected calibration error and the per-bin table of the reliability diagram.

    `labels`: the class each row reports (default its argmax); the confidence is the probability
    of that class (the runtime reports the calibrated argmax, so the default is what it reports).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = probs.argmax(axis=1) if labels is None else np.asarray(labels)
    conf = probs[np.arange(len(labels)), labels]
    correct = labels == y
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for k in range(bins):
        inside = (conf > edges[k]) & (conf <= edges[k + 1]) if k else (conf >= 0) & (conf <= edges[1])
        n = int(inside.sum())
        if n:
            acc, mean_conf = float(correct[inside].mean()), float(conf[inside].mean())
            ece += n / len(y) * abs(acc - mean_conf)
            rows.append({"low": float(edges[k]), "high": float(edges[k + 1]), "n": n, "accuracy": acc,
                         "confidence": mean_conf})
    return {"ece": float(ece), "bins": rows, "n": int(len(y))}


def fit_mahalanobis(features: np.ndarray, y: np.ndarray, n_classes: int, shrinkage: float = 0.1) -> OodScore:
    """Class means and one shared covariance of the train features (Lee et al. 2018), shrunk to be invertible.

    Shrinkage towards a scaled identity (Ledoit-Wolf style, fixed weight) keeps 256 to 512
    dimensions estimable from a thousand or so images. `whiten` is V diag(1/sqrt(lambda)), so the
    distance is a matrix product at inference time.
    """
    f = np.asarray(features, dtype=np.float64)
    means = np.stack([f[y == c].mean(axis=0) if np.any(y == c) else f.mean(axis=0) for c in range(n_classes)])
    centered = f - means[y]
    cov = centered.T @ centered / max(1, len(f) - n_classes)
    dim = cov.shape[0]
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / dim * np.eye(dim)
    lam, vec = np.linalg.eigh(cov)
    whiten = vec / np.sqrt(np.clip(lam, 1e-12, None))
    return OodScore("mahalanobis", {}, means=means, whiten=whiten)


def energy_score(weight: np.ndarray, bias: np.ndarray) -> OodScore:
    return OodScore("energy", {}, weight=np.asarray(weight, np.float64), bias=np.asarray(bias, np.float64))


def msp_score() -> OodScore:
    return OodScore("msp", {})


#: the threshold sits this far (relative) above the `val` score that sets it: the same film scores a
#: few 1e-6 differently from run to run (batch composition, threads), and at exactly its own score it
#: abstained in one x86 run of arm64_check (issue 27); 1e-4 of ~8 is far below any film's spacing
SCORE_TOLERANCE = 1e-4


def threshold_for(scores: np.ndarray, target: float = TARGET_PASS) -> float:
    """The split-conformal threshold: the k-th smallest `val` score, k = ceil((n + 1) * target).

    An image from the same distribution then passes (score <= threshold) with probability at least
    `target` (Vovk et al.; Angelopoulos & Bates 2021). numpy's interpolated 99th percentile, used
    first, falls below the two largest of 129 `val` scores and let only 98.4% of `val` and 97.6%
    of `test` through: the conformal rank is what "about 99% pass" needs with ~130 images.
    """
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    k = min(len(ordered), int(np.ceil((len(ordered) + 1) * target)))
    return float(ordered[k - 1]) * (1.0 + SCORE_TOLERANCE)


def auroc(inside: Sequence[float], outside: Sequence[float]) -> float:
    """P(score of an OOD image > score of an in-distribution one), ties counted half (Mann-Whitney)."""
    a = np.sort(np.asarray(inside, dtype=np.float64))
    b = np.asarray(outside, dtype=np.float64)
    if not len(a) or not len(b):
        return float("nan")
    below = np.searchsorted(a, b, side="left")  # in-distribution scores under each OOD score
    upto = np.searchsorted(a, b, side="right")  # ... and those equal to it, counted half
    return float(np.mean((below + upto) / 2.0) / len(a))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) over every threshold, for the per-class ROC figure."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    pos = np.asarray(positive, dtype=bool)[order]
    tps = np.concatenate([[0], np.cumsum(pos)])
    fps = np.concatenate([[0], np.cumsum(~pos)])
    return fps / max(1, fps[-1]), tps / max(1, tps[-1])
