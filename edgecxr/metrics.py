"""Classification metrics shared by `edgecxr evaluate` and the accuracy gate (`edgecxr verify`).

Pure numpy on purpose: the gate runs on deployment machines that have onnxruntime or TensorRT
but no TensorFlow or scikit-learn, and it must score an INT8 engine with exactly the code that
scored the Keras reference, or a difference in the numbers could come from the metric code.

Conventions:
  * confusion matrices are rows = true class, columns = predicted class (sklearn's layout);
  * a ratio whose denominator is 0 (e.g. precision of a class that is never predicted) is 0.0,
    like sklearn's ``zero_division=0``, so every value stays a finite JSON number;
  * macro averages run over the classes that occur in ``y_true`` (support > 0); on a proper split
    that is every class, and then they equal sklearn's ``average="macro"``;
  * AUC is the Mann-Whitney statistic (ties count 1/2), per class one-vs-rest, macro-averaged.

Why the extra blocks: every COVID image in the curated set comes from another source than every
other image (see shared/data/cxr/DATA_SOURCES.md), so "COVID vs rest" is an upper bound of what
the model learned about lungs. ``non_covid_only`` (normal vs pneumonia types, all from one centre)
is the less confounded number and is reported next to it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

#: Bootstrap resamples are drawn in chunks of at most this many (resample x image) counts, so the
#: memory stays bounded for large test sets while 1000 x ~130 is a single vectorised chunk.
_BOOTSTRAP_CHUNK_CELLS = 2_000_000


# -- basic counts ------------------------------------------------------------------------------


def _as_labels(y: Any, n_classes: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer class indices")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(f"{name} holds class indices outside 0..{n_classes - 1}")
    return arr


def _as_probs(probs: Any, name: str = "probs") -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (n_images, n_classes), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes) int64; ``cm[i, j]`` = images of true class i predicted as j.

    ``n_classes`` is explicit so that a split in which some class never occurs (or is never
    predicted) still gives a square matrix aligned with the bundle's class list.
    """
    if n_classes < 1:
        raise ValueError("n_classes must be >= 1")
    t = _as_labels(y_true, n_classes, "y_true")
    p = _as_labels(y_pred, n_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length ({t.size} vs {p.size})")
    flat = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)


def _binary_counts(cm: np.ndarray, i: int) -> tuple[int, int, int, int]:
    """(tp, fp, tn, fn) of class i against the rest."""
    tp = int(cm[i, i])
    fp = int(cm[:, i].sum()) - tp
    fn = int(cm[i, :].sum()) - tp
    tn = int(cm.sum()) - tp - fp - fn
    return tp, fp, tn, fn


