"""Decoding PNG/JPEG files safely: container checks before any pixel is decoded, decoder warnings
treated as errors, reduced-resolution JPEG decoding, OpenCV kept quiet.

Before decoding (cheap, from the bytes alone):
  * PNG: every chunk's CRC (zlib.crc32), IHDR first and valid (bit depth / color type), at least one
    IDAT, an IEND before the file ends. A CRC mismatch means the file was damaged after it was
    written; libpng would only warn about it in ancillary chunks.
  * JPEG: the marker segments up to the first scan, a frame header (SOF), and an end-of-image
    marker after the scan (libjpeg pads a cut-off JPEG with gray and reports success).
  * The header's size, samples and bit depth against `DecodeLimits` (edgecxr.data.limits): too
    many pixels, too many decoded bytes, or too many decoded bytes per file byte (a bomb).
While decoding: what libjpeg/libpng print is captured (edgecxr.data.decoder_log); a warning that
means the pixels are not what was encoded (half a JPEG with an end marker appended, garbage in the
scan, IDAT data that does not fit the image) is an ImageLoadError, not a gray half-image.

What cannot be caught: JPEG has no checksum. Bytes overwritten inside the entropy-coded data
make libjpeg warn when a marker appears among them (then always, in the cases tried) or when the
Huffman decoder ends out of step with the end marker; otherwise they decode silently to wrong
pixels. Of 40 random 64-byte overwrites without any 0xFF byte, 24 were caught and 16 were not.
"""

from __future__ import annotations

import contextlib
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecxr.core.errors import ImageLoadError
from edgecxr.core.spec import to_gray
from edgecxr.data.decoder_log import judged_call
from edgecxr.data.limits import DEFAULT_LIMITS, DecodeLimits, check_header

#: Largest accepted image side by default (DecodeLimits.max_side); bigger is a corrupt header, a
#: decompression bomb or not a radiograph.
MAX_SIDE = DEFAULT_LIMITS.max_side


#: Smallest accepted image side by default (DecodeLimits.min_side).
MIN_SIDE = DEFAULT_LIMITS.min_side


#: Reduced JPEG decoding keeps at least this multiple of the requested size on both sides.
REDUCED_DECODE_MARGIN = 2


_REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4), (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


_JPEG_SOI = b"\xff\xd8"


# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


# Markers without a length field.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])


def reduced_decode_factor(width: int, height: int, min_size: tuple[int, int] | None) -> int:
    """Largest libjpeg scale-down (8, 4, 2) that keeps REDUCED_DECODE_MARGIN x `min_size`; 1 for none.

    Orientation-independent (EXIF may swap the sides): the short side must cover the long target.
    """
    if not min_size:
        return 1
    need = REDUCED_DECODE_MARGIN * max(min_size)
    for factor, _flag in _REDUCED_FLAGS:
        if min(width, height) // factor >= need:
            return factor
    return 1


@dataclass(frozen=True)
class _Header:
    """What a PNG IHDR / JPEG SOF says, enough to size the decoder's output before decoding."""

    width: int
    height: int
    samples: int  # samples per pixel of OpenCV's output (palette -> 3)
    bytes_per_sample: int
    precision: int = 8  # JPEG sample precision in bits
    drop: tuple[tuple[int, int], ...] = ()  # byte spans to remove before decoding (PNG iCCP chunks)


def _load_raster(
    path: Path, head: bytes, min_size: tuple[int, int] | None = None, limits: DecodeLimits = DEFAULT_LIMITS,
    data: bytes | None = None,
) -> np.ndarray:
    """Decode a PNG/JPEG file, or its bytes when `data` is given (then `path` only names it in errors)."""
    if head.startswith(_PNG_SIGNATURE):
        kind = "PNG"
    elif head.startswith(_JPEG_SOI):
        kind = "JPEG"
    else:
        raise ImageLoadError(path, _unrecognised(head))
    if data is None:
        data = _read(path, limits)
    header = _png_header(path, data) if kind == "PNG" else _jpeg_header(path, data)
    check_header(path, kind, header.width, header.height, header.samples, header.bytes_per_sample, len(data), limits)
    if header.drop:
        # OpenCV ignores ICC profiles, but libpng validates them and prints a warning for each
        # invalid one (many Pillow-written gray PNGs carry an RGB profile); dropping the
        # ancillary iCCP chunk changes no pixel and keeps batch output clean.
        data = _without_spans(data, header.drop)
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    if kind == "JPEG" and header.precision == 8:
        factor = reduced_decode_factor(header.width, header.height, min_size)
        flags = dict(_REDUCED_FLAGS).get(factor, flags)
    image = _decode(path, data, flags, kind)
    if image is None:
        if header.precision != 8:
            raise ImageLoadError(path, f"{header.precision}-bit JPEG is not supported by the installed OpenCV decoder")
        raise ImageLoadError(path, f"corrupt {kind} data (the decoder could not read it)")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageLoadError(path, f"unsupported pixel type {image.dtype}")
    if image.ndim == 3:
        if image.shape[2] not in (3, 4):
            raise ImageLoadError(path, f"unsupported channel count {image.shape[2]}")
        # OpenCV decodes color as BGR(A); to_gray expects RGB order (a view, no copy).
        image = image[:, :, 2::-1]
    return np.ascontiguousarray(to_gray(image))


def check_jpeg_frame(path: Path, data: bytes, width: int, height: int) -> None:
    """Check a JPEG stream held inside another file (a DICOM frame) the way a JPEG file is checked.

    The container scan, a frame size equal to the DICOM's Rows/Columns, and one decode by OpenCV
    whose libjpeg warnings are judged: pydicom's JPEG plugins decode half a JPEG without a word.
    The decode is at 1/8 scale for 8-bit (every coefficient is still entropy-decoded, which is
    where damage shows, but the inverse DCT is mostly skipped). A stream OpenCV cannot decode at
    all (lossless, 12-bit) is left to the DICOM plugin.

    Raises:
        ImageLoadError: the stream is truncated, corrupt, or of another size than the header says.
    """
    if not data.startswith(_JPEG_SOI):
        raise ImageLoadError(path, "corrupt JPEG frame in the DICOM pixel data (no start-of-image marker)")
    header = _jpeg_header(path, data)
    if (header.width, header.height) != (width, height):
        raise ImageLoadError(
            path, f"JPEG frame is {header.width}x{header.height} px but the DICOM header says {width}x{height}"
        )
    flags = cv2.IMREAD_REDUCED_GRAYSCALE_8 if header.precision == 8 else cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    _decode(path, data, flags, "DICOM JPEG frame")


def _decode(path: Path, data: bytes, flags: int, kind: str) -> np.ndarray | None:
    """cv2.imdecode with the decoder's warnings captured; a fatal one raises ImageLoadError."""

    def run() -> tuple[np.ndarray | None, str | None]:
        with _quiet_opencv():
            try:
                return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags), None
            except cv2.error as exc:
                return None, _first_line(str(exc))

    # alongside other threads' decodes; run again alone when a fatal line may be another's
    (image, failure), log = judged_call(run)
    reason = log.reason()
    if reason is not None:
        raise ImageLoadError(path, f"corrupt {kind} data ({reason})")
    if failure is not None:
        if "memory" in failure.lower() or "allocate" in failure.lower():
            raise MemoryError(failure)  # load_image reports it as "out of memory"
        raise ImageLoadError(path, f"corrupt {kind} data ({failure})")
    return image


