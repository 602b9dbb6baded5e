"""The stored FP32 reference: probabilities kept with a bundle that ships without its FP32 model,
so the gate can still compare every artifact against the reference on the same images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.bundle import STORED_REFERENCE, Bundle
from edgecxr.core.errors import BackendUnavailableError, BundleError
from edgecxr.core.fileutil import read_json, sha256_file, write_json
from edgecxr.data.manifest import Record

log = logging.getLogger(__name__)




STORED_KEY = "stored_fp32"


def _pick_reference(bundle: Bundle, reference: str, registry: Mapping[str, Any]) -> str:
    if reference not in ("auto", "keras", "onnx_fp32", STORED_KEY):
        raise BundleError(f"reference must be 'auto', 'keras', 'onnx_fp32' or '{STORED_KEY}', got {reference!r}")
    keras_ok = registry["keras"].availability() is None and bundle.artifact("keras", must_exist=False) is not None
    if reference == "keras" or (reference == "auto" and keras_ok):
        if not keras_ok:
            bundle.artifact("keras")  # BundleError when the file is missing
            raise BackendUnavailableError("the Keras reference needs TensorFlow (pip install 'edgecxr[train]')")
        return "keras"
    stored = (bundle.dir / STORED_REFERENCE).is_file()
    # A stored reference is the trained model's own output: it beats an FP32 ONNX that was only
    # widened from the FP16 model (stages/export/fp32.py), and stands in where there is no FP32.
    derived = "fp32_from_fp16" in (bundle.meta.get("export") or {})
    no_fp32 = bundle.artifact("onnx_fp32", must_exist=False) is None
    if reference == STORED_KEY or (reference == "auto" and stored and (no_fp32 or derived)):
        if not stored:
            raise BundleError(f"{bundle.dir}: no stored reference ({STORED_REFERENCE})")
        return STORED_KEY
    bundle.artifact("onnx_fp32")  # BundleError naming `edgecxr export` when missing
    return "onnx_fp32"


def store_reference(bundle: Bundle, records: Sequence[Record], probs: np.ndarray, source: str, split: str) -> Path:
    """Write the reference's probabilities on `records` keyed by image sha256 (the images' content)."""
    table = {}
    for rec, row in zip(records, probs, strict=True):
        table[rec.sha256 or sha256_file(rec.path)] = [round(float(v), 7) for v in row]
    doc = {"format": "edgecxr-reference-probs", "source": source, "split": split, "classes": bundle.classes,
           "preprocess": bundle.spec.id, "n": len(table), "probabilities": table}
    return write_json(bundle.dir / STORED_REFERENCE, doc)


def _stored_probs(bundle: Bundle, records: Sequence[Record]) -> np.ndarray:
    """The stored reference's probabilities for `records`, in order; every image must be covered."""
    path = bundle.dir / STORED_REFERENCE
    try:
        doc = read_json(path)
        table, classes = doc["probabilities"], doc["classes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: corrupt stored reference ({exc})") from None
    if classes != bundle.classes:
        raise BundleError(f"{path}: classes {classes} differ from the bundle's {bundle.classes}")
    rows = []
    for rec in records:
        key = rec.sha256 or sha256_file(rec.path)
        if key not in table:
            raise BundleError(f"{path}: no stored reference for {rec.relative_path} (it covers the "
                              f"{doc.get('split')!r} split it was stored for, {doc.get('n')} images)")
        rows.append(table[key])
    return np.asarray(rows, dtype=np.float32)
