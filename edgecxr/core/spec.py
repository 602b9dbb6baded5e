"""The one preprocessing function, shared by training, calibration, export checks and every runtime.

A model is only as good as the agreement between how its training images and its deployed inputs
were prepared. So there is exactly one implementation (`preprocess`), parameterised by a frozen,
versioned `PreprocessSpec` that is written into every bundle, ONNX file and engine sidecar. A
runtime rebuilds the spec from that metadata and refuses versions it does not implement, instead
of silently preparing images differently.

Pipeline (version 1), applied to a decoded image (see `edgecxr.data.io.load_image`):
  1. to grayscale: RGB/RGBA -> ITU-R BT.601 luma (the same weights Pillow's "L" conversion used to
     build the curated data set); alpha is dropped.
  2. resize to (height, width) ignoring aspect ratio ("stretch", what both papers did); cv2
     INTER_AREA when the output has fewer pixels than the input (anti-aliased shrink), INTER_LINEAR
     otherwise. Done in the input's own dtype, before any float conversion, because that is the
     cheap order for a 4280x3520 scanner image. Integer resizing rounds to the input's step
     (1/255 for 8-bit), well below anything a classifier resolves; training and deployment both
     feed decoded 8/16-bit images, so they round identically.
  3. to [0, 1]: uint8 / 255, uint16 / 65535; float input must already lie in [0, 1].
  4. x * scale + offset  (CoroNet: Xception's [-1, 1]; CNN-LSTM: [0, 1]).
  5. replicate to `channels` (3 for CoroNet's ImageNet-shaped Xception, 1 for the CNN-LSTM).
Output is float32 NHWC, the layout the Keras models, their ONNX exports and TensorRT engines take.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edgecxr.core.errors import BundleError

#: Preprocessing versions this code implements. Bump (and keep the old branch) on any change to
#: `preprocess` that alters its output, and record it in docs/ARCHITECTURE.md.
IMPLEMENTED_VERSIONS = (1,)

#: BT.601 luma weights in RGB order (Pillow "L" mode, used to build ../shared/data/cxr).
_LUMA_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)

#: Largest |scale| / |offset| accepted: inputs are mapped from [0, 1]; even a 16-bit "raw counts"
#: model (scale 65535) fits, while a garbage value (1e30, NaN) is refused when the spec is read.
MAX_AFFINE = 65535.0

#: Tolerance for float input that should be in [0, 1] (accumulated rounding from decoders).
_FLOAT_RANGE_SLACK = 1e-3


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything needed to turn a decoded X-ray into a model input tensor.

    Attributes:
        family: model family the constants belong to ("coronet" or "cnn-lstm").
        version: version of the `preprocess` algorithm (see IMPLEMENTED_VERSIONS).
        height, width, channels: model input size (NHWC).
        resize: resize policy; only "stretch" (no aspect preservation, as in the papers).
        scale, offset: affine map applied to [0, 1] intensities.
    """

    family: str
    version: int
    height: int
    width: int
    channels: int
    resize: str = "stretch"
    scale: float = 1.0
    offset: float = 0.0
    layout: str = "NHWC"

    def __post_init__(self) -> None:
        # Types first: a hand-edited "height": "224" or "scale": NaN must fail here, by field name,
        # not as a TypeError deep in cv2 or as silently wrong pixels.
        if not isinstance(self.family, str) or not self.family.strip() or len(self.family) > 64:
            _invalid("family", "must be a non-empty name (at most 64 characters)", self.family)
        if not _is_int(self.version):
            _invalid("version", "must be an integer", self.version)
        if self.version not in IMPLEMENTED_VERSIONS:
            raise BundleError(
                f"preprocess.version {self.version} is not implemented by this edgecxr "
                f"(implements {list(IMPLEMENTED_VERSIONS)}); upgrade edgecxr or re-export the model"
            )
        for name in ("height", "width"):
            value = getattr(self, name)
            if not _is_int(value) or not 8 <= value <= 4096:
                _invalid(name, "must be an integer in 8..4096", value)
        if not _is_int(self.channels) or self.channels not in (1, 3):
            _invalid("channels", "must be 1 or 3", self.channels)
        if self.resize != "stretch":
            _invalid("resize", "must be 'stretch' (the only resize policy)", self.resize)
        if self.layout != "NHWC":
            _invalid("layout", "must be 'NHWC' (the only layout)", self.layout)
        if not _is_real(self.scale) or not 0 < self.scale <= MAX_AFFINE:
            _invalid("scale", f"must be a finite number in (0, {MAX_AFFINE:g}]", self.scale)
        if not _is_real(self.offset) or not -MAX_AFFINE <= self.offset <= MAX_AFFINE:
            _invalid("offset", f"must be a finite number in [-{MAX_AFFINE:g}, {MAX_AFFINE:g}]", self.offset)

    @property
    def id(self) -> str:
        """Short identifier, e.g. 'coronet-v1@150x150x3', for logs and metadata."""
        return f"{self.family}-v{self.version}@{self.height}x{self.width}x{self.channels}"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def output_range(self) -> tuple[float, float]:
        lo, hi = self.offset, self.scale + self.offset
        return (min(lo, hi), max(lo, hi))

    def with_size(self, height: int, width: int | None = None) -> PreprocessSpec:
        """Same constants at another input size (tiny test variants, CoroNet at 224)."""
        return dataclasses.replace(self, height=height, width=width if width is not None else height)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> PreprocessSpec:
        """Rebuild a spec from bundle/ONNX/engine metadata; unknown or missing keys are an error, not ignored.

        Messages name the field as `preprocess.<name>`; callers prefix the file they read.
        """
        if not isinstance(data, dict):
            raise BundleError(f"preprocess must be an object of preprocessing fields, got {_show(data)}")
        fields = dataclasses.fields(cls)
        unknown = set(data) - {f.name for f in fields}
        if unknown:
            raise BundleError(f"preprocess has unknown fields {sorted(map(str, unknown))}; written by a newer edgecxr?")
        missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in data]
        if missing:
            raise BundleError(f"preprocess is incomplete: missing {missing}")
        return cls(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _show(value: Any) -> str:
    """A value for a one-line message: repr, cut short (a hostile file may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _invalid(name: str, rule: str, value: Any) -> None:
    raise BundleError(f"preprocess.{name} {rule}, got {_show(value)}")


def to_gray(image: np.ndarray) -> np.ndarray:
    """Collapse RGB/RGBA (HxWx3/4, RGB order) to a 2-D luma image in the input's dtype."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image[:, :, :3].astype(np.float32)
        gray = rgb @ _LUMA_RGB
        if np.issubdtype(image.dtype, np.integer):
            info = np.iinfo(image.dtype)
            return np.clip(np.rint(gray), info.min, info.max).astype(image.dtype)
        return gray.astype(image.dtype)
    raise ValueError(f"expected a 2-D gray or HxWx3/4 color image, got shape {image.shape}")


def _to_unit(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) * np.float32(1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * np.float32(1.0 / 65535.0)
    if np.issubdtype(image.dtype, np.floating):
        out = image.astype(np.float32, copy=False)
        lo, hi = float(out.min()), float(out.max())
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise ValueError("image contains NaN or infinite values")
        if lo < -_FLOAT_RANGE_SLACK or hi > 1.0 + _FLOAT_RANGE_SLACK:
            raise ValueError(
                f"float image must be scaled to [0, 1] but spans [{lo:.4g}, {hi:.4g}]; "
                "pass uint8/uint16 pixels or divide by the bit depth's maximum first"
            )
        return np.clip(out, 0.0, 1.0)
    raise ValueError(f"unsupported pixel dtype {image.dtype} (use uint8, uint16 or float in [0, 1])")


def _to_8bit_levels(gray: np.ndarray) -> np.ndarray:
    """The 256 gray levels the models were trained on (8-bit PNGs), before resizing.

    A DICOM's display image is float and a 16-bit PNG has 65,536 levels; resized as they are, they
    reach the model with values between the 8-bit levels, where the same film as an 8-bit PNG reaches
    it rounded by the uint8 resize. That difference (at most 1/255 per pixel) moved an example film's
    OOD score from 8.38 (PNG) to 8.06 (the same pixels as DICOM) across the abstention threshold.
    Rounding every input to 8-bit levels first makes the same film give the same answer whatever
    container it came in, and keeps inputs on the levels the training images had."""
    if gray.dtype == np.uint8:
        return gray
    return np.rint(_to_unit(gray) * np.float32(255.0)).astype(np.uint8)


def preprocess(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Turn one decoded image (2-D gray or HxWx3/4 RGB[A]; uint8, uint16 or float in [0,1]) into HxWxC float32."""
    if spec.version != 1:  # pragma: no cover - guarded by PreprocessSpec.__post_init__
        raise BundleError(f"preprocessing version {spec.version} not implemented")
    image = np.asarray(image)
    if image.size == 0:
        raise ValueError("empty image")
    if image.dtype == np.float64 or image.dtype == np.float16:
        image = image.astype(np.float32)
    if image.dtype not in (np.uint8, np.uint16, np.float32):
        raise ValueError(f"unsupported pixel dtype {image.dtype} (use uint8, uint16 or float in [0, 1])")
    gray = _to_8bit_levels(np.ascontiguousarray(to_gray(image)))
    src_h, src_w = gray.shape
    if (src_h, src_w) != (spec.height, spec.width):
        shrink = spec.height * spec.width < src_h * src_w
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        gray = cv2.resize(gray, (spec.width, spec.height), interpolation=interp)
    x = _to_unit(gray)
    if spec.scale != 1.0 or spec.offset != 0.0:
        x = x * np.float32(spec.scale) + np.float32(spec.offset)
    x = x[:, :, None]
    if spec.channels == 3:
        x = np.repeat(x, 3, axis=2)
    return np.ascontiguousarray(x, dtype=np.float32)
