"""Image decoding: PNG/JPEG (8/16-bit, gray/RGB/RGBA/palette) and DICOM, with typed errors.

`load_image` returns a 2-D grayscale array: uint8 or uint16 for PNG/JPEG, float32 in [0, 1] for
DICOM (after modality/VOI LUT, see `edgecxr.data.dicom`). Anything that cannot be decoded raises
`ImageLoadError(path, reason)` with a one-line reason; batch callers (`Classifier.predict`) catch it
per file and report it in place of the result, so one bad file never stops the others.

Why the container is checked before decoding:
  * OpenCV allocates whatever the header asks for, so a 60000x60000 PNG of a few KB (a
    decompression bomb) would take gigabytes. The PNG IHDR / JPEG SOF dimensions are read first and
    anything outside MIN_SIDE..MAX_SIDE is refused without decoding.
  * libjpeg fills a truncated JPEG with gray and reports success (only a warning on stderr), which
    would send half an X-ray to the model. A JPEG whose entropy-coded data is not followed by an
    end-of-image marker, or a PNG that ends before its IEND chunk, is rejected as truncated.

Raster decoding uses `IMREAD_ANYDEPTH | IMREAD_ANYCOLOR` rather than `IMREAD_UNCHANGED`: it keeps
16-bit samples, expands palette and 1/2/4-bit PNGs, drops alpha (as the curated set's Pillow "L"
conversion did) and, unlike IMREAD_UNCHANGED, applies the EXIF orientation, which the curated set
also applied. Color is reduced to BT.601 luma by `edgecxr.preprocess.to_gray`.

Reduced JPEG decoding (`min_size`): a scanner JPEG of 4280x3520 takes hundreds of milliseconds to
decode in full, only to be shrunk to 150 or 224 pixels. When the caller says how large the image
must stay, an 8-bit JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (DCT-domain scaling,
OpenCV's IMREAD_REDUCED_GRAYSCALE_*; the gray output is the JPEG's own BT.601 luma) as long as
both sides stay at least REDUCED_DECODE_MARGIN times the requested size, so the final INTER_AREA
resize still anti-aliases. The curated training images (short side 320 px) are never reduced,
so training and deployment see the same pipeline; docs/BENCHMARKS.md gives the measured effect.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from edgecxr.errors import DataError, ImageLoadError
from edgecxr.preprocess import to_gray

#: Largest accepted image side; bigger is a corrupt header, a decompression bomb or not a radiograph.
MAX_SIDE = 16384
#: Smallest accepted image side.
MIN_SIDE = 16
#: Reduced JPEG decoding keeps at least this multiple of the requested size on both sides.
REDUCED_DECODE_MARGIN = 2
_REDUCED_FLAGS = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4), (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
#: Suffixes `expand_inputs` picks up in folders (suffix-less files are taken when they are DICOM).
INPUT_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8"
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])
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


def load_image(path: str | Path, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one X-ray to a 2-D gray array (uint8/uint16, or float32 in [0, 1] for DICOM).

    `min_size` (height, width) is the size the image will be resized to (the model input); when
    given, large 8-bit JPEGs are decoded at a reduced scale that keeps at least
    REDUCED_DECODE_MARGIN times that size (see the module docstring). None decodes in full.

    The format is taken from the content, not the suffix (a PNG named .jpg or .dcm is fine); the
    'DICM' preamble, or a `.dcm` / `.dicom` suffix on a file that is not PNG/JPEG, selects the
    DICOM reader (which also reads old files without a preamble).

    Raises:
        ImageLoadError: the file is missing, empty, truncated, corrupt, of an unsupported format,
            or its size is outside MIN_SIDE..MAX_SIDE.
    """
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, not an image")
    try:
        size = path.stat().st_size
        if size == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    is_raster = head.startswith(_PNG_SIGNATURE) or head.startswith(_JPEG_SOI)
    if not is_raster and (path.suffix.lower() in DICOM_SUFFIXES or _is_dicom_head(head)):
        from edgecxr.data.dicom import load_dicom

        image = load_dicom(path)
    else:
        image = _load_raster(path, head, min_size)
    _check_size(path, image)
    return image


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Expand files, folders and glob patterns into a list of image paths (the `infer` inputs).

    * a file is taken as given (whatever its suffix; decoding decides later);
    * a folder is searched recursively for INPUT_SUFFIXES (case-insensitive) and for suffix-less
      files with the DICOM preamble (PACS exports), skipping hidden files and DICOMDIR; sorted;
    * an item with `*`, `?` or `[` that is not an existing path is a glob pattern (`**` recurses);
      matching folders are expanded as above; sorted.
    Order follows `items`; a path reached twice is listed once.

    Raises:
        DataError: an item does not exist, a pattern matches nothing, or a folder has no images;
            a typo should stop the run, not silently classify fewer images.
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def add(paths: Iterable[Path]) -> None:
        for p in paths:
            key = Path(os.path.abspath(p))
            if key not in seen:
                seen.add(key)
                out.append(p)

    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_file():
            add([path])
        elif path.is_dir():
            found = _scan_folder(path)
            if not found:
                raise DataError(f"{path}: folder contains no PNG, JPEG or DICOM files")
            add(found)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            files: list[Path] = []
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    files.extend(_scan_folder(mp))
                elif mp.is_file():
                    files.append(mp)
            if not files:
                raise DataError(f"{text}: pattern matches no files")
            add(files)
        else:
            raise DataError(f"{text}: no such file or folder")
    return out


