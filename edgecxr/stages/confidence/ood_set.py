"""An out-of-distribution test set built without the network, from what the installed packages ship.

Each item is (kind, name, image) where image is a decoded array as `load_image` returns it
(grayscale or color, any size), plus, for DICOM files, the path (so the header rules can be tried
too). Kinds, and where they come from (all deterministic):

- `ct`, `mr`, `us`, `nm`: pydicom's bundled test files of those modalities (pydicom's licence, MIT;
  the files are public test data), read through edgecxr's own DICOM decoder;
- `noise`: uniform and Gaussian noise, and smoothed (blob) noise;
- `blank`: constant frames and gentle gradients;
- `text`: rendered text, dark on light and light on dark (OpenCV's Hershey fonts);
- `photo`: the photographs and drawings matplotlib ships in mpl-data/sample_data (Grace Hopper's
  portrait is a U.S. Navy photograph in the public domain), whole, in gray, and as crops;
- `inverted` and `rotated` radiographs: `val` X-rays negated, or turned 90/180 degrees;
  built from the split the OOD threshold is set on, never from `test`.

`transformed` is the larger set of the transforms alone: every film of one split (`val` to fit
on, `test` to report on) turned 90 / 180 / 270 degrees, flipped top-bottom and made a negative,
hundreds per kind instead of 8 (the orientation gate's report, scripts/orientation_report.py).

There are no lateral-view radiographs in the shared data, so lateral views are covered only by
the DICOM header rule (ViewPosition), not by this set; docs/SAFETY.md says so.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: pydicom test files by kind (modality), those edgecxr's decoder reads as one frame
DICOM_FILES = {
    "ct": ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"),
    "mr": ("MR_small.dcm", "examples_overlay.dcm", "MR_small_RLE.dcm"),
    "us": ("ExplVR_BigEnd.dcm", "examples_jpeg2k.dcm", "examples_rgb_color.dcm"),
    "nm": ("JPEG2000.dcm", "JPGExtended.dcm"),
}
KINDS = ("ct", "mr", "us", "nm", "noise", "blank", "text", "photo", "inverted", "rotated")


@dataclass
class OodItem:
    kind: str
    name: str
    image: np.ndarray
    path: Path | None = None
    #: the source item it was made from (ood_large: no source is in both the FIT and the REPORT half)
    source: str = ""


def build(radiographs: Sequence[np.ndarray] = (), seed: int = 0, per_kind: int = 8) -> list[OodItem]:
    """The OOD set; `radiographs` (decoded `val` images) feed the inverted and rotated kinds."""
    rng = np.random.default_rng(seed)
    items = _dicom_items() + _noise(rng, per_kind) + _blank(per_kind) + _text(per_kind) + _photos(per_kind)
    for i, img in enumerate(radiographs[:per_kind]):
        items.append(OodItem("inverted", f"val-{i}-inverted", _invert(img)))
        items.append(OodItem("rotated", f"val-{i}-rot{90 if i % 2 else 180}", np.rot90(img, 1 if i % 2 else 2).copy()))
    return items


def from_records(records: Sequence[Any], seed: int = 0, per_kind: int = 8) -> list[OodItem]:
    """`build` with the first `per_kind` of `records` (manifest rows of `val`) decoded as radiographs."""
    from edgecxr.data.io import load_image

    return build([load_image(r.path) for r in records[:per_kind]], seed=seed, per_kind=per_kind)


#: the transforms of an upright film the issue lists: kind -> orientation.TRANSFORMS name
TRANSFORM_KINDS = {"rot90": "rot90", "rot180": "rot180", "rot270": "rot270", "flip": "flip", "negative": "neg"}


def transformed(records: Sequence[Any], split: str, kinds: Sequence[str] = tuple(TRANSFORM_KINDS),
                upright: bool = True) -> Iterator[OodItem]:
    """Every film of `records` (rows of one split) under each of `kinds`, decoded one film at a time.

    With `upright` the film itself comes first as kind "upright" (it must be answered; the share
    that is not is the price of the gate). Names are "<split>-<file stem>-<kind>". Films are
    decoded as `load_image` decodes them, so the transforms are those of the decoded pixels the
    runtime sees (a negative of a uint8 PNG is 255 - x).
    """
    from edgecxr.data.io import load_image
    from edgecxr.runtime.orientation import BY_NAME

    for rec in records:
        img = load_image(rec.path)
        stem = Path(rec.path).stem
        if upright:
            yield OodItem("upright", f"{split}-{stem}", img)
        for kind in kinds:
            yield OodItem(kind, f"{split}-{stem}-{kind}", BY_NAME[TRANSFORM_KINDS[kind]].apply(img))


def _invert(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return 255 - img
    return (img.max() + img.min() - img).astype(img.dtype)


def _dicom_items() -> list[OodItem]:
    from edgecxr.core.errors import ImageLoadError
    from edgecxr.data.dicom import load_dicom

    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover - pydicom is a core dependency
        return []
    out = []
    for kind, names in DICOM_FILES.items():
        for name in names:
            try:
                path = Path(get_testdata_file(name, download=False) or "")
                if path.is_file():
                    out.append(OodItem(kind, name, load_dicom(path), path))
            except (ImageLoadError, OSError, ValueError):
                continue
    return out


def _noise(rng: np.random.Generator, n: int) -> list[OodItem]:
    import cv2

    out = []
    for i in range(n):
        side = int(rng.choice([256, 384, 512]))
        if i % 3 == 0:
            img = rng.integers(0, 256, (side, side), dtype=np.uint8)
        elif i % 3 == 1:
            img = np.clip(rng.normal(128, 40, (side, side)), 0, 255).astype(np.uint8)
        else:  # smooth blobs: noise without the high-frequency giveaway
            small = rng.integers(0, 256, (8, 8)).astype(np.float32)
            img = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
        out.append(OodItem("noise", f"noise-{i}", img))
    return out


def _blank(n: int) -> list[OodItem]:
    out = []
    for i in range(n):
        level = int(255 * i / max(1, n - 1))
        if i % 2:
            ramp = np.linspace(max(0, level - 30), min(255, level + 30), 384, dtype=np.float32)
            img = np.tile(ramp, (384, 1)).astype(np.uint8)
        else:
            img = np.full((384, 384), level, np.uint8)
        out.append(OodItem("blank", f"blank-{i}", img))
    return out


_LINES = ("PATIENT ID 00451", "CHEST PA", "NO IMAGE", "CALIBRATION", "TEST PATTERN 7", "L  R", "CAT", "edgecxr")


def _text(n: int) -> list[OodItem]:
    import cv2

    out = []
    for i in range(n):
        dark = i % 2 == 0
        img = np.full((384, 384), 235 if dark else 20, np.uint8)
        for row in range(4):
            text = _LINES[(i + row) % len(_LINES)]
            cv2.putText(img, text, (12, 70 + 80 * row), cv2.FONT_HERSHEY_SIMPLEX + (i % 3), 1.1 + 0.2 * (i % 2),
                        20 if dark else 235, 2 + i % 3, cv2.LINE_AA)
        out.append(OodItem("text", f"text-{i}", img))
    return out


def _photos(n: int) -> list[OodItem]:
    import cv2

    folder = _sample_data()
    if folder is None:
        return []
    out = []
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        path = folder / name
        img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if img is None:
            continue
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        out += [OodItem("photo", f"{name}", rgb), OodItem("photo", f"{name}-gray", gray)]
    hopper = folder / "grace_hopper.jpg"
    img = cv2.imread(str(hopper), cv2.IMREAD_GRAYSCALE) if hopper.is_file() else None
    if img is not None:
        h, w = img.shape
        for i in range(max(0, n - len(out))):
            y, x = (i * 97) % (h // 2), (i * 61) % (w // 2)
            out.append(OodItem("photo", f"grace_hopper-crop{i}", img[y : y + h // 2, x : x + w // 2].copy()))
    return out


def _sample_data() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    folder = Path(matplotlib.get_data_path()) / "sample_data"
    return folder if folder.is_dir() else None


def resize_short(image: np.ndarray, short: int) -> np.ndarray:
    """`image` rescaled so its short side is `short` (area filter down, linear up)."""
    import cv2

    h, w = image.shape[:2]
    scale = short / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=interp)


def crop(rng: np.random.Generator, image: np.ndarray, low: float) -> np.ndarray:
    """A random crop of `low`-100% of each side (images under 64 px a side are taken whole)."""
    h, w = image.shape[:2]
    if min(h, w) < 64:
        return image
    ch, cw = int(h * rng.uniform(low, 1.0)), int(w * rng.uniform(low, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return image[y : y + ch, x : x + cw]
