"""Soft labels for distillation: an ensemble of teachers' probabilities per training image, in a small file.

Why a file: the teachers (several long runs of both architectures, seeds and resolutions) are
gigabytes and days of CPU; their averaged probabilities on the `train` images are a few hundred KB.
Committed (docs/results/soft-labels-*.json), they let any later session distil into the shipped
model again without the teachers (`edgecxr train --soft-labels FILE`).

Teachers may have either class set. A 4-class teacher (covid / normal / bacterial / viral) gives a
3-class student its pneumonia mass as bacterial + viral. A 3-class teacher gives a 4-class student
its covid and normal mass as is, and splits its pneumonia mass between bacterial and viral in the
ratio the 4-class teachers of the same image give (a 3-class teacher cannot tell them apart; with
no 4-class teacher at all a 4-class student cannot be taught, which is an error). Teachers are
averaged with equal weight in probability space, each after its own calibration (what
`Classifier.predict` returns).

File format (JSON): {"format": "edgecxr-soft-labels", "version": 1, "classes": [...], "teachers":
[{"model", "sha256", "classes"}...], "manifest": name, "split": "train", "labels": {relative_path:
[p...]}}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.errors import EdgeCXRError
from edgecxr.data.manifest import CLASSES_3, CLASSES_4

FORMAT = "edgecxr-soft-labels"
VERSION = 1
PNEUMONIA_4 = ("pneumonia_bacterial", "pneumonia_viral")


def to_three(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """(N, C) probabilities of `classes` (the 3- or 4-class set) as CLASSES_3."""
    idx = {c: i for i, c in enumerate(classes)}
    if tuple(sorted(classes)) == tuple(sorted(CLASSES_3)):
        return probs[:, [idx[c] for c in CLASSES_3]]
    _check_four(classes)
    pneu = probs[:, idx[PNEUMONIA_4[0]]] + probs[:, idx[PNEUMONIA_4[1]]]
    out = {"covid": probs[:, idx["covid"]], "normal": probs[:, idx["normal"]], "pneumonia": pneu}
    return np.stack([out[c] for c in CLASSES_3], axis=1)


def _check_four(classes: Sequence[str]) -> None:
    if tuple(sorted(classes)) != tuple(sorted(CLASSES_4)):
        raise EdgeCXRError(f"teacher classes {list(classes)}: neither {list(CLASSES_3)} nor {list(CLASSES_4)}")


def ensemble(teachers: Sequence[tuple[Sequence[str], np.ndarray]], student: Sequence[str]) -> np.ndarray:
    """The equal-weight average of `teachers` ((classes, (N, C) probabilities) each) in the student's classes."""
    if not teachers:
        raise EdgeCXRError("no teachers to distil from")
    student = tuple(student)
    if tuple(sorted(student)) == tuple(sorted(CLASSES_3)):
        three = np.mean([to_three(np.asarray(p, np.float64), c) for c, p in teachers], axis=0)
        return _norm(three[:, [CLASSES_3.index(c) for c in student]])
    _check_four(student)
    fours = [(c, np.asarray(p, np.float64)) for c, p in teachers if tuple(sorted(c)) == tuple(sorted(CLASSES_4))]
    if not fours:
        raise EdgeCXRError("a 4-class student needs at least one 4-class teacher (to split pneumonia into "
                           "bacterial and viral)")
    # bacterial share of pneumonia, by the 4-class teachers (0.5 where they put no mass on either)
    bact = np.mean([p[:, list(c).index(PNEUMONIA_4[0])] for c, p in fours], axis=0)
    viral = np.mean([p[:, list(c).index(PNEUMONIA_4[1])] for c, p in fours], axis=0)
    share = np.divide(bact, bact + viral, out=np.full_like(bact, 0.5), where=(bact + viral) > 1e-12)
    rows = []
    for c, p in teachers:
        p = np.asarray(p, np.float64)
        if tuple(sorted(c)) == tuple(sorted(CLASSES_4)):
            rows.append(p[:, [list(c).index(k) for k in student]])
            continue
        three = to_three(p, c)
        by = {"covid": three[:, 0], "pneumonia_bacterial": three[:, 1] * share,
              "pneumonia_viral": three[:, 1] * (1 - share), "normal": three[:, 2]}
        rows.append(np.stack([by[k] for k in student], axis=1))
    return _norm(np.mean(rows, axis=0))


def _norm(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 0.0, None)
    return p / p.sum(axis=1, keepdims=True)


def document(labels: Mapping[str, Sequence[float]], classes: Sequence[str], teachers: Sequence[Mapping[str, Any]],
             manifest: str, split: str) -> dict[str, Any]:
    """The soft-label file's content (rounded to 5 decimals: a committed file stays small)."""
    return {"format": FORMAT, "version": VERSION, "classes": list(classes), "teachers": list(teachers),
            "manifest": manifest, "split": split,
            "labels": {k: [round(float(v), 5) for v in p] for k, p in sorted(labels.items())}}


def soft_targets(doc: Mapping[str, Any], relative_paths: Sequence[str], classes: Sequence[str],
                 where: str = "soft labels") -> np.ndarray:
    """(N, C) soft labels for `relative_paths` (training rows) in `classes` order, from a soft-label file's content.

    Every training image must have one (a partial file would teach some images and not others,
    silently): the missing ones are an error that names how many and the first.
    """
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise EdgeCXRError(f"{where}: not an {FORMAT} v{VERSION} file")
    have = list(doc.get("classes") or [])
    if sorted(have) != sorted(classes):
        raise EdgeCXRError(f"{where}: classes {have} are not the model's {list(classes)}")
    labels = doc.get("labels") or {}
    missing = [r for r in relative_paths if r not in labels]
    if missing:
        raise EdgeCXRError(f"{where}: {len(missing)} of {len(relative_paths)} training images have no soft label "
                           f"(first: {missing[0]}); make the file from the same manifest")
    order = [have.index(c) for c in classes]
    out = np.asarray([labels[r] for r in relative_paths], dtype=np.float32)[:, order]
    if out.ndim != 2 or not np.all(np.isfinite(out)) or (out < 0).any() or not np.allclose(out.sum(axis=1), 1, atol=1e-3):
        raise EdgeCXRError(f"{where}: soft labels must be finite probabilities that sum to 1 per image")
    return out / out.sum(axis=1, keepdims=True)


def mix(one_hot: np.ndarray, soft: np.ndarray, alpha: float) -> np.ndarray:
    """Training targets: alpha x teachers' soft labels + (1 - alpha) x the true one-hot label (Hinton et al. 2015)."""
    if not 0.0 <= alpha <= 1.0:
        raise EdgeCXRError(f"distillation weight {alpha} is not in [0, 1]")
    return (alpha * soft + (1.0 - alpha) * one_hot).astype(np.float32)


def read(path: str | Path) -> dict[str, Any]:
    from edgecxr.core.schema import read_json_file

    return read_json_file(Path(path))
