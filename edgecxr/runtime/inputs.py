"""One input -> a preprocessed tensor, or the Prediction that says why it never reaches the model.

The decode half of `Classifier.predict`, kept apart from the model half so that it can run ahead of
the model (in worker threads) and so that every kind of input (a path; DICOM datasets, bytes
and arrays held in memory) goes through the same decoding rules, the same one preprocessing spec
and the same input checks, in one place.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.errors import ImageLoadError
from edgecxr.core.spec import PreprocessSpec, preprocess
from edgecxr.data.io import _is_dicom_head, load_image, load_image_bytes, open_regular
from edgecxr.data.limits import DEFAULT_LIMITS, DecodeLimits
from edgecxr.runtime.cxr_score import check as cxr_check
from edgecxr.runtime.input_checks import InputRules
from edgecxr.runtime.orientation import mode_of, shipped_gate
from edgecxr.runtime.prediction import Prediction


def source_of(item: Any, index: int) -> str | int:
    """What a Prediction calls its input: the path as given, else its index in the input list."""
    return str(item) if isinstance(item, (str, Path)) else index


def is_dataset(item: Any) -> bool:
    """A pydicom Dataset (checked by its class's module first: pydicom is imported only when it is one)."""
    if not type(item).__module__.startswith("pydicom"):
        return False
    from pydicom.dataset import Dataset

    return isinstance(item, Dataset)


def kind_of(item: Any) -> str:
    """"path", "bytes", "dataset" or "array": which decoding rules an input goes through."""
    if isinstance(item, (str, Path)):
        return "path"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return "bytes"
    if is_dataset(item):
        return "dataset"
    return "array"


def prepare(item: Any, index: int, spec: PreprocessSpec, rules: InputRules) -> tuple[Prediction, np.ndarray | None]:
    """Decode, preprocess and check one input: a path, a file's bytes, a pydicom Dataset or an array.

    Every kind goes through the same decoding rules (`edgecxr.data.io`: container checks, size
    limits, decoder warnings as errors; a Dataset is encoded to its Part 10 bytes and decoded like
    a file), the one preprocessing spec and the same input checks (the DICOM header rules apply to
    DICOM bytes and Datasets too). `input_sha256` is of the file's bytes, of the given bytes, of a
    Dataset's encoded Part 10 bytes (`data.dicom.encode_dataset`), or of an array's dtype, shape and
    pixels (`array_sha256`); `dicom` holds the UIDs of any DICOM input.

    Returns its Prediction (with `preprocess_ms`; with `error` when it cannot be read, or status
    "rejected" when the input checks refuse it) and the tensor for the model, or None when the
    input must not reach the model. Never raises for a bad input: a batch from the scanner always
    completes.
    """
    source = source_of(item, index)
    t0 = time.perf_counter()
    pred = Prediction(source)
    kind = kind_of(item)
    header = None  # a DICOM header for the input checks and the UIDs
    try:
        if kind == "path":
            if not str(item):  # Path("") would be ".", the current folder
                raise ImageLoadError("''", "an empty path is not an input")
            # file_sha256 and load_image both look (stat) before they read: a FIFO, a device or a
            # file past the size limit is never opened, hashed or sniffed (load_image says why)
            pred.input_sha256 = file_sha256(item, max_bytes=DEFAULT_LIMITS.max_file_bytes)
            image = load_image(item, (spec.height, spec.width))
            pred.dicom = dicom_uids(item)
        elif kind == "dataset":
            from edgecxr.data.dicom import encode_dataset

            header = item
            pred.dicom = uids_of(item)
            data = encode_dataset(item)
            pred.input_sha256 = hashlib.sha256(data).hexdigest()
            image = load_image_bytes(data, (spec.height, spec.width), name=f"input {index} (DICOM data set)")
        elif kind == "bytes":
            data = bytes(item)
            pred.input_sha256 = hashlib.sha256(data).hexdigest()
            if _is_dicom_head(data[:132]):
                from edgecxr.runtime.input_checks import dicom_header_bytes

                header = dicom_header_bytes(data)
                pred.dicom = uids_of(header)
            image = load_image_bytes(data, (spec.height, spec.width), name=f"input {index} (bytes)")
        else:
            image = as_image_array(item, index)
            pred.input_sha256 = array_sha256(image)
        tensor = preprocess(image, spec)  # first: a bad array is an error, not a rejection
    except ImageLoadError as exc:
        pred.error = exc.reason
        return pred, None
    except ValueError as exc:  # preprocess: wrong dtype / range / shape of a given array or DICOM
        pred.error = str(exc)
        return pred, None
    if kind == "path":
        reason = rules.check_file(item)
    elif kind == "bytes":
        reason = rules.check_bytes(bytes(item)) if header is None else rules.check_header(header)
    elif kind == "dataset":
        reason = rules.check_header(header)
    else:
        reason = None
    if not reason:  # the pixel rules and the orientation gate (which may turn the film upright)
        tensor, reason = gate_and_check(image, tensor, spec, rules, pred)
    pred.preprocess_ms = (time.perf_counter() - t0) * 1e3
    if reason:
        pred.status, pred.reason = "rejected", reason
        return pred, None
    return pred, tensor


def as_image_array(item: Any, index: int, limits: DecodeLimits | None = None) -> np.ndarray:
    """An in-memory image as the decoder would have returned it: HxW or HxWxC (C 1/3/4), within `limits`.

    The dtype is left to `preprocess` (uint8, uint16 or float in [0, 1]; anything else is its
    one-line error). The side and pixel limits of a decoded file apply, so an array is not a way
    around them.

    Raises:
        ImageLoadError: not an image-shaped array, or outside the limits.
    """
    name = f"input {index} (array)"
    try:
        image = np.asarray(item)
    except Exception as exc:  # noqa: BLE001 - a ragged list, an object numpy cannot hold
        raise ImageLoadError(name, f"not an image array ({type(item).__name__})") from exc
    if image.dtype == object:
        raise ImageLoadError(name, f"not an image: a {type(item).__name__} (expected a path, bytes, a pydicom "
                                   "Dataset or a numeric HxW / HxWxC array)")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise ImageLoadError(name, f"expected an HxW or HxWxC (C = 1, 3 or 4) array, got shape {image.shape}")
    limits = DEFAULT_LIMITS if limits is None else limits
    h, w = image.shape[:2]
    if min(h, w) < limits.min_side or max(h, w) > limits.max_side or h * w > limits.max_pixels:
        raise ImageLoadError(name, f"array of {w}x{h} px is outside the decode limits ({limits.min_side}.."
                                   f"{limits.max_side} px a side, {limits.max_pixels / 1e6:.1f} megapixels)")
    return image


def file_sha256(path: str | Path, max_bytes: int | None = None) -> str | None:
    """sha256 of a file's bytes for the audit trail; None when it cannot be read (the decode says why).

    Looks before it reads: only a regular file of at most `max_bytes` (None: no bound, for model
    files) is opened, by `os.stat` first and again by fstat on what was opened without blocking
    (`data.io.open_regular`), so a FIFO, a device or a sparse 64 GiB file is None, never a blocking
    or endless read; a file that grew past `max_bytes` since its stat is None too.
    """
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or (max_bytes is not None and info.st_size > max_bytes):
        return None
    digest = hashlib.sha256()
    total = 0
    try:
        with open_regular(path, max_bytes=max_bytes) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                total += len(block)
                if max_bytes is not None and total > max_bytes:
                    return None
                digest.update(block)
    except (OSError, ImageLoadError):
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
    from edgecxr.data.io import DICOM_SUFFIXES

    path = Path(path)
    try:
        with open_regular(path) as fh:
            head = fh.read(132)
    except (OSError, ImageLoadError):
        return None
    if path.suffix.lower() not in DICOM_SUFFIXES and not _is_dicom_head(head):
        return None
    from edgecxr.runtime.input_checks import _dicom_header

    return uids_of(_dicom_header(path))


def uids_of(ds: Any) -> dict[str, str] | None:
    """The Study/Series/SOP Instance UIDs a DICOM header holds (None: no header or none of them)."""
    if ds is None:
        return None
    uids = {}
    for key in UID_KEYWORDS:
        try:
            value = str(getattr(ds, key, "") or "").strip()
        except Exception:  # noqa: BLE001 - a malformed value is no UID
            value = ""
        if value:
            uids[key] = value
    return uids or None


def gate_and_check(image: np.ndarray, tensor: np.ndarray, spec: Any, rules: Any, pred: Any) -> tuple[np.ndarray, str | None]:
    """The pixel checks, the orientation gate and the CXR score for one decoded input, in `prepare`'s order.

    Returns the tensor for the model (the upright film's, when the gate turned it) and the reason
    the input is rejected (None: it goes to the model). `pred.orientation` records what the gate
    said. Order, so that each refusal names what is wrong: with "reject", the pixel rules first
    (noise, blank, color... are not films at all, whatever the gate would say of them), then the
    gate; with "fix", the gate first, then the pixel rules on the turned film (so a negative the
    gate turned positive is not refused as a negative). Last, on the film as it would be
    classified, the CXR score (runtime/cxr_score.py: is this like a frontal chest film at all?),
    from the gate's logits of that same film when the gate has run on it.
    """
    mode = mode_of(rules)
    if mode == "off":
        return tensor, rules.check_pixels(image) or cxr_check(image, rules)
    if mode == "reject":
        reason = rules.check_pixels(image)
        if reason:
            return tensor, reason
        verdict = shipped_gate().check(image)
        pred.orientation = verdict.transform.name if not verdict.upright else "upright"
        return tensor, cxr_check(image, rules, verdict.logits) if verdict.upright else verdict.reason
    verdict = shipped_gate().check(image)
    if verdict.upright:
        pred.orientation = "upright"
        return tensor, rules.check_pixels(image) or cxr_check(image, rules, verdict.logits)
    image = verdict.transform.undo(image)
    pred.orientation = (f"{verdict.transform.name}: {verdict.transform.reason}, p(upright) {verdict.p_upright:.2f}; "
                        "turned upright before classification")
    return preprocess(image, spec), rules.check_pixels(image) or cxr_check(image, rules)  # scored as turned upright
