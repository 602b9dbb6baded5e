"""Which DICOM results are made for a prediction, what their files are called, and how they are written.

One row per kind of result in `RESULT_KINDS` (key, file suffix, builder): the SR today; a
Secondary Capture with a heat map is one more row (its builder gets the full source Dataset,
pixels included, through the same call). `infer --dicom-sr`, `edgecxr listen` and `edgecxr watch`
all write through `write_results`, so a result is named and written the same way everywhere:

* named by the source SOP Instance UID (`<uid>.sr.dcm`): one file per source instance, and a
  retry replaces it instead of adding a second one;
* written atomically and durably (temporary file, fsync, rename, fsync of the folder): a reader
  or a crash sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.core.fileutil import atomic_write_bytes
from edgecxr.dicom.attributes import is_uid  # noqa: F401  (spool, watch, node and sc take it from here)
from edgecxr.runtime.prediction import Prediction

#: builder(prediction, Classifier.audit, source Dataset, classes) -> the result Dataset
Builder = Callable[[Prediction, Mapping[str, Any], Any, Sequence[str]], Any]


def _build_sr(pred: Prediction, audit: Mapping[str, Any], source: Any, classes: Sequence[str]) -> Any:
    from edgecxr.dicom.sr import build_sr

    return build_sr(pred, audit, source, classes)


@dataclass(frozen=True)
class ResultKind:
    """One kind of DICOM result: its key (the CLI's name), its file suffix and its builder."""

    key: str
    suffix: str
    build: Builder
    description: str


#: every kind of DICOM result, by key
RESULT_KINDS: dict[str, ResultKind] = {
    "sr": ResultKind("sr", ".sr.dcm", _build_sr, "Comprehensive SR (TID 1500) with classes, probabilities, status"),
}

def result_path(folder: Path, source_uid: str, kind: str = "sr") -> Path:
    """Where the `kind` result of the source instance `source_uid` is written in `folder`."""
    if not is_uid(source_uid):
        raise ValueError(f"not a valid SOP Instance UID: {source_uid[:80]!r}")
    return Path(folder) / f"{source_uid}{RESULT_KINDS[kind].suffix}"


def encode(ds: Any) -> bytes:
    """A result Dataset as DICOM Part 10 bytes (preamble, file meta, data set)."""
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def durable_write(path: Path, data: bytes) -> Path:
    """`atomic_write_bytes` (temp file, fsync, rename), then fsync of the folder so the rename survives a crash."""
    atomic_write_bytes(path, data)
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_results(pred: Prediction, audit: Mapping[str, Any], source: Any, classes: Sequence[str],
                  kinds: Sequence[str] = ("sr",)) -> list[tuple[str, Any]]:
    """[(kind, Dataset)] of the results of one prediction for its DICOM source."""
    return [(kind, RESULT_KINDS[kind].build(pred, audit, source, classes)) for kind in kinds]


def write_results(pred: Prediction, audit: Mapping[str, Any], source: Any, classes: Sequence[str],
                  folder: Path, kinds: Sequence[str] = ("sr",)) -> list[tuple[Path, Any]]:
    """Build and durably write the results of one prediction; [(path, Dataset)] in `kinds` order.

    Raises:
        ValueError: the source cannot be referenced (no valid UIDs), or a builder refused it.
        OSError: the folder cannot be written.
    """
    out = []
    for kind, ds in build_results(pred, audit, source, classes, kinds):
        path = result_path(folder, str(source.SOPInstanceUID), kind)
        problem = replace_problem(path, str(ds.SOPClassUID))
        if problem:
            raise ValueError(f"{path}: {problem}")
        out.append((durable_write(path, encode(ds)), ds))
    return out


def replace_problem(path: Path, sop_class: str) -> str | None:
    """Why `path` must not be replaced by a result of SOP class `sop_class` (None: new, or an earlier result).

    A retry replaces the result it wrote before; anything else under that name (a link, a folder,
    someone's image) is left alone.
    """
    if not os.path.lexists(path):
        return None
    if path.is_symlink() or not path.is_file():
        return "is a link or not a regular file; refusing to replace it"
    header = read_header(path)
    if header is None or str(header.get("SOPClassUID", "")) != sop_class:
        return "exists and is not an earlier result of the same kind; refusing to replace it"
    return None


#: how much of a deflated data set is inflated to read its header (the pixels come last and are not needed)
DEFLATED_HEADER_BYTES = 4 << 20
_DEFLATED = "1.2.840.10008.1.2.1.99"


def read_header(path: Path, decoded: bool = True) -> Any:
    """A DICOM file's header (no pixels), or None when it is not a readable DICOM file.

    Only a regular file is opened (a FIFO or a device would block or never end). A deflated data
    set is inflated in bounded steps up to `DEFLATED_HEADER_BYTES`, never whole (pydicom inflates
    it whole even to read the header, and the size it inflates to is unknown until then), so its
    SOP Instance UID is read whether or not its pixels could be decoded. `decoded` is kept for
    the callers' clarity; it no longer changes anything.
    """
    del decoded
    try:
        import pydicom

        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as fh:
            head = fh.read(132)
            if head[128:132] != b"DICM" and Path(path).suffix.lower() not in (".dcm", ".dicom"):
                return None
            if head[128:132] == b"DICM":
                meta = pydicom.filereader._read_file_meta_info(fh)
                if str(meta.get("TransferSyntaxUID", "")) == _DEFLATED:
                    ds = _deflated_header(fh)
                    ds.file_meta = meta
                    return ds if "SOPInstanceUID" in ds else None
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return ds if "SOPInstanceUID" in ds else None  # force=True "reads" anything; a header has UIDs
    except Exception:  # noqa: BLE001 - unreadable: the caller reports the decode's reason
        return None


def _deflated_header(fh: Any) -> Any:
    """The elements before the pixel data of a deflated data set (`fh` just after the file meta), inflating
    at most `DEFLATED_HEADER_BYTES`."""
    import zlib

    import pydicom

    inflater, out = zlib.decompressobj(-zlib.MAX_WBITS), bytearray()
    while len(out) < DEFLATED_HEADER_BYTES and not inflater.eof:
        chunk = inflater.unconsumed_tail or fh.read(1 << 16)
        if not chunk:
            break
        out += inflater.decompress(chunk, DEFLATED_HEADER_BYTES - len(out))
    return pydicom.filereader.read_dataset(io.BytesIO(bytes(out)), is_implicit_VR=False, is_little_endian=True,
                                           stop_when=pydicom.filereader._at_pixel_data)


@dataclass
class Written:
    """What became of one prediction's DICOM results: the files written, or why there are none."""

    source: str | int
    paths: list[Path]
    skipped: str | None = None  # not a DICOM input: nothing to reference
    error: str | None = None  # a DICOM input whose results could not be written


def write_for_predictions(preds: Sequence[Prediction], audit: Mapping[str, Any], classes: Sequence[str],
                          folder: Path, kinds: Sequence[str] = ("sr",)) -> list[Written]:
    """Write the results of every DICOM input among `preds` (file paths) into `folder`; one Written each.

    A non-DICOM input (PNG/JPEG) gets none: a DICOM result must reference a DICOM instance
    (Study/Series/SOP Instance UIDs) and belong to its patient and study, which a PNG does not
    have. A DICOM input that failed or was rejected still gets its report (status and reason).
    """
    out = []
    for pred in preds:
        path = pred.path
        header = None if path is None else read_header(Path(path), decoded=pred.error is None)
        if header is None:
            out.append(Written(pred.source, [], skipped="not a DICOM input"))
            continue
        try:
            written = write_results(pred, audit, header, classes, folder, kinds)
        except (ValueError, OSError) as exc:
            out.append(Written(pred.source, [], error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - one input's results, never a traceback for the batch
            out.append(Written(pred.source, [], error=f"the report could not be made ({type(exc).__name__}: {exc})"))
        else:
            out.append(Written(pred.source, [p for p, _ in written]))
    return out
