"""The calibration set: images read in bounded chunks, and the manifest that records exactly which
images (by sha256) calibrated an INT8 model.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecxr.core.fileutil import atomic_write_bytes, recorded_path, write_json
from edgecxr.data.manifest import Record, checked_sha256, manifest_sha256, map_label

if TYPE_CHECKING:  # pragma: no cover

    pass
log = logging.getLogger(__name__)


#: Calibration images per collection pass (bounds the memory of the calibrators' stored activations).
DEFAULT_CHUNK_IMAGES = 32


#: where a bundle keeps the records of its calibrations (BUNDLE/calibration/), unless told otherwise
CALIBRATION_DIR = "calibration"


CALIBRATION_FORMAT = "edgecxr-calibration/1"


def _reader_base() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


def make_data_reader(x: np.ndarray, batch_size: int = 8, input_name: str = "image", progress: bool | str = True) -> Any:
    """An onnxruntime CalibrationDataReader over preprocessed images, with a tqdm progress bar.

    Supports `set_range` and `len` (in batches), which quantize_static uses to collect activations
    a chunk at a time (CalibStridedMinMax) so memory stays bounded for large models.
    """
    from tqdm.auto import tqdm

    class ArrayDataReader(_reader_base()):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
            self.start, self.end, self.pos = 0, len(self.batches), 0
            desc = progress if isinstance(progress, str) else "calibrating"
            self.bar = tqdm(total=len(x), desc=desc, unit="img", disable=None if progress else True, leave=False)

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end, self.pos = start_index, min(end_index, len(self.batches)), start_index

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= self.end:
                return None
            batch = self.batches[self.pos]
            self.pos += 1
            self.bar.update(len(batch))
            return {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

        def rewind(self) -> None:
            self.start, self.end, self.pos = 0, len(self.batches), 0

        def close(self) -> None:
            self.bar.close()

    return ArrayDataReader()


def equal_batch_size(n_images: int, batch_size: int) -> int:
    """Largest divisor of n_images that is <= batch_size (equal batches for histogram calibration)."""
    return max(d for d in range(1, max(1, min(batch_size, n_images)) + 1) if n_images % d == 0)


def _stride(n_batches: int, max_batches: int) -> int | None:
    """Largest divisor of n_batches <= max_batches (quantize_static needs an exact division)."""
    if n_batches <= max_batches:
        return None
    return max(d for d in range(1, max_batches + 1) if n_batches % d == 0)


def record_stem(model: str, fp32_sha256: str, method: str) -> str:
    """'<model>-<fp32 sha8>-<method>': the identity part of a calibration record's name.

    Records are named by what they describe (the FP32 model's content, the method, then the
    calibration set's own hash), never by the bundle's folder name: two bundles both called
    `coronet`, calibrated into one --calib-manifest-out folder, no longer overwrite each other's
    record, and a rejected calibration with another method does not rewrite the published one's.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._-") or "model"
    return f"{name}-{fp32_sha256[:8]}-{re.sub(r'[^A-Za-z0-9]+', '_', method)}"


def write_calibration_manifest(
    records: Sequence[Record],
    classes: Sequence[str],
    *,
    source_manifest: str | Path,
    split: str,
    header: dict[str, Any],
    out: str | Path,
    stem: str,
) -> tuple[Path, Path, str]:
    """Write the calibration set as CSV + JSON sidecar; returns (csv, json, csv sha256).

    The CSV lists relative paths (relative to the source manifest's folder, as in the source
    manifest), the sha256 of every image file (checked against the source manifest's), labels,
    the mapped class and the split. With `out` a directory (the calibrate stage's default is
    BUNDLE/calibration/), the file is named `<stem>-<split>-<sha8>.csv` (`record_stem`: model,
    FP32 sha8, method; then the CSV's own sha8), so a later calibration never overwrites the list
    an earlier INT8 model was made from; `out` ending in .csv is the file itself.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["relative_path", "sha256", "label", "class", "split", "patient_id"])
    for rec in records:
        writer.writerow([rec.relative_path, checked_sha256(rec), rec.label, map_label(rec.label, classes), rec.split, rec.patient_id])
    data = buf.getvalue().encode("utf-8")
    sha = hashlib.sha256(data).hexdigest()
    target = Path(out)
    csv_path = target if target.suffix.lower() == ".csv" else target / f"{stem}-{split}-{sha[:8]}.csv"
    atomic_write_bytes(csv_path, data)
    sidecar = {
        "format": CALIBRATION_FORMAT,
        "csv": csv_path.name,
        "csv_sha256": sha,
        "source_manifest": recorded_path(source_manifest),
        "source_manifest_sha256": manifest_sha256(source_manifest),
        "data_root": recorded_path(Path(source_manifest).resolve().parent),
        "split": split,
        "images": len(records),
        **header,
    }
    json_path = write_json(csv_path.with_suffix(".json"), sidecar)
    return csv_path, json_path, sha


def per_class_counts(records: Sequence[Record], classes: Sequence[str]) -> dict[str, int]:
    counts = {c: 0 for c in classes}
    for rec in records:
        counts[map_label(rec.label, classes)] += 1
    return counts


def with_views(x: np.ndarray, views: int, scale: float, offset: float, seed: int = 0) -> np.ndarray:
    """The calibration images followed by `views` augmented views of each (the training policy `cxr`).

    More activation statistics from the same patient-disjoint images: rotations, zooms, shifts and
    brightness/contrast changes a scanner produces, without touching another split.
    """
    if views <= 0:
        return x
    from edgecxr.stages.train.augment import POLICIES, augment_image

    rng = np.random.default_rng(seed)
    extra = [augment_image(img, rng, POLICIES["cxr"], scale, offset) for _ in range(views) for img in x]
    return np.concatenate([x, np.stack(extra).astype(np.float32)])
