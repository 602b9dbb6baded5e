"""Input checks before the model: a DICOM that is not a frontal chest radiograph, and pixels that
are not an X-ray at all, are rejected with a one-line reason instead of getting a confident label.

Why: the classifier answers every input with one of its classes; uniform noise came out "covid
0.998" and a CT head DICOM "normal 0.971". These rules catch what is plainly not a chest X-ray;
they are not an out-of-distribution detector (an abdominal radiograph saved as PNG still passes).

Rules (`InputRules`, frozen; `InputRules.off()` or `input_rules=None` disables all of them):

DICOM header (read with `stop_before_pixels`, DICOM inputs only):
  * Modality must be one of `modalities` (CR, DX, DR; DR is no DICOM term but vendors write it).
    An absent Modality is allowed (old secondary captures), but an SOP class of CT, MR, US, NM,
    PET or MG image storage is rejected whatever Modality says.
  * BodyPartExamined, where present, must be one of `body_parts` (CHEST, case-insensitive).
  * ViewPosition, where present, must be one of `views` (PA, AP): LL, RL, LATERAL... are lateral.

Pixels (the decoded 2-D gray image before preprocessing, on a copy of at most 256 px a side):
  * short side >= `min_side` (64 px) and long/short <= `max_aspect` (4.0);
  * the 1st-99th percentile spread of the full-scale image >= `min_spread` (0.05): blank,
    black, white and near-constant images;
  * at most `max_mode_fraction` (0.7) of the pixels in one of 64 gray bins: text or drawings
    on a white page;
  * lag-1 autocorrelation >= `min_autocorrelation` (0.5): X-rays are smooth at this scale,
    uniform or Gaussian noise has none;
  * mean |Laplacian| / spread >= `min_detail` (0.01): ribs, borders, lines and film grain give
    every radiograph some fine structure (lowest of the 2,023 real images 0.015), a gradient or a
    smooth blur has almost none (every ramp and blob-noise image of the OOD set is rejected: docs/SAFETY.md);
  * polarity >= `min_polarity` (-0.25): the mean of the central column (mediastinum, spine) minus
    that of the two lung fields, on a 64 px copy stretched to [0, 1]. Positive on a radiograph
    (median 0.31, lowest of the 2,023 real images -0.17: an off-centre film with opaque lungs),
    negative on a negative: 77% of their negatives fall below -0.25. A MONOCHROME1 DICOM is
    shown the right way round by the decoder before this rule sees it;
  * side polarity <= `max_side_polarity` (0.22): the same measure on the transposed image. A film
    turned 90 degrees has its bright mediastinum across, not down (median 0.30; 82% of turned
    films exceed 0.22); on the 2,023 real X-rays it is at most 0.14. Upside-down films pass;
  * for color PNG/JPEG (and 3-channel arrays), mean (|R-G| + |G-B|) / 255 <= `max_chroma`
    (0.12): a photo or colored figure, not a radiograph (gray X-rays saved as RGB score ~0).

The thresholds were set on the 1,998 curated images (manifest-extended.csv), the originals and the committed examples
(none is rejected; docs/SAFETY.md "Input checks" gives the measured margins).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: SOP classes that are never a radiograph (CT, enhanced CT, MR, enhanced MR, US, US multi-frame,
#: NM, PET, digital mammography for presentation/processing)
NON_XRAY_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",
    "1.2.840.10008.5.1.4.1.1.4": "MR",
    "1.2.840.10008.5.1.4.1.1.4.1": "MR",
    "1.2.840.10008.5.1.4.1.1.6.1": "US",
    "1.2.840.10008.5.1.4.1.1.3.1": "US",
    "1.2.840.10008.5.1.4.1.1.20": "NM",
    "1.2.840.10008.5.1.4.1.1.128": "PET",
    "1.2.840.10008.5.1.4.1.1.1.2": "MG",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "MG",
}

_SMALL = 256  # side of the downsampled copy the pixel rules look at


@dataclass(frozen=True)
class InputRules:
    """What an input must look like to be sent to the model (see the module docstring)."""

    enabled: bool = True
    modalities: tuple[str, ...] = ("CR", "DX", "DR")
    body_parts: tuple[str, ...] = ("CHEST",)
    views: tuple[str, ...] = ("PA", "AP")
    min_side: int = 64
    max_aspect: float = 4.0
    min_spread: float = 0.05
    max_mode_fraction: float = 0.7
    min_autocorrelation: float = 0.5
    min_detail: float = 0.01
    min_polarity: float = -0.25
    max_side_polarity: float = 0.22
    max_chroma: float = 0.12
    #: the orientation gate (runtime/orientation.py): "reject" a film that is not upright, "fix" it, or "off"
    orientation: str = "reject"
    #: the CXR score (runtime/cxr_score.py): refuse what is not like a frontal chest radiograph at all
    cxr_score: bool = True

    @classmethod
    def off(cls) -> InputRules:
        """No checks: every decodable input goes to the model (today's behaviour before issue 12)."""
        return cls(enabled=False)

    def check_file(self, path: str | Path) -> str | None:
        """The reason a file is rejected from its header or color (None: passes); cheap, no full decode."""
        if not self.enabled:
            return None
        from edgecxr.core.errors import ImageLoadError
        from edgecxr.data.io import DICOM_SUFFIXES, _is_dicom_head, open_regular

        path = Path(path)
        try:
            with open_regular(path) as fh:  # never a FIFO or device, never past the size limit
                head = fh.read(132)
        except (OSError, ImageLoadError):
            return None  # load_image reports it
        from edgecxr.data.raster import _JPEG_SOI, _PNG_SIGNATURE

        if head.startswith(_PNG_SIGNATURE) or head.startswith(_JPEG_SOI):
            return self.check_color(_color_preview(path, head))
        if path.suffix.lower() in DICOM_SUFFIXES or _is_dicom_head(head):
            return self.check_header(_dicom_header(path))
        return None

    def check_bytes(self, data: bytes) -> str | None:
        """`check_file` for a file's bytes held in memory (PNG/JPEG color, DICOM header)."""
        if not self.enabled:
            return None
        from edgecxr.data.io import _is_dicom_head
        from edgecxr.data.raster import _JPEG_SOI, _PNG_SIGNATURE

        head = bytes(data[:132])
        if head.startswith(_PNG_SIGNATURE) or head.startswith(_JPEG_SOI):
            return self.check_color(_color_preview(None, head, data))
        if _is_dicom_head(head):
            return self.check_header(dicom_header_bytes(data))
        return None

    def check_header(self, ds: Any) -> str | None:
        """The reason a DICOM header says this is not a frontal chest radiograph, else None."""
        if not self.enabled or ds is None:
            return None
        sop = str(getattr(ds, "SOPClassUID", "") or "")
        if sop in NON_XRAY_SOP_CLASSES:
            return f"not a radiograph (SOP class {NON_XRAY_SOP_CLASSES[sop]} image storage)"
        modality = str(getattr(ds, "Modality", "") or "").strip().upper()
        if modality and modality not in self.modalities:
            return f"not a radiograph (Modality {modality}; expected {'/'.join(self.modalities)})"
        part = str(getattr(ds, "BodyPartExamined", "") or "").strip().upper()
        if part and part not in {p.upper() for p in self.body_parts}:
            return f"not a chest image (BodyPartExamined {part})"
        view = str(getattr(ds, "ViewPosition", "") or "").strip().upper()
        if view and view not in {v.upper() for v in self.views}:
            kind = "lateral view" if view in ("LL", "RL", "LATERAL", "LAT", "LLD", "RLD") else "not a frontal view"
            return f"{kind} (ViewPosition {view})"
        return None

    def check_color(self, image: np.ndarray | None) -> str | None:
        """The reason a color image is too colorful to be a radiograph, else None (gray: None)."""
        if not self.enabled or image is None or image.ndim != 3 or image.shape[2] < 3:
            return None
        chroma = color_score(image)
        if chroma > self.max_chroma:
            return f"color image (chroma {chroma:.2f} > {self.max_chroma}), not a radiograph"
        return None

    def check_pixels(self, image: np.ndarray) -> str | None:
        """The reason a decoded 2-D gray image is not an X-ray (see module docstring), else None."""
        if not self.enabled:
            return None
        if image.ndim == 3:
            reason = self.check_color(image)
            if reason:
                return reason
            image = (image[..., :3].mean(axis=2) if image.shape[2] >= 3 else image[..., 0]).astype(image.dtype)
        h, w = image.shape[:2]
        if min(h, w) < self.min_side:
            return f"too small ({w}x{h} px; short side < {self.min_side})"
        if max(h, w) / min(h, w) > self.max_aspect:
            return f"extreme aspect ratio ({w}x{h} px; > {self.max_aspect:g}:1)"
        s = pixel_stats(image)
        if s["spread"] < self.min_spread:
            return f"blank or near-constant image (spread {s['spread']:.3f} < {self.min_spread})"
        if s["mode_fraction"] > self.max_mode_fraction:
            return f"mostly one gray level ({s['mode_fraction']:.0%} of pixels), not a radiograph"
        if s["autocorrelation"] < self.min_autocorrelation:
            return f"noise-like image (autocorrelation {s['autocorrelation']:.2f} < {self.min_autocorrelation})"
        if s["detail"] < self.min_detail:
            return f"no fine structure (detail {s['detail']:.3f} < {self.min_detail}): a gradient or blur, not a radiograph"
        if s["polarity"] < self.min_polarity:
            return (f"looks inverted (a negative: mediastinum darker than the lungs, polarity {s['polarity']:.2f} "
                    f"< {self.min_polarity})")
        if s["side_polarity"] > self.max_side_polarity:
            return (f"turned on its side (the mediastinum runs across, side polarity {s['side_polarity']:.2f} "
                    f"> {self.max_side_polarity})")
        return None


#: the rules `Classifier.load` applies unless told otherwise
DEFAULT_RULES = InputRules()


def full_scale(image: np.ndarray) -> np.ndarray:
    """float32 in [0, 1] by the image's own scale: uint8 /255, uint16 by the bits it uses, floats as is."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype.kind in "ui":
        top = int(image.max()) if image.size else 0
        return image.astype(np.float32) / float(max(1, (1 << max(1, top.bit_length())) - 1))
    return np.nan_to_num(image.astype(np.float32))


def pixel_stats(image: np.ndarray) -> dict[str, float]:
    """spread (p99 - p1), mode_fraction (largest of 64 bins), lag-1 autocorrelation, detail
    (mean |Laplacian| over the spread), on <= 256 px, and polarity and side polarity (see the module
    docstring)."""
    import cv2

    img = full_scale(image)
    h, w = img.shape
    scale = _SMALL / max(h, w)
    if scale < 1:
        img = cv2.resize(img, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(img, [1, 99])
    hist = np.histogram(np.clip(img, 0, 1), bins=64, range=(0, 1))[0]
    return {
        "spread": float(hi - lo),
        "mode_fraction": float(hist.max() / img.size),
        "autocorrelation": min(_lag1(img), _lag1(img.T)),
        "detail": float(np.mean(np.abs(cv2.Laplacian(img, cv2.CV_32F, ksize=1)))) / max(float(hi - lo), 1e-6),
        **_polarities(img, float(lo), float(hi)),
    }


def _polarities(img: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    """polarity and side_polarity (the same on the transpose), from one 64 px copy stretched by the
    1st-99th percentiles."""
    import cv2

    small = (cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA) - lo) / max(hi - lo, 1e-6)
    return {"polarity": _polarity(small), "side_polarity": _polarity(small.T)}


def _polarity(small: np.ndarray) -> float:
    """Central column (rows 1/4..7/8, columns 7/16..9/16) minus both lung fields (rows 1/4..3/4,
    columns 5/32..11/32 and 21/32..27/32) of a 64 x 64 copy."""
    lungs = np.concatenate([small[16:48, 10:22].ravel(), small[16:48, 42:54].ravel()])
    return float(small[16:56, 28:36].mean() - lungs.mean())


def color_score(image: np.ndarray) -> float:
    """Mean (|R-G| + |G-B|) over full scale: 0 for gray stored as RGB, ~0.3+ for colored photos."""
    rgb = full_scale(image[..., :3])
    return float(np.mean(np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])))


def _lag1(img: np.ndarray) -> float:
    a, b = img[:, :-1].ravel(), img[:, 1:].ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 1.0


def _color_preview(path: Path | None, head: bytes, data: bytes | None = None) -> np.ndarray | None:
    """A small color decode, only for a file (or its bytes) that stores color (PNG color type, JPEG components)."""
    import cv2

    from edgecxr.data.raster import _PNG_SIGNATURE

    if head.startswith(_PNG_SIGNATURE):
        if len(head) < 26 or head[25] in (0, 4):  # IHDR color type: gray, gray + alpha
            return None
        flag = cv2.IMREAD_COLOR
    else:
        flag = cv2.IMREAD_REDUCED_COLOR_4
    try:
        image = cv2.imread(str(path), flag) if data is None else cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error:
        return None
    return None if image is None or image.ndim != 3 else image


def _dicom_header(path: Path) -> Any:
    """The DICOM header without pixels, or None when it cannot be read (load_image reports why)."""
    try:
        from pydicom import dcmread

        from edgecxr.data.io import open_regular

        with open_regular(path) as fh:  # a regular file within the size limit, opened without blocking
            return dcmread(fh, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - the decode that follows gives the real error
        return None


def dicom_header_bytes(data: bytes) -> Any:
    """`_dicom_header` of a DICOM file's bytes held in memory, or None when they cannot be read."""
    import io

    try:
        from pydicom import dcmread

        return dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - the decode that follows gives the real error
        return None
