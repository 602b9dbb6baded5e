"""One input -> a preprocessed tensor, or the Prediction that says why it never reaches the model.

The decode half of `Classifier.predict`, kept apart from the model half so that it can run ahead of
the model (in worker threads) and so that every kind of input (a path today; DICOM datasets, bytes
and arrays held in memory) goes through the same decoding rules, the same one preprocessing spec
and the same input checks, in one place.
"""

from __future__ import annotations

import hashlib
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
    pred = Prediction(source)
    try:
        if isinstance(item, (str, Path)):
            pred.input_sha256 = file_sha256(item)
            image = load_image(item, (spec.height, spec.width))
            pred.dicom = dicom_uids(item)
        else:
            image = np.asarray(item)
            pred.input_sha256 = array_sha256(image)
        tensor = preprocess(image, spec)  # first: a bad array is an error, not a rejection
    except ImageLoadError as exc:
        pred.error = exc.reason
        return pred, None
    except ValueError as exc:  # preprocess: wrong dtype / range / shape of a given array or DICOM
        pred.error = str(exc)
        return pred, None
    reason = (rules.check_file(item) if isinstance(item, (str, Path)) else None) or rules.check_pixels(image)
    pred.preprocess_ms = (time.perf_counter() - t0) * 1e3
    if reason:
        pred.status, pred.reason = "rejected", reason
        return pred, None
    return pred, tensor


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a file's bytes for the audit trail; None when it cannot be read (the decode says why)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def array_sha256(image: np.ndarray) -> str:
    """sha256 of an in-memory image: its dtype and shape, then its bytes (C order)."""
    digest = hashlib.sha256(f"{image.dtype.str}{image.shape}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


#: the DICOM identifiers an audit trail and a DICOM result refer back to
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def dicom_uids(path: str | Path) -> dict[str, str] | None:
    """Study/Series/SOP Instance UIDs of a DICOM file (header only), None for other files."""
    from edgecxr.data.io import DICOM_SUFFIXES, _is_dicom_head

    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return None
    if path.suffix.lower() not in DICOM_SUFFIXES and not _is_dicom_head(head):
        return None
    from edgecxr.runtime.input_checks import _dicom_header

    ds = _dicom_header(path)
    if ds is None:
        return None
    uids = {k: str(getattr(ds, k, "") or "") for k in UID_KEYWORDS}
    return {k: v for k, v in uids.items() if v} or None
