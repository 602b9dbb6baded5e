"""Dataset manifests: one CSV row per image, with label, patient-level split and provenance.

The format is that of ../shared/data/cxr/manifest.csv. Required columns: relative_path, label,
split, patient_id. Optional: patient_group (defaults to patient_id; splits are made on it),
sha256, and any provenance columns, which are kept in `Record.extra`.

Two rules every reader of a manifest shares:

  * a relative_path stays inside the manifest's folder: every `edgecxr` command refuses an absolute
    path or one that climbs out with `..` (a manifest from elsewhere must not make it read
    /etc/passwd or another user's files) unless --allow-outside; `edgecxr data prepare --link`
    writes such paths on purpose. The Python API accepts them unless told otherwise
    (`read_manifest(allow_outside=False)`, `outside_allowed(False)`), because scripts and tests
    build manifests of absolute paths; the CLI sets the rule once per command;
  * a row's sha256, when it has one, is checked whenever the file is read (`checked_sha256`), by
    training, evaluation, the accuracy gate and calibration alike: a changed image is an error,
    never a silently different number.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import os
from collections.abc import Iterable, Iterator, Sequence
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


#: whether rows may leave the manifest's folder: the API's default; every CLI command sets it (`outside_allowed`)
_ALLOW_OUTSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("edgecxr_allow_outside", default=True)


@contextlib.contextmanager
def outside_allowed(allow: bool = True) -> Iterator[None]:
    """Within the `with`, manifests may (or, with False, may not) list files outside their folder.

    A context variable rather than an argument because the manifest is read deep inside every
    stage (training, evaluation, the gate, calibration); each CLI command sets it once, from its
    --allow-outside flag (default: refused).
    """
    token = _ALLOW_OUTSIDE.set(allow)
    try:
        yield
    finally:
        _ALLOW_OUTSIDE.reset(token)


def outside_is_allowed() -> bool:
    """The rule `outside_allowed` set for this context (the API's default: allowed)."""
    return _ALLOW_OUTSIDE.get()


def outside_reason(relative_path: str) -> str | None:
    """Why `relative_path` leaves the manifest's folder (absolute, or `..` climbing out), else None.

    Judged on the text, not the file system: a symlinked image folder inside the dataset is the
    dataset's business; a row that names a place outside it is the manifest's.
    """
    if os.path.isabs(relative_path):
        return "is an absolute path"
    parts = os.path.normpath(relative_path).split(os.sep)
    if parts and parts[0] == "..":
        return "climbs out of the manifest's folder ('..')"
    return None


def read_manifest(path: str | Path, *, allow_outside: bool | None = None) -> list[Record]:
    """Parse a manifest CSV; structural problems raise DataError naming the line.

    Args:
        path: the manifest CSV (relative paths resolve against its folder).
        allow_outside: accept rows outside the manifest's folder (absolute paths, `..`);
            None: as `outside_allowed` set it (the API's default: accepted; the CLI's: refused).
    """
    allow = outside_is_allowed() if allow_outside is None else allow_outside
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
                why = None if allow else outside_reason(rel)
                if why is not None:
                    raise DataError(f"{path}:{i}: relative_path {rel!r} {why}; refused unless allowed "
                                    "(`edgecxr data check` lists every such row)", params=("allow_outside",))
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


def sha256_mismatch(rec: Record, actual: str) -> str | None:
    """The message when a file's sha256 is not the one its manifest row declares, else None."""
    if rec.sha256 is None or rec.sha256 == actual:
        return None
    return f"sha256 mismatch: manifest {rec.sha256[:12]}..., file {actual[:12]}... (file changed?)"


def checked_sha256(rec: Record) -> str:
    """sha256 of a record's file; DataError when the row declares another one.

    The one check every stage applies to the files it reads (and `data check` reports): a
    manifest's sha256 column is a promise about the bytes, so a replaced or corrupted image stops
    the run instead of changing a metric or a calibration.
    """
    actual = sha256_file(rec.path)
    problem = sha256_mismatch(rec, actual)
    if problem is not None:
        where = f" (manifest line {rec.line})" if rec.line else ""
        raise DataError(f"{rec.path}: {problem}{where}; run `edgecxr data check` on the manifest")
    return actual


def manifest_sha256(path: str | Path) -> str:
    """sha256 of the manifest file: stored in bundles so a model can be traced to its data."""
    return sha256_file(path)
