"""Training curves and confusion-matrix figures (PNG) for bundles and docs.

matplotlib is a `train` extra, so it is imported inside the functions (a workstation that only
runs inference never needs it). The figures are drawn on matplotlib's object API with an Agg
canvas instead of pyplot: no global backend switch, no figure registry that leaks between calls,
and it works in threads and on machines without a display. Files are written atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.fileutil import atomic_write_bytes
from edgecxr.core.lazy import require

#: History keys that are not a train/val metric pair worth a panel.
_SKIP_KEYS = {"lr", "learning_rate", "epoch", "epochs"}


def _figure(width: float, height: float) -> Any:
    require("matplotlib", "plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def plot_history(history: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Train vs validation curves, one panel per metric (loss first), as a PNG.

    ``history`` is Keras' ``History.history`` (or the same dict read back from bundle.json):
    ``{"loss": [...], "val_loss": [...], "accuracy": [...], "val_accuracy": [...]}``. The epoch
    with the lowest ``val_loss`` is marked, because that is the checkpoint training keeps and the
    curves are mostly looked at to see whether it was over- or under-fitting there.
    """
    series = {k: [float(v) for v in vals] for k, vals in history.items() if len(vals) and k not in _SKIP_KEYS}
    names = sorted({k[4:] if k.startswith("val_") else k for k in series}, key=lambda m: (m != "loss", m))
    if not names:
        raise ValueError("history has no metric series to plot")
    fig = _figure(5.0 * len(names), 3.8)
    from matplotlib.ticker import MaxNLocator

    axes = fig.subplots(1, len(names), squeeze=False)[0]
    best = None
    if series.get("val_loss"):
        best = int(np.argmin(series["val_loss"])) + 1
    for ax, name in zip(axes, names, strict=True):
        for key, label, style in ((name, "train", "-"), (f"val_{name}", "val", "--")):
            if key in series:
                epochs = np.arange(1, len(series[key]) + 1)
                ax.plot(epochs, series[key], style, marker="o", markersize=3, label=label)
        if best is not None:
            ax.axvline(best, color="0.5", linewidth=0.8, linestyle=":", label=f"best val_loss (epoch {best})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_confusion(cm: Any, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix image: colour = row-normalised rate (recall on the diagonal), text = count and %.

    Colouring by rate rather than count keeps a small class (30 COVID images) as readable as a
    large one; the counts stay printed because the test split is small enough that every image
    matters.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {n} classes")
    rows = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    size = 1.6 + 1.3 * n
    fig = _figure(size + 1.2, size)
    ax = fig.subplots()
    image = ax.imshow(rate, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    labels = [c.replace("_", "\n") for c in classes]
    ax.set_xticks(range(n), labels=labels, fontsize="small")
    ax.set_yticks(range(n), labels=labels, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            color = "white" if rate[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{100 * rate[i, j]:.0f}%", ha="center", va="center", color=color)
    total = int(cm.sum())
    accuracy = np.trace(cm) / total if total else 0.0
    summary = f"n={total}, accuracy {accuracy:.3f}"
    ax.set_title(f"{title}\n{summary}" if title else summary, fontsize="medium")
    return _save(fig, path)


def plot_bars(labels: Sequence[str], values: Sequence[float], path: str | Path, title: str = "") -> Path:
    """Horizontal bar chart, first label on top (sensitivity rankings)."""
    fig = _figure(8.0, 0.25 * len(labels) + 1.2)
    ax = fig.add_subplot()
    pos = np.arange(len(labels))[::-1]
    ax.barh(pos, list(values), color="#4c72b0")
    ax.set_yticks(pos, labels=list(labels), fontsize=7)
    ax.axvline(0, color="black", linewidth=0.5)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)
