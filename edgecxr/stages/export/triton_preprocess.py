"""Triton Python-backend model: encoded X-ray files in, the model's input tensors out.

`edgecxr export triton` copies this file as `<model>_preprocess/1/model.py`, next to
`preprocess.json` (the bundle's preprocessing spec and edgecxr's decode limits, written at export).
It needs only numpy and OpenCV (opencv-python-headless) in Triton's Python environment, not edgecxr:
it repeats, for PNG and JPEG, what `edgecxr.data.io.load_image` + `edgecxr.core.spec.preprocess`
do, and tests/export/test_triton.py checks that it gives the same tensor on real images:

  * the header (PNG IHDR, JPEG SOF) is read before decoding and checked against the limits
    (sides, pixels, decoded bytes, decoded/file bytes for a decompression bomb);
  * 8-bit JPEGs are decoded by libjpeg at 1/2, 1/4 or 1/8 scale when both sides stay at least
    `reduced_decode_margin` x the model input (IMREAD_REDUCED_GRAYSCALE_*), else in full with
    IMREAD_ANYDEPTH | IMREAD_ANYCOLOR (16-bit kept, palette expanded, EXIF orientation applied);
  * color -> BT.601 luma in RGB order, rounded to the input's integer type;
  * 16-bit and float images rounded to 8-bit levels (what the models were trained on), then
    stretch-resize (INTER_AREA down, INTER_LINEAR up), /255, x*scale+offset, channels.

Not repeated here (edgecxr keeps them; see docs/ARCHITECTURE.md "Integrity rules"): PNG chunk
CRCs and libjpeg/libpng warnings captured as errors, and the input checks that reject CT, lateral
views, noise, blank and colored images. DICOM is decoded only when edgecxr is installed in Triton's
Python environment (its modality/VOI LUT handling is not repeated here); otherwise a DICOM input is
that request's error.

An input that cannot be decoded fails its request with a one-line reason (Triton answers it as an
error); the other requests of the same batch are answered normally.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

try:  # inside Triton
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by edgecxr itself or its tests
    pb_utils = None

#: name of the JSON file beside model.py
CONFIG_FILE = "preprocess.json"

#: the only preprocessing version this file implements (edgecxr.core.spec.IMPLEMENTED_VERSIONS)
VERSION = 1

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8"
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])
_PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_REDUCED = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
            (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))
_LUMA_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class DecodeError(ValueError):
    """An input that cannot become a tensor; its text is the one-line reason given to the client."""


def load_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """preprocess.json of this model version: spec, limits, margin; refuses a version it does not implement."""
    config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    spec = config["preprocess"]
    if spec.get("version") != VERSION or spec.get("resize") != "stretch" or spec.get("layout") != "NHWC":
        raise ValueError(f"{CONFIG_FILE}: preprocessing {spec} is not version {VERSION} stretch NHWC, "
                         "which this model.py implements; re-export with the edgecxr that made the bundle")
    return config


def header(data: bytes) -> tuple[str, int, int, int, int, int]:
    """(kind, width, height, samples, bytes per sample, precision) from a PNG IHDR or JPEG SOF."""
    if data.startswith(_PNG):
        if len(data) < 33 or data[12:16] != b"IHDR":
            raise DecodeError("corrupt PNG (first chunk is not IHDR)")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        depth, color = data[24], data[25]
        if color not in _PNG_SAMPLES:
            raise DecodeError(f"corrupt PNG header (color type {color})")
        return "PNG", width, height, _PNG_SAMPLES[color], 2 if depth == 16 else 1, depth
    if data.startswith(_JPEG):
        pos, n = 2, len(data)
        while pos + 4 <= n:
            while pos + 1 < n and data[pos] == 0xFF and data[pos + 1] == 0xFF:
                pos += 1
            if data[pos] != 0xFF:
                break
            marker = data[pos + 1]
            if marker in _STANDALONE:
                pos += 2
                continue
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker in _SOF and pos + 10 <= n:
                precision = data[pos + 4]
                height = int.from_bytes(data[pos + 5 : pos + 7], "big")
                width = int.from_bytes(data[pos + 7 : pos + 9], "big")
                return "JPEG", width, height, data[pos + 9], 2 if precision > 8 else 1, precision
            if marker in (0xDA, 0xD9) or length < 2:
                break
            pos += 2 + length
        raise DecodeError("corrupt JPEG (no frame header before the image data)")
    raise DecodeError("not a PNG or JPEG file")


def check_limits(kind: str, width: int, height: int, samples: int, nbytes: int, file_bytes: int,
                 limits: dict[str, Any]) -> None:
    """The header against edgecxr's DecodeLimits (values from preprocess.json), before decoding."""
    if max(width, height) > limits["max_side"]:
        raise DecodeError(f"image too large ({width}x{height} px in the {kind} header; at most "
                          f"{limits['max_side']} px per side)")
    if min(width, height) < limits["min_side"]:
        raise DecodeError(f"image too small ({width}x{height} px; at least {limits['min_side']} px per side)")
    if width * height > limits["max_pixels"]:
        raise DecodeError(f"image too large ({width}x{height} px)")
    decoded = width * height * samples * nbytes
    if decoded > limits["max_decoded_bytes"]:
        raise DecodeError(f"image too large ({decoded} bytes decoded)")
    if decoded > limits["ratio_floor_bytes"] and decoded > limits["max_ratio"] * file_bytes:
        raise DecodeError(f"decompression bomb ({decoded} bytes decoded from {file_bytes})")


