"""One input -> a preprocessed tensor, or the Prediction that says why it never reaches the model.

The decode half of `Classifier.predict`, kept apart from the model half so that it can run ahead of
the model (in worker threads) and so that every kind of input (a path today; DICOM datasets, bytes
and arrays held in memory) goes through the same decoding rules, the same one preprocessing spec
and the same input checks, in one place.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.errors import ImageLoadError
from edgecxr.core.spec import PreprocessSpec, preprocess
from edgecxr.data.io import load_image
from edgecxr.runtime.input_checks import InputRules
from edgecxr.runtime.prediction import Prediction


def source_of(item: Any, index: int) -> str | int:
    """What a Prediction calls its input: the path as given, else its index in the input list."""
    return str(item) if isinstance(item, (str, Path)) else index


def prepare(item: Any, index: int, spec: PreprocessSpec, rules: InputRules) -> tuple[Prediction, np.ndarray | None]:
    """Decode, preprocess and check one input.

    Returns its Prediction (with `preprocess_ms`; with `error` when it cannot be read, or status
    "rejected" when the input checks refuse it) and the tensor for the model, or None when the
    input must not reach the model. Never raises for a bad input: a batch from the scanner always
    completes.
    """
    source = source_of(item, index)
    t0 = time.perf_counter()
    try:
        if isinstance(item, (str, Path)):
            image = load_image(item, (spec.height, spec.width))
        else:
            image = np.asarray(item)
        tensor = preprocess(image, spec)  # first: a bad array is an error, not a rejection
    except ImageLoadError as exc:
        return Prediction(source, error=exc.reason), None
    except ValueError as exc:  # preprocess: wrong dtype / range / shape of a given array or DICOM
        return Prediction(source, error=str(exc)), None
    reason = (rules.check_file(item) if isinstance(item, (str, Path)) else None) or rules.check_pixels(image)
    elapsed = (time.perf_counter() - t0) * 1e3
    if reason:
        return Prediction(source, preprocess_ms=elapsed, status="rejected", reason=reason), None
    return Prediction(source, preprocess_ms=elapsed), tensor
