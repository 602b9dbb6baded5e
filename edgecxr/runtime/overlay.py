"""Heat map overlays a radiologist can look at: the map blended on the original image, as PNG bytes.

A map is computed at the model's input size (150 or 224 px) but read on the image as it was
acquired, so `render` stretches it back to the original's size (the preprocessing stretched the
image the other way; `edgecxr.core.spec`), capped at `MAX_SIDE` on the long side to keep a
4280 x 3520 detector image's overlay a reasonable file. The blend weight follows the map
(`alpha * heat`): where the model did not care the radiograph stays plain gray, so the anatomy
under a hot spot is still visible. Colors are OpenCV's TURBO map (blue low, red high),
perceptually ordered unlike JET.

Writing is atomic (`edgecxr.core.fileutil.atomic_write_bytes`); which path may be written is the
caller's policy (`edgecxr.cli.heatmaps` refuses inputs, links and others' files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgecxr.core.fileutil import atomic_write_bytes
from edgecxr.core.spec import to_gray
from edgecxr.runtime.heatmap import HeatMap

#: longest side of an overlay; larger originals are shrunk to it (INTER_AREA), keeping their aspect
MAX_SIDE = 2048
#: blend weight at the hottest pixel (0: no color, 1: only color)
ALPHA = 0.55
#: the suffix of every overlay file (`infer --heatmap` replaces only files that carry it)
SUFFIX = ".heatmap.png"


def display_image(item: Any, max_side: int = MAX_SIDE) -> np.ndarray:
    """The original image as 8-bit gray (H, W) for display, shrunk to `max_side` if larger.

    Any input `Classifier.predict` takes: a path, a file's bytes or a pydicom Dataset is decoded in
    full with the same decoder and limits as a prediction (DICOM through its modality/VOI LUTs and
    MONOCHROME1 inversion); an array is taken as given. 16-bit images are windowed to their
    0.5-99.5th percentiles (a 12-bit detector image in a 16-bit PNG would otherwise be nearly
    black); floats are read as [0, 1].
    """
    from edgecxr.data.io import load_image, load_image_bytes
    from edgecxr.runtime.inputs import kind_of

    kind = kind_of(item)
    if kind == "path":
        image = load_image(item)
    elif kind == "bytes":
        image = load_image_bytes(bytes(item))
    elif kind == "dataset":
        from edgecxr.data.dicom import encode_dataset

        image = load_image_bytes(encode_dataset(item), name="DICOM data set")
    else:
        image = np.asarray(item)
    gray = to_gray(image)
    if gray.dtype == np.uint8:
        out = gray
    elif np.issubdtype(gray.dtype, np.integer):
        lo, hi = np.percentile(gray, (0.5, 99.5))
        scale = 255.0 / max(float(hi - lo), 1.0)
        out = np.clip((gray.astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)
    else:
        out = np.clip(np.nan_to_num(gray.astype(np.float32)) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    h, w = out.shape
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        out = cv2.resize(out, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out)


def render(gray: np.ndarray, heat: HeatMap | np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """RGB uint8 (H, W, 3): `gray` (H, W uint8) with the map's colors blended in where it is hot.

    `heat` is a HeatMap (its `normalized()` form is drawn) or an array already in [0, 1] of any
    size; it is stretched to the image's size.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {gray.dtype} {gray.shape}")
    level = heat.normalized() if isinstance(heat, HeatMap) else np.clip(np.asarray(heat, np.float32), 0, 1)
    h, w = gray.shape
    level = cv2.resize(level, (w, h), interpolation=cv2.INTER_LINEAR)
    color = cv2.applyColorMap(np.clip(level * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    color = cv2.cvtColor(color, cv2.COLOR_BGR2RGB).astype(np.float32)
    weight = (alpha * level)[:, :, None]
    base = np.repeat(gray[:, :, None], 3, axis=2).astype(np.float32)
    return np.clip(base * (1 - weight) + color * weight + 0.5, 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG file bytes of an RGB uint8 image."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV fails only on absurd input
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def overlay_name(source: str | int, taken: set[str]) -> str:
    """`<input stem>.heatmap.png`, with -2, -3... when another input of the run had the same stem.

    `taken` holds the names already given in this run (updated here), so scans/a/x.png and
    scans/b/x.png never write over each other's overlay.
    """
    stem = Path(source).name if isinstance(source, str) else f"input-{source}"
    for suffix in (".dcm", ".dicom", ".png", ".jpg", ".jpeg"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = stem or "image"
    name, n = f"{stem}{SUFFIX}", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}{SUFFIX}"
    taken.add(name)
    return name


def write_overlay(path: str | Path, item: Any, heat: HeatMap, max_side: int = MAX_SIDE) -> Path:
    """Render `heat` on `item`'s original pixels and write the PNG atomically to `path`."""
    rgb = render(display_image(item, max_side), heat)
    return atomic_write_bytes(path, png_bytes(rgb))