def reduced_factor(width: int, height: int, size: tuple[int, int], margin: int) -> int:
    """Largest libjpeg scale-down that keeps `margin` x the model input on the short side (else 1)."""
    need = margin * max(size)
    for factor, _flag in _REDUCED:
        if min(width, height) // factor >= need:
            return factor
    return 1


def to_gray(image: np.ndarray) -> np.ndarray:
    """RGB(A) -> BT.601 luma in the input's dtype (rounded), as edgecxr.core.spec.to_gray."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    gray = image[:, :, :3].astype(np.float32) @ _LUMA_RGB
    info = np.iinfo(image.dtype)
    return np.clip(np.rint(gray), info.min, info.max).astype(image.dtype)


def decode(data: bytes, config: dict[str, Any]) -> np.ndarray:
    """Encoded PNG/JPEG bytes -> 2-D gray uint8/uint16 (DICOM: float32 [0, 1] through edgecxr)."""
    limits, spec = config["limits"], config["preprocess"]
    if not data:
        raise DecodeError("empty input")
    if len(data) > limits["max_file_bytes"]:
        raise DecodeError(f"file too large ({len(data)} bytes)")
    if not (data.startswith(_PNG) or data.startswith(_JPEG)):
        if len(data) >= 132 and data[128:132] == b"DICM":
            return _decode_dicom(data)
        raise DecodeError("not a PNG, JPEG or DICOM file (unrecognised header)")
    kind, width, height, samples, nbytes, precision = header(data)
    check_limits(kind, width, height, samples, nbytes, len(data), limits)
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    if kind == "JPEG" and precision == 8:
        factor = reduced_factor(width, height, (spec["height"], spec["width"]), config["reduced_decode_margin"])
        flags = dict(_REDUCED).get(factor, flags)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if image is None:
        raise DecodeError(f"corrupt {kind} data (the decoder could not read it)")
    if image.dtype not in (np.uint8, np.uint16):
        raise DecodeError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 3:
        image = image[:, :, 2::-1]  # OpenCV's BGR(A) -> RGB, alpha dropped
    image = np.ascontiguousarray(to_gray(image))
    h, w = image.shape
    if min(h, w) < limits["min_side"]:
        raise DecodeError(f"image too small ({w}x{h} px; at least {limits['min_side']} px per side)")
    return image


def _decode_dicom(data: bytes) -> np.ndarray:
    try:
        from edgecxr.core.errors import ImageLoadError
        from edgecxr.data.io import load_image
    except ImportError:
        raise DecodeError("DICOM input needs edgecxr installed in Triton's Python environment "
                          "(pip install edgecxr); PNG and JPEG need only numpy and OpenCV") from None
    with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return load_image(tmp.name)
        except ImageLoadError as exc:
            raise DecodeError(exc.reason) from None


def preprocess(image: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """2-D gray image -> HxWxC float32, as edgecxr.core.spec.preprocess (version 1)."""
    height, width = spec["height"], spec["width"]
    if image.dtype == np.uint16:  # the 256 levels the models were trained on, before resizing
        image = np.rint(image.astype(np.float32) * np.float32(255.0 / 65535.0)).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.rint(np.clip(image.astype(np.float32), 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
    if image.shape != (height, width):
        shrink = height * width < image.shape[0] * image.shape[1]
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    x = image.astype(np.float32) * np.float32(1.0 / 255.0)
    if spec["scale"] != 1.0 or spec["offset"] != 0.0:
        x = x * np.float32(spec["scale"]) + np.float32(spec["offset"])
    x = x[:, :, None]
    if spec["channels"] == 3:
        x = np.repeat(x, 3, axis=2)
    return np.ascontiguousarray(x, dtype=np.float32)


def tensor_of(data: bytes, config: dict[str, Any]) -> np.ndarray:
    """One encoded file -> the model's HxWxC input."""
    return preprocess(decode(data, config), config["preprocess"])


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else bytes(value)


class TritonPythonModel:
    """Triton's Python-backend entry point: TYPE_STRING `input_name` [B, 1] -> FP32 `output_name` [B, H, W, C]."""

    def initialize(self, args: dict[str, str]) -> None:
        model_config = json.loads(args["model_config"])
        here = Path(__file__).resolve().parent  # the version folder: model.py and preprocess.json
        folder = here if (here / CONFIG_FILE).is_file() else Path(args["model_repository"]) / args["model_version"]
        self.config = load_config(folder)
        self.input_name = model_config["input"][0]["name"]
        self.output_name = model_config["output"][0]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                items = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
                batch = np.stack([tensor_of(_as_bytes(v), self.config) for v in items])
                out = pb_utils.Tensor(self.output_name, batch)
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except (DecodeError, cv2.error, MemoryError) as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses

    def finalize(self) -> None:
        pass
