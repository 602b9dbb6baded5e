"""Image decoding: PNG/JPEG (8/16-bit, gray/RGB/RGBA/palette) and DICOM, with typed errors.

`load_image` returns a 2-D grayscale array: uint8 or uint16 for PNG/JPEG, float32 in [0, 1] for
DICOM (after modality/VOI LUT, see `edgecxr.data.dicom`). Anything that cannot be decoded raises
`ImageLoadError(path, reason)` with a one-line reason; batch callers (`Classifier.predict`) catch it
per file and report it in place of the result, so one bad file never stops the others.

Nothing wrong gets through, as far as the format lets anyone tell: a file that is not the image
it claims to be is refused, not handed to the model (JPEG has no checksum; see edgecxr.data.raster
for the one kind of damage that can decode silently). In order, cheapest first:
  1. stat (`stat_input`), before the file is opened, hashed or sniffed: a regular file, not empty,
     at most DecodeLimits.max_file_bytes (a 64 GiB sparse file with a PNG header is refused
     without reading it; a FIFO, a device or a socket, also behind a symlink, is never opened);
     files are then opened with O_NONBLOCK and checked again with fstat (`open_regular`), so a
     FIFO swapped in after the stat cannot block the read either;
  2. the container, before any pixel is decoded (edgecxr.data.raster): PNG chunk CRCs, IHDR,
     IDAT, IEND; JPEG markers up to the scan and the end-of-image marker (libjpeg fills a
     truncated JPEG with gray and reports success); DICOM Rows/Columns/BitsAllocated and a pixel
     data element long enough for them (edgecxr.data.dicom);
  3. the header's size against `DecodeLimits` (edgecxr.data.limits): OpenCV and pydicom
     allocate whatever the header asks for, so side, pixel count, decoded bytes and the ratio of
     decoded to file bytes (a decompression bomb: 2 MB of zlib zeros claiming 16384x16384 RGBA
     16-bit) are refused from the header;
  4. the decode itself: libjpeg/libpng warnings (half a JPEG with an end marker appended,
     garbage in the scan, IDAT data that does not fit) are errors (edgecxr.data.decoder_log), as
     are a DICOM plugin's failures and a JPEG frame in a DICOM that libjpeg warns about;
  5. MemoryError anywhere in decoding becomes an ImageLoadError, so a batch goes on with the
     next file instead of dying with a traceback.

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

import glob
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edgecxr.core.errors import DataError, ImageLoadError
from edgecxr.data.limits import DEFAULT_LIMITS, DecodeLimits, check_file_size
from edgecxr.data.raster import _JPEG_SOI, _PNG_SIGNATURE, _check_size, _load_raster

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


DICOM_SUFFIXES = (".dcm", ".dicom")


#: Suffixes `expand_inputs` picks up in folders (suffix-less files are taken when they are DICOM).
INPUT_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES


def load_image(
    path: str | Path, min_size: tuple[int, int] | None = None, limits: DecodeLimits | None = None
) -> np.ndarray:
    """Decode one X-ray to a 2-D gray array (uint8/uint16, or float32 in [0, 1] for DICOM).

    `min_size` (height, width) is the size the image will be resized to (the model input); when
    given, large 8-bit JPEGs are decoded at a reduced scale that keeps at least
    REDUCED_DECODE_MARGIN times that size (see the module docstring). None decodes in full.

    The format is taken from the content, not the suffix (a PNG named .jpg or .dcm is fine); the
    'DICM' preamble, or a `.dcm` / `.dicom` suffix on a file that is not PNG/JPEG, selects the
    DICOM reader (which also reads old files without a preamble).

    `limits` bounds what is decoded at all (file size, pixels, decoded bytes, bomb ratio); None
    uses DEFAULT_LIMITS (see edgecxr.data.limits for the values and why).

    Raises:
        ImageLoadError: the file is missing, empty, too large, truncated, corrupt (including
            decoder warnings), of an unsupported format, outside the limits, or decoding ran out
            of memory.
    """
    path = Path(path)
    limits = DEFAULT_LIMITS if limits is None else limits
    stat_input(path, limits)
    try:
        with open_regular(path, limits) as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from exc
    is_raster = head.startswith(_PNG_SIGNATURE) or head.startswith(_JPEG_SOI)
    try:
        if not is_raster and (path.suffix.lower() in DICOM_SUFFIXES or _is_dicom_head(head)):
            from edgecxr.data.dicom import load_dicom

            image = load_dicom(path, limits)
        else:
            image = _load_raster(path, head, min_size, limits)
    except MemoryError as exc:
        detail = f" ({_one_line(exc)})" if str(exc) else ""
        raise ImageLoadError(path, f"out of memory while decoding{detail}") from None
    _check_size(path, image, limits)
    return image


#: what `stat_input` calls a file that is not a regular file (st_mode type -> words)
_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _special_kind(mode: int) -> str:
    return next((words for test, words in _SPECIAL_KINDS if test(mode)), "a special file")


def stat_input(path: str | Path, limits: DecodeLimits | None = None) -> os.stat_result:
    """Look before reading: the stat of an input that may be opened, else an ImageLoadError saying why not.

    Every path that enters (`infer` files and folders, `Classifier.predict`, the service's
    uploads) goes through this before it is opened, hashed or sniffed, because a read cannot be
    undone: a FIFO blocks forever, /dev/zero never ends, and a sparse 64 GiB file is read in full
    by a hash. A symlink is followed (to a regular file it is fine; to a device it is a device).

    Raises:
        ImageLoadError: missing; a folder (one that cannot be listed says so: its images were not
            classified); a FIFO, device or socket; empty; larger than `limits.max_file_bytes`.
    """
    path = Path(path)
    limits = DEFAULT_LIMITS if limits is None else limits
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ImageLoadError(path, "file not found") from None
    except OSError as exc:
        raise ImageLoadError(path, f"cannot read file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        try:
            with os.scandir(path):
                pass
        except OSError as exc:
            # `expand_inputs` lists a folder it could not read as an input of its own, so that
            # the run reports it (failed, exit 1) instead of silently classifying fewer images
            raise ImageLoadError(path, f"folder cannot be read ({exc.strerror or exc}); "
                                       "its images were not classified") from None
        raise ImageLoadError(path, "is a directory, not an image")
    if not stat.S_ISREG(info.st_mode):
        raise ImageLoadError(path, f"{_special_kind(info.st_mode)}, not a regular file; not read")
    check_file_size(path, info.st_size, limits)
    return info


def open_regular(path: str | Path, limits: DecodeLimits | None = None, max_bytes: int | None = -1) -> BinaryIO:
    """Open a file for reading only if it is (still) a regular file of an accepted size.

    The open itself never blocks (O_NONBLOCK: opening a FIFO waits for a writer otherwise), and
    what was opened is checked with fstat, so a file replaced by a FIFO or a device between
    `stat_input` and the read is refused rather than read. `max_bytes` bounds the size: -1 (the
    default) means `limits.max_file_bytes`, None no bound (model files, which are hashed whole).

    Raises:
        ImageLoadError: not a regular file, or outside the size bound.
        OSError: the open failed (missing, permission).
    """
    limits = DEFAULT_LIMITS if limits is None else limits
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageLoadError(path, f"{_special_kind(info.st_mode)}, not a regular file; not read")
        if max_bytes == -1:
            check_file_size(Path(path), info.st_size, limits)
        elif max_bytes is not None and info.st_size > max_bytes:
            raise ImageLoadError(path, f"file too large ({info.st_size} bytes; at most {max_bytes} is read)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_image_bytes(
    data: bytes | bytearray | memoryview,
    min_size: tuple[int, int] | None = None,
    limits: DecodeLimits | None = None,
    name: str = "<bytes>",
) -> np.ndarray:
    """`load_image` for a file's bytes held in memory (an upload, a DICOM received over the network).

    The same checks in the same order as for a file: the size against `max_file_bytes`, the
    container, the header against `limits`, the decode with its warnings as errors. The format is
    taken from the content: PNG and JPEG signatures, else the DICOM 'DICM' preamble (a DICOM
    without a preamble cannot be told from other bytes here; a file named .dcm can). `name` is
    what error messages call the input.

    Raises:
        ImageLoadError: as `load_image`.
    """
    limits = DEFAULT_LIMITS if limits is None else limits
    data = bytes(data)
    check_file_size(Path(name), len(data), limits)
    head = data[:132]
    try:
        if _is_dicom_head(head) and not (head.startswith(_PNG_SIGNATURE) or head.startswith(_JPEG_SOI)):
            from edgecxr.data.dicom import load_dicom

            image = load_dicom(name, limits, data=data)
        else:
            image = _load_raster(Path(name), head, min_size, limits, data=data)
    except MemoryError as exc:
        detail = f" ({_one_line(exc)})" if str(exc) else ""
        raise ImageLoadError(name, f"out of memory while decoding{detail}") from None
    _check_size(Path(name), image, limits)
    return image


def expand_inputs(items: Iterable[str | Path]) -> list[Path]:
    """Expand files, folders and glob patterns into a list of image paths (the `infer` inputs).

    * a file is taken as given (whatever its suffix or kind; decoding decides later, and a FIFO,
      device or socket becomes that input's failure, never a blocking read);
    * a folder is searched recursively for INPUT_SUFFIXES (case-insensitive) and for suffix-less
      files with the DICOM preamble (PACS exports), skipping hidden files and DICOMDIR; sorted.
      Nothing is opened that is not a regular file: a FIFO, device or socket with an input suffix
      or none is listed (it fails with its reason), and so is a folder that cannot be read
      (`stat_input` reports it: its images were not classified) instead of being skipped;
    * an item with `*`, `?` or `[` that is not an existing path is a glob pattern (`**` recurses);
      matching folders are expanded as above; sorted.
    Order follows `items`; a path reached twice is listed once.

    Raises:
        DataError: an item is empty (`''` would be the current folder), does not exist, a pattern
            matches nothing, or a folder has no images; a typo should stop the run, not silently
            classify fewer (or other) images.
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
        if not text:
            raise DataError("an empty path ('') is not an input; give a file, a folder ('.' for this one) or a pattern")
        path = Path(text)
        try:
            info: os.stat_result | None = os.stat(path)
        except OSError:
            info = None
        if info is not None and stat.S_ISDIR(info.st_mode):
            found = _scan_folder(path)
            if not found:
                raise DataError(f"{path}: folder contains no PNG, JPEG or DICOM files")
            add(found)
        elif info is not None:
            add([path])  # a regular file, or one that will fail with its reason (FIFO, device)
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            files: list[Path] = []
            for m in matches:
                mp = Path(m)
                files.extend(_scan_folder(mp) if mp.is_dir() else [mp])
            if not files:
                raise DataError(f"{text}: pattern matches no files")
            add(files)
        else:
            raise DataError(f"{text}: no such file or folder")
    return out


def _scan_folder(folder: Path) -> list[Path]:
    """The input files under `folder` (see `expand_inputs`), reading none but regular suffix-less files' heads."""
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:  # os.walk skips a folder it cannot list unless told
        found.append(Path(exc.filename) if exc.filename is not None else folder)

    for root, dirs, names in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__MACOSX"]
        for name in names:
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            p = Path(root) / name
            suffix = p.suffix.lower()
            if suffix in INPUT_SUFFIXES or (suffix == "" and _maybe_dicom(p)):
                found.append(p)
    return sorted(found)


def _maybe_dicom(path: Path) -> bool:
    """A suffix-less file worth listing: a regular file with the DICOM preamble, or a FIFO, device or
    socket (listed so that it fails with its reason; never opened)."""
    try:
        info = os.stat(path)
    except OSError:
        return False  # a dangling symlink, a file that vanished: nothing to say it was an image
    if stat.S_ISDIR(info.st_mode):
        return False
    if not stat.S_ISREG(info.st_mode):
        return True
    return _file_is_dicom(path)


def _file_is_dicom(path: Path) -> bool:
    """Whether a file starts with the DICOM preamble; False for anything that is not a readable regular file."""
    try:
        with open_regular(path, max_bytes=None) as fh:
            return _is_dicom_head(fh.read(132))
    except (OSError, ImageLoadError):
        return False


def _is_dicom_head(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