def _binary_metrics(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def per_class(cm: Any, classes: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """One-vs-rest precision, recall (= sensitivity), specificity, F1 and support per class.

    Specificity is included because the clinical papers report it: for a screening aid a missed
    COVID (recall) and a false alarm (1 - specificity) cost different things.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(classes)} classes")
    out: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(classes):
        tp, fp, tn, fn = _binary_counts(cm, i)
        row: dict[str, float | int] = dict(_binary_metrics(tp, fp, tn, fn))
        row["support"] = tp + fn
        out[name] = row
    return out


# -- ROC AUC -----------------------------------------------------------------------------------


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of ``scores`` for ``positive`` under each row of ``weights`` (R, n).

    A bootstrap resample is the original sample with integer weights (how often each image was
    drawn), and the ranking of the scores does not change between resamples. So the scores are
    sorted once, grouped into tie blocks, and each resample only sums its weights per block:
    O(R * n) instead of re-sorting R times. Ties between a positive and a negative count 1/2.
    Rows without positive or negative weight give NaN.
    """
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = weights[:, order].astype(np.float64)
    pos = positive[order]
    pos_w = np.add.reduceat(w * pos, starts, axis=1)
    neg_w = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    num = np.sum(pos_w * (neg_below + 0.5 * neg_w), axis=1)
    den = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def roc_auc_per_class(y_true: Any, probs: Any) -> dict[int, float | None]:
    """One-vs-rest AUC per class index; None for a class without positives or without negatives."""
    p = _as_probs(probs)
    y = _as_labels(y_true, p.shape[1], "y_true")
    if y.size != p.shape[0]:
        raise ValueError(f"{y.size} labels but {p.shape[0]} probability rows")
    ones = np.ones((1, y.size))
    out: dict[int, float | None] = {}
    for k in range(p.shape[1]):
        positive = y == k
        if positive.all() or not positive.any():
            out[k] = None
        else:
            out[k] = float(_weighted_auc(p[:, k], positive, ones)[0])
    return out


def roc_auc_ovr(y_true: Any, probs: Any) -> float:
    """Macro one-vs-rest ROC AUC (rank based, ties count 1/2).

    A class with no positive or no negative image has no AUC; it is left out of the mean and a
    warning names it (silently averaging over fewer classes would make runs incomparable). NaN
    when no class can be scored.
    """
    per = roc_auc_per_class(y_true, probs)
    skipped = [k for k, v in per.items() if v is None]
    if skipped:
        warnings.warn(
            f"ROC AUC: class index(es) {skipped} have no positive or no negative images and are "
            "left out of the macro average",
            RuntimeWarning,
            stacklevel=2,
        )
    scored = [v for v in per.values() if v is not None]
    return float(np.mean(scored)) if scored else float("nan")


# -- bootstrap ---------------------------------------------------------------------------------


def _bootstrap_counts(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (r, n) int arrays: how often each image is drawn in each resample (with replacement)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, _BOOTSTRAP_CHUNK_CELLS // max(n, 1)))
    done = 0
    while done < resamples:
        r = min(chunk, resamples - done)
        idx = rng.integers(0, n, size=(r, n))
        flat = idx + (np.arange(r, dtype=np.int64) * n)[:, None]
        yield np.bincount(flat.ravel(), minlength=r * n).reshape(r, n)
        done += r


def _ci95(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


# -- full evaluation ---------------------------------------------------------------------------


def evaluate_predictions(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    positive: str = "covid",
) -> dict[str, Any]:
    """Every number `edgecxr evaluate` and the gate report, as plain JSON-able Python values.

    Args:
        y_true: (n,) true class indices into ``classes``.
        probs: (n, len(classes)) class probabilities (or any scores; argmax is the prediction).
        classes: class names in model output order.
        bootstrap: percentile-bootstrap resamples over images for the 95% CIs (0 disables them).
            Resampling images, not patients: the test split has about one image per patient.
        seed: RNG seed, so a CI is reproducible and two artifacts can be compared on the same
            resamples.
        positive: the class of the papers' binary view ("covid vs rest"); the block is omitted
            when it is not among ``classes``.
    """
    classes = list(classes)
    p = _as_probs(probs)
    n_classes = len(classes)
    if p.shape[1] != n_classes:
        raise ValueError(f"probs have {p.shape[1]} columns but there are {n_classes} classes {classes}")
    y = _as_labels(y_true, n_classes, "y_true")
    n = int(y.size)
    if n == 0:
        raise ValueError("nothing to evaluate: no images")
    if p.shape[0] != n:
        raise ValueError(f"{n} labels but {p.shape[0]} probability rows")
    if bootstrap < 0:
        raise ValueError("bootstrap must be >= 0")

    pred = np.argmax(p, axis=1)
    cm = confusion_matrix(y, pred, n_classes)
    pc = per_class(cm, classes)
    auc_by_index = roc_auc_per_class(y, p)
    present = [i for i in range(n_classes) if cm[i].sum() > 0]
    for i, name in enumerate(classes):
        pc[name]["auc"] = auc_by_index[i]
    auc_skipped = [classes[i] for i, v in auc_by_index.items() if v is None]
    auc_scored = [i for i, v in auc_by_index.items() if v is not None]
    macro_auc = float(np.mean([auc_by_index[i] for i in auc_scored])) if auc_scored else None

    correct = pred == y
    result: dict[str, Any] = {
        "n": n,
        "classes": classes,
        "accuracy": float(correct.mean()),
        "accuracy_ci95": None,
        "confusion_matrix": cm.tolist(),
        "per_class": pc,
        "macro_precision": float(np.mean([pc[classes[i]]["precision"] for i in present])),
        "macro_recall": float(np.mean([pc[classes[i]]["recall"] for i in present])),
        "macro_f1": float(np.mean([pc[classes[i]]["f1"] for i in present])),
        "macro_auc": macro_auc,
        "macro_auc_ci95": None,
        "auc_skipped": auc_skipped,
        "bootstrap": {
            "resamples": int(bootstrap),
            "seed": int(seed),
            "method": "percentile, images resampled",
        },
    }

    k = classes.index(positive) if positive in classes else None
    if k is not None:
        tp, fp, tn, fn = _binary_counts(cm, k)
        result["covid_vs_rest"] = {
            "positive": positive,
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "precision": _ratio(tp, tp + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "tp": tp,
            "fp": fp,
            "tn": tn,
            "fn": fn,
            "sensitivity_ci95": None,
            "specificity_ci95": None,
        }
    others = [i for i in range(n_classes) if i != k]
    nc_mask = y != k if k is not None else None
    nc_correct = None
    if k is not None and len(others) >= 2 and nc_mask.any():
        result["non_covid_only"], nc_correct = _non_covid_block(y, p, pred, classes, k, others, nc_mask)

    if bootstrap > 0:
        acc_s, auc_s, sens_s, spec_s, nc_s = [], [], [], [], []
        pos_true = y == k if k is not None else None
        pos_pred = pred == k if k is not None else None
        for counts in _bootstrap_counts(n, bootstrap, seed):
            w = counts.astype(np.float64)
            acc_s.append(w @ correct / n)
            if auc_scored:
                per = np.stack([_weighted_auc(p[:, i], y == i, w) for i in auc_scored], axis=1)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows -> NaN, dropped below
                    auc_s.append(np.nanmean(per, axis=1))
            if k is not None:
                with np.errstate(invalid="ignore", divide="ignore"):
                    sens_s.append((w @ (pos_true & pos_pred)) / (w @ pos_true))
                    spec_s.append((w @ (~pos_true & ~pos_pred)) / (w @ ~pos_true))
                    if nc_correct is not None:
                        nc_s.append((w @ (nc_mask & nc_correct)) / (w @ nc_mask))
        result["accuracy_ci95"] = _ci95(np.concatenate(acc_s))
        if auc_s:
            result["macro_auc_ci95"] = _ci95(np.concatenate(auc_s))
        if k is not None:
            result["covid_vs_rest"]["sensitivity_ci95"] = _ci95(np.concatenate(sens_s))
            result["covid_vs_rest"]["specificity_ci95"] = _ci95(np.concatenate(spec_s))
        if nc_s:
            result["non_covid_only"]["accuracy_ci95"] = _ci95(np.concatenate(nc_s))
    return result


def _non_covid_block(
    y: np.ndarray,
    p: np.ndarray,
    pred: np.ndarray,
    classes: list[str],
    k: int,
    others: list[int],
    mask: np.ndarray,
) -> tuple[dict[str, Any], np.ndarray]:
    """Normal vs pneumonia type(s) among non-COVID images, the COVID output masked out.

    Returns the block and a full-length boolean "restricted prediction is correct" array (False
    outside ``mask``) for the bootstrap.
    """
    sub_classes = [classes[i] for i in others]
    remap = {c: j for j, c in enumerate(others)}
    y_sub = np.array([remap[int(c)] for c in y[mask]], dtype=np.int64)
    pred_sub = np.argmax(p[mask][:, others], axis=1)
    cm = confusion_matrix(y_sub, pred_sub, len(others))
    pc = per_class(cm, sub_classes)
    correct = np.zeros(y.size, dtype=bool)
    correct[mask] = pred_sub == y_sub
    block = {
        "n": int(mask.sum()),
        "classes": sub_classes,
        "accuracy": float((pred_sub == y_sub).mean()),
        "accuracy_ci95": None,
        "recall": {c: pc[c]["recall"] for c in sub_classes},
        "macro_recall": float(np.mean([pc[c]["recall"] for c in sub_classes if pc[c]["support"] > 0])),
        "confusion_matrix": cm.tolist(),
        # How many of these images the unrestricted model called the positive class (COVID).
        "predicted_positive": int((pred[mask] == k).sum()),
    }
    return block, correct


def agreement(probs_a: Any, probs_b: Any) -> dict[str, float]:
    """How closely artifact B reproduces artifact A on the same images.

    The gate uses it to compare an FP16/INT8 artifact with the FP32 reference: top-1 agreement is
    what a user would notice, the absolute probability differences (max, mean, 99th percentile)
    are what tolerances are set on (Polygraphy-style: a statistic, not only the worst case).
    """
    a = _as_probs(probs_a, "probs_a")
    b = _as_probs(probs_b, "probs_b")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.shape[0] == 0:
        raise ValueError("no rows to compare")
    diff = np.abs(a - b)
    return {
        "n": int(a.shape[0]),
        "top1_agreement": float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1))),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "p99_abs_diff": float(np.percentile(diff, 99)),
    }


# -- reports -----------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"


def _summary_lines(result: dict[str, Any]) -> list[str]:
    """Accuracy, AUC, COVID-vs-rest and non-COVID lines of the text report."""
    boot = result.get("bootstrap", {})
    lines = [
        f"accuracy {_f(result['accuracy'])}{_ci(result.get('accuracy_ci95'))}",
        f"macro AUC (one-vs-rest) {_f(result.get('macro_auc'))}{_ci(result.get('macro_auc_ci95'))}",
    ]
    if result.get("auc_skipped"):
        lines.append(
            f"  AUC not defined for {', '.join(result['auc_skipped'])} (no positives or no negatives)"
        )
    if boot.get("resamples"):
        lines.append(f"  CIs: {boot['resamples']} bootstrap resamples of images, seed {boot['seed']}")
    cv = result.get("covid_vs_rest")
    if cv:
        lines.append(
            f"{cv.get('positive', 'covid')} vs rest: sensitivity {_f(cv['sensitivity'])}{_ci(cv.get('sensitivity_ci95'))}, "
            f"specificity {_f(cv['specificity'])}{_ci(cv.get('specificity_ci95'))}, precision {_f(cv['precision'])}, "
            f"F1 {_f(cv['f1'])} (tp {cv['tp']}, fp {cv['fp']}, tn {cv['tn']}, fn {cv['fn']})"
        )
    nc = result.get("non_covid_only")
    if nc:
        recalls = ", ".join(f"{c} {_f(v)}" for c, v in nc["recall"].items())
        positive = cv.get("positive", "covid") if cv else "covid"
        extra = f"; {nc['predicted_positive']} of them predicted {positive} when unrestricted"
        lines.append(
            f"non-COVID only (n={nc['n']}, argmax over {'/'.join(nc['classes'])}): "
            f"accuracy {_f(nc['accuracy'])}{_ci(nc.get('accuracy_ci95'))}; recall {recalls}{extra}"
        )
    return lines


def format_report(result: dict[str, Any], title: str = "") -> str:
    """Fixed-width text report of an `evaluate_predictions` result, for the terminal and logs."""
    classes = list(result["classes"])
    cm = result["confusion_matrix"]
    name_w = max(len("macro"), *(len(c) for c in classes)) + 2
    out: list[str] = []
    if title:
        out += [f"{title} (n={result['n']})", "=" * (len(title) + len(str(result["n"])) + 5)]
    out.append("Confusion matrix (rows = true, columns = predicted)")
    col_w = [max(len(c), 5) + 2 for c in classes]
    out.append(" " * name_w + "".join(c.rjust(w) for c, w in zip(classes, col_w, strict=True)))
    for c, row in zip(classes, cm, strict=True):
        out.append(c.ljust(name_w) + "".join(str(v).rjust(w) for v, w in zip(row, col_w, strict=True)))
    out.append("")
    heads = ["precision", "recall", "specificity", "f1", "support", "auc"]
    out.append("class".ljust(name_w) + "".join(h.rjust(12) for h in heads))
    for c in classes:
        m = result["per_class"][c]
        cells = [
            _f(m["precision"]),
            _f(m["recall"]),
            _f(m["specificity"]),
            _f(m["f1"]),
            str(m["support"]),
            _f(m.get("auc")),
        ]
        out.append(c.ljust(name_w) + "".join(v.rjust(12) for v in cells))
    macro = [
        _f(result["macro_precision"]),
        _f(result["macro_recall"]),
        "",
        _f(result["macro_f1"]),
        str(result["n"]),
        _f(result.get("macro_auc")),
    ]
    out.append("macro".ljust(name_w) + "".join(v.rjust(12) for v in macro))
    out.append("")
    out += _summary_lines(result)
    return "\n".join(out) + "\n"