def _scan_folder(folder: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__MACOSX"]
        for name in names:
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            p = Path(root) / name
            suffix = p.suffix.lower()
            if suffix in INPUT_SUFFIXES or (suffix == "" and _file_is_dicom(p)):
                found.append(p)
    return sorted(found)


def _file_is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return _is_dicom_head(fh.read(132))
    except OSError:
        return False


def _is_dicom_head(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


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


def _load_raster(path: Path, head: bytes, min_size: tuple[int, int] | None = None) -> np.ndarray:
    if head.startswith(_PNG_SIGNATURE):
        kind = "PNG"
    elif head.startswith(_JPEG_SOI):
        kind = "JPEG"
    else:
        raise ImageLoadError(path, _unrecognised(head))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    precision = 8
    if kind == "PNG":
        width, height, icc_spans = _png_scan(path, data)
        if icc_spans:
            # OpenCV ignores ICC profiles, but libpng validates them and prints a warning for each
            # invalid one (many Pillow-written gray PNGs carry an RGB profile); dropping the
            # ancillary iCCP chunk changes no pixel and keeps batch output clean.
            data = _without_spans(data, icc_spans)
    else:
        width, height, precision = _jpeg_size(path, data)
    _check_dims(path, width, height, kind)
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    if kind == "JPEG" and precision == 8:
        factor = reduced_decode_factor(width, height, min_size)
        flags = dict(_REDUCED_FLAGS).get(factor, flags)
    with _quiet_opencv():
        try:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
        except cv2.error as exc:
            raise ImageLoadError(path, f"corrupt {kind} data ({_first_line(str(exc))})") from exc
    if image is None:
        if precision != 8:
            raise ImageLoadError(path, f"{precision}-bit JPEG is not supported by the installed OpenCV decoder")
        raise ImageLoadError(path, f"corrupt {kind} data (the decoder could not read it)")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageLoadError(path, f"unsupported pixel type {image.dtype}")
    if image.ndim == 3:
        if image.shape[2] not in (3, 4):
            raise ImageLoadError(path, f"unsupported channel count {image.shape[2]}")
        # OpenCV decodes color as BGR(A); to_gray expects RGB order (a view, no copy).
        image = image[:, :, 2::-1]
    return np.ascontiguousarray(to_gray(image))


def _unrecognised(head: bytes) -> str:
    for magic, name in _OTHER_FORMATS:
        if head.startswith(magic):
            return f"{name} file; only PNG, JPEG and DICOM are supported"
    if head[:64].strip() and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        return "text file, not a PNG, JPEG or DICOM image"
    return "not a PNG, JPEG or DICOM file (unrecognised header)"


def _png_scan(path: Path, data: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """Walk the PNG chunk list: IHDR size, at least one IDAT, and an IEND before the file ends.

    Returns (width, height, byte spans of iCCP chunks).
    """
    n = len(data)
    pos = len(_PNG_SIGNATURE)
    width = height = None
    has_idat = False
    icc: list[tuple[int, int]] = []
    while True:
        if pos + 8 > n:
            raise ImageLoadError(path, "truncated PNG (file ends before the IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        if length > 0x7FFFFFFF or not ctype.isalpha():
            raise ImageLoadError(path, f"corrupt PNG (invalid chunk header at byte {pos})")
        end = pos + 12 + length
        if width is None:
            if ctype != b"IHDR" or length != 13:
                raise ImageLoadError(path, "corrupt PNG (first chunk is not IHDR)")
            if end > n:
                raise ImageLoadError(path, "truncated PNG (file ends inside the IHDR chunk)")
            width = int.from_bytes(data[pos + 8 : pos + 12], "big")
            height = int.from_bytes(data[pos + 12 : pos + 16], "big")
        elif ctype == b"IDAT":
            has_idat = True
        elif ctype == b"IEND":
            break
        elif ctype == b"iCCP":
            icc.append((pos, end))
        if end > n:
            raise ImageLoadError(path, f"truncated PNG (file ends inside the {ctype.decode('ascii')} chunk)")
        pos = end
    if not has_idat:
        raise ImageLoadError(path, "corrupt PNG (no IDAT image data)")
    return width, height, icc


def _without_spans(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    parts, start = [], 0
    for a, b in spans:
        parts.append(data[start:a])
        start = b
    parts.append(data[start:])
    return b"".join(parts)


def _jpeg_size(path: Path, data: bytes) -> tuple[int, int, int]:
    """Walk the JPEG marker segments up to the first SOS; require an EOI marker after it.

    Returns (width, height, sample precision in bits).
    """
    n = len(data)
    pos = 2
    size = None
    precision = 8
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
        if marker in _JPEG_SOF and size is None:
            if length < 8:
                raise ImageLoadError(path, "corrupt JPEG (short frame header)")
            precision = data[pos + 4]
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        pos = end
    if size is None:
        raise ImageLoadError(path, "corrupt JPEG (no frame header before the image data)")
    # Entropy-coded data byte-stuffs 0xFF as FF 00, so FF D9 after the first SOS is the EOI.
    # Bytes after the EOI (some cameras append data) are allowed.
    if data.rfind(b"\xff\xd9", end) < 0:
        raise ImageLoadError(path, "truncated JPEG (no end-of-image marker; the file was cut off)")
    return size[0], size[1], precision


def _check_dims(path: Path, width: int, height: int, kind: str) -> None:
    if width == 0 or height == 0:
        raise ImageLoadError(path, f"corrupt {kind} header (size {width}x{height})")
    if max(width, height) > MAX_SIDE:
        raise ImageLoadError(
            path, f"image too large ({width}x{height} px in the {kind} header; at most {MAX_SIDE} px per side)"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageLoadError(path, f"image too small ({width}x{height} px; at least {MIN_SIDE} px per side)")


def _check_size(path: Path, image: np.ndarray) -> None:
    if image.ndim != 2:
        raise ImageLoadError(path, f"decoded to unexpected shape {image.shape}")
    h, w = image.shape
    if min(h, w) < MIN_SIDE:
        raise ImageLoadError(path, f"image too small ({w}x{h} px; at least {MIN_SIDE} px per side)")
    if max(h, w) > MAX_SIDE:
        raise ImageLoadError(path, f"image too large ({w}x{h} px; at most {MAX_SIDE} px per side)")


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log for one decode (the error is reported as ImageLoadError instead).

    Warnings that libpng/libjpeg print through their own handlers bypass OpenCV's log level and
    may still reach stderr.
    """
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:  # pragma: no cover - very old OpenCV
        yield
        return
    previous = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(previous)


def _first_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.strip().split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
