"""DICOM radiographs to the float32 [0, 1] display image the classifiers were trained on.

The training images are display-ready PNG/JPEG exports (already windowed, bright bone). A DICOM
stores raw detector values, so it goes through the display chain of PS3.4 N.2 first:

  1. stored values -> Modality LUT (Modality LUT Sequence, or Rescale Slope/Intercept);
  2. -> VOI LUT (VOI LUT Sequence, preferred when present, else Window Center/Width with the
     VOI LUT Function); the first of several alternative windows is used;
  3. -> [0, 1]: divided by the VOI output range, i.e. the window's [y_min, y_max] as pydicom's
     `apply_windowing` defines it, or the [min, max] of the VOI LUT's entries (robust to LUTs
     whose descriptor declares more bits than the data use). Without any VOI, the image's own
     min/max after the Modality LUT is used (what most exporters do);
  4. MONOCHROME1 (and MONOCHROME2 with Presentation LUT Shape INVERSE) is inverted, so bone is
     bright as in the training images. For MONOCHROME1, INVERSE is the expected shape and means the
     same inversion; it is not applied twice.
Color images (RGB / YBR, e.g. secondary captures) are reduced to BT.601 luma and divided by the
bit depth's maximum; no LUTs apply to them.

Refused, with a one-line ImageLoadError: files without pixel data (reports, DICOMDIR, ...),
multi-frame images (which frame is the radiograph is not ours to guess; export one frame),
PALETTE COLOR, a RescaleSlope of 0 (every pixel the same value), and compressed transfer
syntaxes that no installed plugin decodes; that message names the transfer syntax and the
package to install.

Checked before any pixel is decoded, because pydicom allocates what the header says and its JPEG
plugins decode damaged data without complaint (half a JPEG frame decodes to a gray lower half):
  * Rows, Columns, SamplesPerPixel and BitsAllocated against `DecodeLimits` (edgecxr.data.limits):
    side, pixel count, decoded bytes and the decoded/file ratio;
  * native pixel data at least as long as Rows x Columns x SamplesPerPixel x frames x bits needs
    (pydicom's expected length, which knows YBR_FULL_422 and 1-bit packing);
  * an encapsulated JPEG frame (baseline, extended, lossless) goes through the JPEG file checks:
    an end-of-image marker, a frame size equal to Rows/Columns, and one libjpeg decode whose
    warnings are errors (`edgecxr.data.raster.check_jpeg_frame`);
  * a Deflated Explicit VR data set is inflated once in bounded steps first: pydicom inflates it
    in one call, so a few KB could otherwise become gigabytes.
While decoding, pydicom's warnings that mean wrong pixels (an RLE segment that decodes to more
bytes than the image has, more frames than the header says) are errors too.
"""

from __future__ import annotations

import io
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np

from edgecxr.core.errors import ImageLoadError, MissingDependencyError
from edgecxr.data.limits import DEFAULT_LIMITS, DecodeLimits, check_expansion, check_file_size, check_header

#: Packages that decode each family of compressed transfer syntaxes (beyond pydicom alone).
_JPEG_HINT = "pylibjpeg and pylibjpeg-libjpeg: pip install 'edgecxr[dicom]'"
_J2K_HINT = "pylibjpeg and pylibjpeg-openjpeg: pip install pylibjpeg pylibjpeg-openjpeg"
_HINTS = {
    "1.2.840.10008.1.2.4.50": _JPEG_HINT,
    "1.2.840.10008.1.2.4.51": _JPEG_HINT,
    "1.2.840.10008.1.2.4.57": _JPEG_HINT,
    "1.2.840.10008.1.2.4.70": _JPEG_HINT,
    "1.2.840.10008.1.2.4.80": _JPEG_HINT,
    "1.2.840.10008.1.2.4.81": _JPEG_HINT,
    "1.2.840.10008.1.2.4.90": _J2K_HINT,
    "1.2.840.10008.1.2.4.91": _J2K_HINT,
    "1.2.840.10008.1.2.4.201": _J2K_HINT,
    "1.2.840.10008.1.2.4.202": _J2K_HINT,
    "1.2.840.10008.1.2.4.203": _J2K_HINT,
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (pydicom alone should decode RLE; is numpy installed?)",
}

#: Transfer syntaxes whose frames are ISO 10918 JPEG streams (checked like JPEG files).
_JPEG_STREAMS = frozenset(
    ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"]
)

_DEFLATED = "1.2.840.10008.1.2.1.99"

_GRAY = ("MONOCHROME1", "MONOCHROME2")
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


