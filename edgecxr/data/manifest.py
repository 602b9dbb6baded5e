"""Dataset manifests: one CSV row per image, with label, patient-level split and provenance.

The format is that of ../shared/data/cxr/manifest.csv. Required columns: relative_path, label,
split, patient_id. Optional: patient_group (defaults to patient_id; splits are made on it),
sha256, and any provenance columns, which are kept in `Record.extra`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecxr.core.errors import DataError
from edgecxr.core.fileutil import sha256_file

CLASSES_4 = ("covid", "normal", "pneumonia_bacterial", "pneumonia_viral")
CLASSES_3 = ("covid", "pneumonia", "normal")
TO_3 = {"covid": "covid", "normal": "normal", "pneumonia_bacterial": "pneumonia", "pneumonia_viral": "pneumonia"}
SPLITS = ("train", "val", "calib", "test")
REQUIRED_COLUMNS = ("relative_path", "label", "split", "patient_id")


@dataclass(frozen=True)
class Record:
    """One image of a manifest. `path` is absolute (manifest folder / relative_path)."""

    path: Path
    relative_path: str
    label: str
    split: str
    patient_id: str
    patient_group: str
    sha256: str | None = None
    line: int = 0
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


def read_manifest(path: str | Path) -> list[Record]:
    """Parse a manifest CSV; structural problems raise DataError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    root = path.resolve().parent
    try:
        # utf-8-sig: spreadsheet programs save "CSV UTF-8" with a byte-order mark before the header
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                hint = ""
                if len(columns) == 1 and any(sep in columns[0] for sep in ";\t"):
                    hint = " (the file must be comma-separated)"
                raise DataError(f"{path}: missing required column(s) {missing}; has {columns}{hint}")
            records = []
            for i, row in enumerate(reader, start=2):
                rel = (row.get("relative_path") or "").strip()
                label = (row.get("label") or "").strip()
                if not rel or not label:
                    raise DataError(f"{path}:{i}: empty relative_path or label")
                pid = (row.get("patient_id") or "").strip()
                group = (row.get("patient_group") or "").strip() or pid
                sha = (row.get("sha256") or "").strip().lower() or None
                extra = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS + ("patient_group", "sha256") and k}
                records.append(
                    Record(root / rel, rel, label, (row.get("split") or "").strip(), pid, group, sha, i, extra)
                )
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 CSV file ({exc.reason})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    if not records:
        raise DataError(f"{path}: manifest has no rows")
    return records


def select(records: Iterable[Record], splits: str | Sequence[str] | None) -> list[Record]:
    """Rows of the given split(s); None means all. An unknown or empty split is an error."""
    records = list(records)
    if splits is None:
        return records
    wanted = (splits,) if isinstance(splits, str) else tuple(splits)
    out = [r for r in records if r.split in wanted]
    if not out:
        present = sorted({r.split for r in records})
        raise DataError(f"no images in split(s) {list(wanted)}; the manifest has splits {present}")
    return out


def map_label(label: str, classes: Sequence[str]) -> str:
    """Map a 4-class manifest label into `classes` (bacterial/viral -> pneumonia for 3 classes)."""
    if label in classes:
        return label
    if tuple(classes) == CLASSES_3 and label in TO_3:
        return TO_3[label]
    raise DataError(f"label {label!r} has no class among {list(classes)}")


def label_indices(records: Iterable[Record], classes: Sequence[str]) -> np.ndarray:
    """Integer class index per record (int64), after mapping labels into `classes`."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[map_label(r.label, classes)] for r in records], dtype=np.int64)


def manifest_sha256(path: str | Path) -> str:
    """sha256 of the manifest file: stored in bundles so a model can be traced to its data."""
    return sha256_file(path)
