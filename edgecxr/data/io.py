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

import glob
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edgecxr.core.errors import DataError, ImageLoadError
from edgecxr.data.raster import _JPEG_SOI, _PNG_SIGNATURE, _check_size, _load_raster

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


DICOM_SUFFIXES = (".dcm", ".dicom")


#: Suffixes `expand_inputs` picks up in folders (suffix-less files are taken when they are DICOM).
INPUT_SUFFIXES = IMAGE_SUFFIXES + DICOM_SUFFIXES




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


