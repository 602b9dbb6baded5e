"""Image decoding: PNG/JPEG (8/16-bit, gray/RGB/RGBA/palette) and DICOM, with typed errors.

`load_image` returns a 2-D grayscale array: uint8 or uint16 for PNG/JPEG, float32 in [0, 1] for
DICOM (after modality/VOI LUT). Anything that cannot be decoded raises `ImageLoadError(path,
reason)`, which batch callers catch per file so one bad file never stops the others.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgecxr.errors import ImageLoadError
from edgecxr.preprocess import to_gray

#: Largest accepted image side; bigger is a corrupt header or not a radiograph.
MAX_SIDE = 16384
#: Smallest accepted image side.
MIN_SIDE = 16

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")


def load_image(path: str | Path) -> np.ndarray:
    """Decode one X-ray to a 2-D gray array (uint8/uint16, or float32 in [0, 1] for DICOM)."""
    path = Path(path)
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if path.is_dir():
        raise ImageLoadError(path, "is a directory, not an image")
    size = path.stat().st_size
    if size == 0:
        raise ImageLoadError(path, "empty file")
    with open(path, "rb") as fh:
        head = fh.read(132)
    if path.suffix.lower() in DICOM_SUFFIXES or head[128:132] == b"DICM":
        from edgecxr.data.dicom import load_dicom

        image = load_dicom(path)
    else:
        image = _load_raster(path, head)
    _check_size(path, image)
    return image


def _load_raster(path: Path, head: bytes) -> np.ndarray:
    if not (head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8")):
        raise ImageLoadError(path, "not a PNG, JPEG or DICOM file (unrecognised header)")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageLoadError(path, "corrupt or truncated image (decoder failed)")
    if image.ndim == 3:
        # OpenCV decodes color as BGR(A); preprocess.to_gray expects RGB order.
        if image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageLoadError(path, f"unsupported pixel type {image.dtype}")
    return to_gray(image)


def _check_size(path: Path, image: np.ndarray) -> None:
    if image.ndim != 2:
        raise ImageLoadError(path, f"decoded to unexpected shape {image.shape}")
    h, w = image.shape
    if min(h, w) < MIN_SIDE:
        raise ImageLoadError(path, f"image too small ({w}x{h} px; at least {MIN_SIDE} px per side)")
    if max(h, w) > MAX_SIDE:
        raise ImageLoadError(path, f"image too large ({w}x{h} px; at most {MAX_SIDE} px per side)")
