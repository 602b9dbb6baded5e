"""Figures of the confidence fit: reliability diagram (before/after the calibrator) and per-class ROC curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.errors import MissingDependencyError
from edgecxr.runtime.confidence import Calibrator
from edgecxr.stages.confidence.fit import auroc, nll, reliability, roc_curve
from edgecxr.stages.plots import _figure, _save


def calibration_report(probs: np.ndarray, y: np.ndarray, classes: Sequence[str], calibrator: Calibrator,
                       folder: Path, tag: str, title: str) -> dict[str, Any]:
    """ECE and NLL of the raw probabilities and, where the bundle has a calibrator, of the calibrated
    ones (the calibrated argmax and its probability: what the runtime reports); a reliability diagram
    (reliability-TAG.png) and per-class ROC curves (roc-TAG.png).

    What `evaluate` reports (issue "honest answers", item 3). A missing matplotlib costs the figures
    only (a warning in "figure_error"), never the numbers.
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    temperature = calibrator.temperature if calibrator.kind == "temperature" else None
    out: dict[str, Any] = {"temperature": temperature, "calibrator": calibrator.kind,
                           "ece_before": reliability(probs, y)["ece"], "nll_before": nll(probs, y)}
    curves: dict[str, tuple[np.ndarray, ...]] = {"raw": (probs, y)}
    final = probs
    if calibrator.kind != "none":
        final = calibrator.apply(probs)
        out.update(ece_after=reliability(final, y)["ece"], nll_after=nll(final, y),
                   accuracy_before=float(np.mean(probs.argmax(axis=1) == y)),
                   accuracy_after=float(np.mean(final.argmax(axis=1) == y)))
        name = f"T = {temperature:.3g}" if temperature is not None else calibrator.kind
        curves[name] = (final, y)
    try:
        out["reliability_figure"] = str(plot_reliability(curves, folder / f"reliability-{tag}.png", f"{title}: reliability"))
        out["roc_figure"] = str(plot_roc(final, y, classes, folder / f"roc-{tag}.png", f"{title}: one-vs-rest ROC"))
    except MissingDependencyError as exc:
        out["figure_error"] = str(exc)
    return out


def plot_reliability(curves: Mapping[str, tuple[np.ndarray, ...]], path: str | Path, title: str = "") -> Path:
    """One reliability diagram: accuracy against mean confidence per bin, one line per labelled
    (probs, y) or (probs, y, reported labels)."""
    fig = _figure(4.6, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for label, (probs, y, *picked) in curves.items():
        rel = reliability(probs, y, labels=picked[0] if picked else None)
        xs = [b["confidence"] for b in rel["bins"]]
        ys = [b["accuracy"] for b in rel["bins"]]
        ax.plot(xs, ys, marker="o", linewidth=1.5, label=f"{label} (ECE {rel['ece']:.3f})")
    ax.set_xlabel("mean top-1 probability in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_roc(probs: np.ndarray, y: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """One-vs-rest ROC curve per class, with its AUC in the legend."""
    fig = _figure(4.6, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
    for k, name in enumerate(classes):
        positive = y == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr = roc_curve(probs[:, k], positive)
        auc = auroc(probs[~positive, k], probs[positive, k])
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:  # a split with one class draws no curve
        ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_ood_scores(inside: np.ndarray, by_kind: Mapping[str, np.ndarray], threshold: float, path: str | Path,
                    title: str = "") -> Path:
    """The OOD score of in-distribution images against each kind of OOD input, with the threshold."""
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    labels = ["in-distribution", *by_kind]
    data: list[Any] = [inside, *by_kind.values()]
    for i, values in enumerate(data):
        jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(values))
        ax.scatter(np.full(len(values), i) + jitter, values, s=10, alpha=0.7)
    ax.axhline(threshold, color="crimson", linewidth=1, label=f"threshold {threshold:.3g}")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("OOD score")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
