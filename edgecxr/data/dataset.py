"""Load manifest records into preprocessed arrays (training, calibration, evaluation, verify).

All of them go through `load_image` + `preprocess`, so every stage sees identical inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from edgecxr.data.io import load_image
from edgecxr.data.manifest import Record, label_indices
from edgecxr.preprocess import PreprocessSpec, preprocess


def load_arrays(
    records: Sequence[Record],
    spec: PreprocessSpec,
    classes: Sequence[str],
    progress: bool | str = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess `records` into (X float32 NHWC, y int64 class indices).

    The progress bar shows on a terminal only (tqdm's disable=None), so logs stay clean.
    Raises ImageLoadError on the first unreadable file: a training/calibration set must be whole
    (run `edgecxr data check` first to list every problem at once).
    """
    y = label_indices(records, classes)
    x = np.empty((len(records), *spec.input_shape), dtype=np.float32)
    desc = progress if isinstance(progress, str) else f"loading {len(records)} images"
    for i, rec in enumerate(tqdm(records, desc=desc, disable=None if progress else True, unit="img", leave=False)):
        x[i] = preprocess(load_image(rec.path, (spec.height, spec.width)), spec)
    return x, y
