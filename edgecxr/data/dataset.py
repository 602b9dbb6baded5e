"""Load manifest records into preprocessed arrays (training, calibration, evaluation, verify).

All of them go through `load_image` + `preprocess`, so every stage sees identical inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError
from edgecxr.core.spec import PreprocessSpec, preprocess
from edgecxr.data.io import load_image
from edgecxr.data.manifest import Record, checked_sha256, label_indices, map_label

log = logging.getLogger(__name__)


def subset_records(records: Sequence[Record], classes: Sequence[str], limit: int | None) -> list[Record]:
    """`limit` records taken round-robin over classes in manifest order (all when limit is None).

    Deterministic and class-balanced, so a quick run (`--limit`) still sees every class; the
    manifest is sorted by label, so "the first N" would be one class only.
    """
    records = list(records)
    if limit is None or limit >= len(records):
        return records
    if limit < 1:
        raise BundleError(f"limit must be >= 1, got {limit}")
    by_class: dict[str, list[Record]] = {c: [] for c in classes}
    for rec in records:
        by_class[map_label(rec.label, classes)].append(rec)
    queues = [q for q in by_class.values() if q]
    out: list[Record] = []
    i = 0
    while len(out) < limit:
        for q in queues:
            if i < len(q) and len(out) < limit:
                out.append(q[i])
        i += 1
    order = {id(r): k for k, r in enumerate(records)}
    return sorted(out, key=lambda r: order[id(r)])


def load_split(
    bundle: Bundle, manifest: str | Path, split: str, limit: int | None = None, progress: bool = True
) -> tuple[list[Record], np.ndarray, np.ndarray]:
    """(records, X, y) of a split with the bundle's preprocessing and class order."""
    from edgecxr.data.dataset import load_arrays
    from edgecxr.data.manifest import read_manifest, select

    records = subset_records(select(read_manifest(manifest), split), bundle.classes, limit)
    x, y = load_arrays(records, bundle.spec, bundle.classes, progress=f"loading {split}" if progress else False)
    return records, x, y


def load_arrays(
    records: Sequence[Record],
    spec: PreprocessSpec,
    classes: Sequence[str],
    progress: bool | str = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess `records` into (X float32 NHWC, y int64 class indices).

    The progress bar shows on a terminal only (tqdm's disable=None), so logs stay clean.
    Raises ImageLoadError on the first unreadable file, and DataError on the first file whose
    sha256 is not its manifest row's (`checked_sha256`, the check calibration, evaluation, the
    gate and training share): a training/calibration/test set must be whole and unchanged (run
    `edgecxr data check` first to list every problem at once).
    """
    y = label_indices(records, classes)
    x = np.empty((len(records), *spec.input_shape), dtype=np.float32)
    desc = progress if isinstance(progress, str) else f"loading {len(records)} images"
    for i, rec in enumerate(tqdm(records, desc=desc, disable=None if progress else True, unit="img", leave=False)):
        x[i] = preprocess(load_image(rec.path, (spec.height, spec.width)), spec)
        if rec.sha256 is not None:  # after decoding: a missing or unreadable file is an ImageLoadError
            checked_sha256(rec)
    return x, y