def load_dicom(path: str | Path, limits: DecodeLimits | None = None, data: bytes | None = None) -> np.ndarray:
    """Read a single-frame DICOM radiograph as a 2-D float32 display image in [0, 1].

    See the module docstring for the LUT chain, what is checked and what is refused. `limits`
    defaults to edgecxr.data.limits.DEFAULT_LIMITS. With `data` (a Part 10 file's bytes held in
    memory) those bytes are decoded, through the same checks, and `path` only names them in errors.

    Raises:
        ImageLoadError: not a readable DICOM image, or one this function does not decode.
        MissingDependencyError: pydicom itself is not installed.
    """
    path = Path(path)
    limits = DEFAULT_LIMITS if limits is None else limits
    pydicom = _pydicom()
    try:
        file_bytes = path.stat().st_size if data is None else len(data)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    check_file_size(path, file_bytes, limits)
    _check_deflated(path, pydicom, file_bytes, limits, data)
    ds = _read(path, pydicom, data)

    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        what = f" ({getattr(sop, 'name', sop)})" if sop else ""
        raise ImageLoadError(path, f"DICOM file has no pixel data{what}; not an image")
    if "PixelData" not in ds:
        raise ImageLoadError(path, "DICOM float pixel data is not supported (expected integer pixels)")

    frames = _int(ds.get("NumberOfFrames", 1), 1)
    if frames > 1:
        raise ImageLoadError(
            path, f"multi-frame DICOM ({frames} frames) is not supported; export the radiograph as a single frame"
        )
    rows, cols = _int(ds.get("Rows", 0), 0), _int(ds.get("Columns", 0), 0)
    if rows <= 0 or cols <= 0:
        raise ImageLoadError(path, f"DICOM has no valid Rows/Columns ({rows}x{cols})")
    samples, bits = _int(ds.get("SamplesPerPixel", 1), 1), _int(ds.get("BitsAllocated", 0), 0)
    if samples not in (1, 3):
        raise ImageLoadError(path, f"DICOM with {samples} samples per pixel is not supported")
    if bits not in (1, 8, 16, 32):
        raise ImageLoadError(path, f"DICOM with {bits} bits allocated is not supported")
    check_header(path, "DICOM", cols, rows, samples, max(1, bits // 8), file_bytes, limits)

    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in _GRAY + _COLOR:
        raise ImageLoadError(path, f"photometric interpretation {photometric or '(missing)'} is not supported")

    tsyntax = _transfer_syntax(path, ds, pydicom)
    _check_pixel_data(path, ds, tsyntax, rows, cols, samples, bits)
    arr = _decode(path, ds, tsyntax)
    if arr.ndim != (2 if photometric in _GRAY else 3):
        raise ImageLoadError(path, f"DICOM pixel data decoded to unexpected shape {arr.shape}")

    if photometric in _COLOR:
        return _color_to_unit(path, ds, arr)
    return _gray_to_unit(path, ds, arr, photometric)


def _source(path: Path, data: bytes | None):
    """The file, or the bytes in memory, as an open binary file object."""
    return open(path, "rb") if data is None else io.BytesIO(data)


def encode_dataset(ds) -> bytes:
    """A `pydicom.Dataset` held in memory as the bytes of a DICOM Part 10 file (pydicom's `dcmwrite`).

    Why bytes: a Dataset from a network receiver or a caller's code then goes through exactly the
    checks and decoding a file gets (`load_dicom` with `data=`), and its audit sha256 is of those
    bytes. The caller's Dataset is not changed (a shallow copy gets the file meta). Without a
    Transfer Syntax UID in its file meta, the encoding it was read with is used, else Explicit VR
    Little Endian (native pixels; compressed pixel data needs its transfer syntax stated).

    Raises:
        ImageLoadError: pydicom cannot encode it (an invalid value, a missing SOP Instance UID...).
    """
    import copy

    pydicom = _pydicom()
    name = _dataset_name(ds)
    out = copy.copy(ds)
    meta = pydicom.dataset.FileMetaDataset()
    for elem in getattr(ds, "file_meta", None) or []:
        meta.add(copy.deepcopy(elem))
    out.file_meta = meta
    if "TransferSyntaxUID" not in meta:
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = getattr(ds, "original_encoding", (None, None))
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRBigEndian if little is False else ExplicitVRLittleEndian)
    buf = io.BytesIO()
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.dcmwrite(buf, out, enforce_file_format=True)
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageLoadError(name, f"DICOM data set cannot be encoded ({_one_line(exc)})") from exc
    return buf.getvalue()


def _dataset_name(ds) -> str:
    """What error messages call an in-memory Dataset: its SOP Instance UID where it has one."""
    try:
        uid = str(getattr(ds, "SOPInstanceUID", "") or "").strip()
    except Exception:  # noqa: BLE001 - a malformed value: the name is only for messages
        uid = ""
    return f"<dataset {uid}>" if uid else "<dataset>"


def _check_deflated(path: Path, pydicom, file_bytes: int, limits: DecodeLimits, data: bytes | None = None) -> None:
    """Inflate a Deflated Explicit VR data set once, in bounded steps, before pydicom inflates it whole."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings(), _source(path, data) as fh:
            warnings.simplefilter("ignore")
            pydicom.filereader.read_preamble(fh, False)
            meta = pydicom.filereader._read_file_meta_info(fh)
    except Exception:
        return  # no preamble or unreadable meta: not deflated, or `_read` reports it
    if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED:
        return
    group = meta.get("FileMetaInformationGroupLength")
    if group is None:
        raise ImageLoadError(path, "deflated DICOM without a file meta group length; its size cannot be bounded")
    cap = limits.max_decoded_bytes + (1 << 20)  # the pixels plus the other elements of the data set
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    try:
        with _source(path, data) as fh:
            fh.seek(132 + 12 + int(group))  # preamble + 'DICM', then (0002,0000) UL and the group
            while (chunk := fh.read(1 << 20)) and not inflater.eof:
                while chunk and total <= cap:
                    total += len(inflater.decompress(chunk, 1 << 22))
                    chunk = inflater.unconsumed_tail
                if total > cap:
                    raise ImageLoadError(
                        path, f"decompression bomb (deflated DICOM data set inflates to more than {cap >> 20} MiB)"
                    )
    except (OSError, zlib.error) as exc:
        raise ImageLoadError(path, f"corrupt deflated DICOM data set ({_one_line(exc)})") from exc
    if not inflater.eof:
        raise ImageLoadError(path, "truncated deflated DICOM data set (the deflate stream does not end)")
    check_expansion(path, "deflated DICOM data set", total, file_bytes, limits)


def _check_pixel_data(path: Path, ds, uid, rows: int, cols: int, samples: int, bits: int) -> None:
    """Native pixel data long enough for the header; an encapsulated JPEG frame checked like a JPEG."""
    data = ds.PixelData
    if not uid.is_encapsulated:
        try:
            from pydicom.pixels.utils import get_expected_length

            need = int(get_expected_length(ds, unit="bytes"))
        except Exception:  # attributes pydicom cannot size: the plain product
            need = (rows * cols * samples * bits + 7) // 8
        if len(data) < need:
            raise ImageLoadError(
                path,
                f"truncated DICOM pixel data ({len(data)} of the {need} bytes that {cols}x{rows} px x "
                f"{samples} sample(s) x {bits} bits need)",
            )
        return
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(data, number_of_frames=1))
    except Exception as exc:
        raise ImageLoadError(path, f"corrupt encapsulated DICOM pixel data ({_one_line(exc)})") from exc
    if str(uid) in _JPEG_STREAMS:
        from edgecxr.data.raster import check_jpeg_frame

        check_jpeg_frame(path, frame, cols, rows)


def _pydicom():
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401 - pixel handlers, imported here so the error is ours
    except ImportError as exc:  # pragma: no cover - pydicom is a core dependency
        raise MissingDependencyError("pydicom", None, "reading DICOM files") from exc
    return pydicom


def _read(path: Path, pydicom, data: bytes | None = None):
    from pydicom.errors import InvalidDicomError

    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path if data is None else io.BytesIO(data))
    except InvalidDicomError:
        pass  # no 'DICM' preamble: some old exports omit it; try the bare data set below
    except Exception as exc:
        raise ImageLoadError(path, f"unreadable DICOM file ({_one_line(exc)})") from exc
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path if data is None else io.BytesIO(data), force=True)
    except Exception as exc:
        raise ImageLoadError(path, "not a DICOM file (no 'DICM' preamble and not a readable data set)") from exc
    if "PixelData" not in ds or "Rows" not in ds:
        raise ImageLoadError(path, "not a DICOM image (no 'DICM' preamble and no pixel data)")
    return ds


def _transfer_syntax(path: Path, ds, pydicom):
    """The file's transfer syntax; checks up front that an installed plugin can decode it."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        # A bare data set (no file meta): pydicom knows how it parsed it; pixels are native.
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if not little:
            raise ImageLoadError(path, "DICOM without file meta information in big-endian encoding is not supported")
        uid = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = uid
    uid = UID(str(uid))
    name = uid.name if uid.is_transfer_syntax else "unknown transfer syntax"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise ImageLoadError(
            path, f"transfer syntax {name} ({uid}) cannot be decoded by pydicom; convert the file to an uncompressed or JPEG syntax"
        ) from None
    if not decoder.is_available:
        hint = _HINTS.get(str(uid)) or "; ".join(decoder.missing_dependencies) or "a pydicom pixel data plugin"
        raise ImageLoadError(path, f"compressed with {name} ({uid}); no installed decoder, needs {hint}")
    return uid


#: `warnings.catch_warnings` swaps process-wide state (filters, showwarning): two threads inside it
#: at once (the pipelined infer decodes in threads) would restore each other's state, and a fatal
#: decode warning could be recorded for the wrong file or not at all. So one thread at a time.
_WARNINGS_LOCK = threading.RLock()


#: pydicom decoder warnings that mean the pixels are not the encoded image (garbage in an RLE
#: segment decodes to more bytes than the image has; more frames than the header says).
_FATAL_DECODE_WARNINGS = (
    "non-conformant padding",
    "frames have been found",
    "sufficient to contain",
    "matches the expected number for uncompressed data",
)


def _decode(path: Path, ds, uid) -> np.ndarray:
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arr = np.asarray(ds.pixel_array)
    except MemoryError:
        raise  # load_image reports it as "out of memory"
    except Exception as exc:
        raise ImageLoadError(path, f"pixel data could not be decoded ({uid.name}: {_one_line(exc)})") from exc
    for warning in caught:
        if any(text in str(warning.message) for text in _FATAL_DECODE_WARNINGS):
            raise ImageLoadError(path, f"corrupt pixel data ({uid.name}: {_one_line(warning.message)})")
    return arr


def _gray_to_unit(path: Path, ds, arr: np.ndarray, photometric: str) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    _check_rescale_slope(path, ds)
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = apply_modality_lut(arr, ds)
            lo_hi = _voi_output_range(ds)
            if lo_hi is not None:
                values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    except (ValueError, KeyError, AttributeError, IndexError, TypeError, NotImplementedError) as exc:
        raise ImageLoadError(path, f"invalid Modality/VOI LUT attributes ({_one_line(exc)})") from exc
    values = np.asarray(values, dtype=np.float64)
    if lo_hi is None:
        lo, hi = float(values.min()), float(values.max())
    else:
        lo, hi = lo_hi
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ImageLoadError(path, "pixel values are not finite after the Modality/VOI LUT")
    if hi > lo:
        out = (values - lo) / (hi - lo)
    else:  # a constant image: nothing to show; 0 rather than a division by zero
        out = np.zeros_like(values)
    out = np.clip(out, 0.0, 1.0).astype(np.float32)
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        out = np.float32(1.0) - out
    return out


def _check_rescale_slope(path: Path, ds) -> None:
    """Refuse a RescaleSlope of 0 (or not a finite number): it maps every stored value to the
    intercept, so the "image" is one gray level whatever the detector saw (the Modality LUT of
    PS3.3 C.11.1; no detector writes 0). Without this it became a blank image and, with the input
    checks off, a confident label. A Modality LUT Sequence, where present, is used instead."""
    value = ds.get("RescaleSlope")
    if ds.get("ModalityLUTSequence") or value is None or str(value).strip() == "":
        return  # absent or empty: pydicom applies no rescale
    try:
        slope = float(value)
    except (TypeError, ValueError):
        raise ImageLoadError(path, f"invalid RescaleSlope {value!r} (not a number)") from None
    if not np.isfinite(slope):
        raise ImageLoadError(path, f"invalid RescaleSlope {value} (not a finite number)")
    if slope == 0:
        raise ImageLoadError(path, f"invalid RescaleSlope {value} (every pixel would be the intercept); "
                                   "not an image")


def _voi_output_range(ds) -> tuple[float, float] | None:
    """Output range of the VOI transform `apply_voi_lut` will apply, or None when there is none."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        from pydicom.pixels import apply_voi

        # Every output pixel is a LUT entry, so the entries' own range bounds the output; probing
        # each input the LUT maps reads the entries the way pydicom does (US or OW, endianness).
        entries, first_map, bits = (int(v) for v in seq[0].LUTDescriptor)
        entries = entries or 2**16
        probe = apply_voi(np.arange(first_map, first_map + entries, dtype=np.int64), ds, index=0)
        lo, hi = float(probe.min()), float(probe.max())
        return (lo, hi) if hi > lo else (0.0, float(2**bits - 1))
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    # Mirrors pydicom.pixels.apply_windowing: the window maps onto the Modality LUT's output range.
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        y_min, y_max = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return min(y_min, y_max), max(y_min, y_max)


def _color_to_unit(path: Path, ds, arr: np.ndarray) -> np.ndarray:
    from edgecxr.core.spec import to_gray

    if arr.shape[-1] != 3:
        raise ImageLoadError(path, f"color DICOM with {arr.shape[-1]} samples per pixel is not supported")
    bits = _int(ds.get("BitsStored", 8), 8)
    rgb = arr.astype(np.float32) / np.float32(2**bits - 1)
    return np.clip(to_gray(rgb), 0.0, 1.0).astype(np.float32)


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