def _read(path: Path, limits: DecodeLimits) -> bytes:
    """The whole file, but never more than max_file_bytes (it may have grown since it was stat'ed)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limits.max_file_bytes + 1)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if len(data) > limits.max_file_bytes:
        raise ImageLoadError(path, f"file too large (more than {limits.max_file_bytes} bytes)")
    return data


#: PNG color type -> (samples per pixel of OpenCV's output, allowed bit depths). Palette images
#: are expanded to RGB; gray+alpha and RGBA count their alpha (decoded, then dropped).
_PNG_COLOR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (3, (1, 2, 4, 8)), 4: (2, (8, 16)), 6: (4, (8, 16))}


def _png_header(path: Path, data: bytes) -> _Header:
    """Walk the PNG chunk list: valid IHDR first, every CRC right, an IDAT, and IEND before the end."""
    n = len(data)
    view = memoryview(data)
    pos = len(_PNG_SIGNATURE)
    ihdr: bytes | None = None
    has_idat = False
    icc: list[tuple[int, int]] = []
    while True:
        if pos + 8 > n:
            raise ImageLoadError(path, "truncated PNG (file ends before the IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        if length > 0x7FFFFFFF or not ctype.isalpha():
            raise ImageLoadError(path, f"corrupt PNG (invalid chunk header at byte {pos})")
        name = ctype.decode("ascii")
        end = pos + 12 + length
        if ihdr is None and (ctype != b"IHDR" or length != 13):
            raise ImageLoadError(path, "corrupt PNG (first chunk is not IHDR)")
        if end > n:
            raise ImageLoadError(path, f"truncated PNG (file ends inside the {name} chunk)")
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            raise ImageLoadError(path, f"corrupt PNG (CRC error in the {name} chunk at byte {pos})")
        if ihdr is None:
            ihdr = data[pos + 8 : pos + 21]
        elif ctype == b"IDAT":
            has_idat = True
        elif ctype == b"IEND":
            break
        elif ctype == b"iCCP":
            icc.append((pos, end))
        pos = end
    if not has_idat:
        raise ImageLoadError(path, "corrupt PNG (no IDAT image data)")
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, color, compression, filtering, interlace = ihdr[8:13]
    samples, depths = _PNG_COLOR_TYPES.get(color, (0, ()))
    if not samples:
        raise ImageLoadError(path, f"corrupt PNG header (color type {color})")
    if depth not in depths:
        raise ImageLoadError(path, f"corrupt PNG header (bit depth {depth} with color type {color})")
    if compression or filtering or interlace > 1:
        raise ImageLoadError(path, "corrupt PNG header (unknown compression, filter or interlace method)")
    return _Header(width, height, samples, 2 if depth == 16 else 1, drop=tuple(icc))


def _without_spans(data: bytes, spans: tuple[tuple[int, int], ...]) -> bytes:
    parts, start = [], 0
    for a, b in spans:
        parts.append(data[start:a])
        start = b
    parts.append(data[start:])
    return b"".join(parts)


def _jpeg_header(path: Path, data: bytes) -> _Header:
    """Walk the JPEG marker segments up to the first SOS; require an EOI marker after it."""
    n = len(data)
    pos = 2
    header = None
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 2 > n:
            raise ImageLoadError(path, "truncated JPEG (file ends in the header)")
        if data[pos] != 0xFF:
            raise ImageLoadError(path, f"corrupt JPEG header (no marker at byte {pos})")
        marker = data[pos + 1]
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            raise ImageLoadError(path, "corrupt JPEG (end-of-image marker before any image data)")
        if pos + 4 > n:
            raise ImageLoadError(path, "truncated JPEG (file ends in the header)")
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            raise ImageLoadError(path, f"corrupt JPEG header (bad segment length at byte {pos})")
        end = pos + 2 + length
        if end > n:
            raise ImageLoadError(path, "truncated JPEG (file ends in the header)")
        if marker in _JPEG_SOF and header is None:
            if length < 8:
                raise ImageLoadError(path, "corrupt JPEG (short frame header)")
            precision = data[pos + 4]
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            components = data[pos + 9]
            if components not in (1, 3, 4):
                raise ImageLoadError(path, f"corrupt JPEG frame header ({components} components)")
            header = _Header(width, height, components, 2 if precision > 8 else 1, precision)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        pos = end
    if header is None:
        raise ImageLoadError(path, "corrupt JPEG (no frame header before the image data)")
    # Entropy-coded data byte-stuffs 0xFF as FF 00, so FF D9 after the first SOS is the EOI.
    # Bytes after the EOI (some cameras append data) are allowed.
    if data.rfind(b"\xff\xd9", end) < 0:
        raise ImageLoadError(path, "truncated JPEG (no end-of-image marker; the file was cut off)")
    return header


def _check_size(path: Path, image: np.ndarray, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """The decoded image is 2-D and within min_side..max_side (EXIF rotation may swap sides)."""
    if image.ndim != 2:
        raise ImageLoadError(path, f"decoded to unexpected shape {image.shape}")
    h, w = image.shape
    if min(h, w) < limits.min_side:
        raise ImageLoadError(path, f"image too small ({w}x{h} px; at least {limits.min_side} px per side)")
    if max(h, w) > limits.max_side:
        raise ImageLoadError(path, f"image too large ({w}x{h} px; at most {limits.max_side} px per side)")


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log for one decode (the error is reported as ImageLoadError instead).

    Warnings that libpng/libjpeg print through their own handlers bypass OpenCV's log level; those
    are captured and judged by `capture_decoder_messages`.
    """
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:  # pragma: no cover - very old OpenCV
        yield
        return
    # The level is process-wide and decodes overlap (pipelined infer): the first one in saves it,
    # the last one out restores it.
    with _QUIET_LOCK:
        if _QUIET["depth"] == 0:
            _QUIET["previous"] = logging.getLogLevel()
            logging.setLogLevel(logging.LOG_LEVEL_SILENT)
        _QUIET["depth"] += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET["depth"] -= 1
            if _QUIET["depth"] == 0:
                logging.setLogLevel(_QUIET["previous"])


_QUIET_LOCK = threading.Lock()
_QUIET: dict[str, Any] = {"depth": 0, "previous": None}


def _first_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.strip().split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# Formats we recognise only to name them in the error message.
_OTHER_FORMATS = (
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
)


def _unrecognised(head: bytes) -> str:
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return f"{name} file; only PNG, JPEG and DICOM are supported"
    if head[:64].strip() and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        return "text file, not a PNG, JPEG or DICOM image"
    return "not a PNG, JPEG or DICOM file (unrecognised header)"
