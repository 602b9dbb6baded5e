"""How large an input may be before it is decoded: one frozen `DecodeLimits`, checked from headers.

A decoder allocates whatever a header asks for. A 2 MB PNG whose IHDR claims 16384x16384 RGBA
16-bit is a valid zlib stream of zeros that inflates to 2 GiB (it took 37 s and 7.8 GB before this
check), and a 4 GB file is read whole before anyone looks at it. So every limit here is checked from
what is known *before* the pixels are touched: the file size from `stat`, then the image size,
samples per pixel and bytes per sample from the PNG IHDR, the JPEG SOF or the DICOM header.

Defaults and why (measured on ../shared/data/cxr: 1998 curated PNGs, all 8-bit gray, and the 13
full-size originals in ../shared/data/cxr-originals, the largest a 4280x3520 RGB JPEG):
  * max_file_bytes 256 MiB: the largest real file is 2.0 MB; an uncompressed 16-bit 4300x4300
    DICOM (the largest flat-panel detector) is 37 MB.
  * min_side 16 / max_side 16384 px: below 16 px is an icon, not a radiograph; above 16384 is a
    corrupt header (JPEG itself cannot express more than 65535).
  * max_pixels 8192 x 8192 (67 MP): the largest real image has 15.1 MP; film digitised at 50 um
    (35 x 43 cm) is about 60 MP.
  * max_decoded_bytes 256 MiB (the decoder's output: pixels x samples x bytes per sample): the
    largest real image decodes to 45 MB; an RGB 8-bit 67 MP image (192 MiB) still fits. The gray
    conversion and resize afterwards need a few times this, so this is the knob for small devices.
  * max_ratio 250:1 (decoded bytes / file bytes): measured maximum 9.2:1 for PNG (covid__11547...
    Fig1_HTML-a.png) and 36:1 for JPEG (a 9951-byte 3-channel JPEG, pneumonia_viral__person276...);
    deflate reaches about 1032:1 on zeros, so a PNG bomb cannot hide under this.
  * ratio_floor_bytes 16 MiB: an image that decodes to no more than this is never refused for its
    ratio (a blank 1024x1024 test image compresses 1000:1 and harms no one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecxr.core.errors import ImageLoadError

MiB = 1 << 20


@dataclass(frozen=True)
class DecodeLimits:
    """Size limits applied before decoding; pass one to `load_image(..., limits=)` to change them.

    Attributes:
        max_file_bytes: largest file read at all (checked with stat, before reading).
        min_side, max_side: accepted range of width and height in pixels.
        max_pixels: largest width x height.
        max_decoded_bytes: largest decoder output (width x height x samples x bytes per sample).
        max_ratio: largest decoded bytes / file bytes (decompression bombs).
        ratio_floor_bytes: decoded sizes up to this are not checked against max_ratio.
    """

    max_file_bytes: int = 256 * MiB
    min_side: int = 16
    max_side: int = 16384
    max_pixels: int = 8192 * 8192
    max_decoded_bytes: int = 256 * MiB
    max_ratio: float = 250.0
    ratio_floor_bytes: int = 16 * MiB

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "min_side", "max_side", "max_pixels", "max_decoded_bytes", "max_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DecodeLimits.{name} must be positive, got {getattr(self, name)!r}")
        if self.ratio_floor_bytes < 0:
            raise ValueError(f"DecodeLimits.ratio_floor_bytes must be >= 0, got {self.ratio_floor_bytes!r}")
        if self.min_side > self.max_side:
            raise ValueError(f"DecodeLimits.min_side ({self.min_side}) exceeds max_side ({self.max_side})")


DEFAULT_LIMITS = DecodeLimits()


def check_file_size(path: Path, size: int, limits: DecodeLimits) -> None:
    """Refuse an empty file or one larger than `max_file_bytes` (from stat: nothing read yet)."""
    if size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    if size > limits.max_file_bytes:
        raise ImageLoadError(
            path, f"file too large ({_size(size)}; at most {_size(limits.max_file_bytes)} is read)"
        )


def check_header(
    path: Path,
    kind: str,
    width: int,
    height: int,
    samples: int,
    bytes_per_sample: int,
    file_bytes: int,
    limits: DecodeLimits,
) -> None:
    """Refuse, from header values alone, an image whose decoding would be too large or a bomb.

    `samples` and `bytes_per_sample` describe the decoder's output (e.g. 3 and 1 for a palette
    PNG, which is expanded to RGB); `file_bytes` is what the pixels are decoded from.
    """
    if width <= 0 or height <= 0:
        raise ImageLoadError(path, f"corrupt {kind} header (size {width}x{height})")
    if max(width, height) > limits.max_side:
        raise ImageLoadError(
            path, f"image too large ({width}x{height} px in the {kind} header; at most {limits.max_side} px per side)"
        )
    if min(width, height) < limits.min_side:
        raise ImageLoadError(
            path, f"image too small ({width}x{height} px; at least {limits.min_side} px per side)"
        )
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ImageLoadError(
            path,
            f"image too large ({width}x{height} = {pixels / 1e6:.1f} megapixels in the {kind} header; "
            f"at most {limits.max_pixels / 1e6:.1f} megapixels)",
        )
    decoded = pixels * samples * bytes_per_sample
    if decoded > limits.max_decoded_bytes:
        raise ImageLoadError(
            path,
            f"image too large to decode ({width}x{height} x {samples} sample(s) x {bytes_per_sample} byte(s) = "
            f"{_size(decoded)} in the {kind} header; at most {_size(limits.max_decoded_bytes)})",
        )
    check_expansion(path, f"{kind} header claims {width}x{height}", decoded, file_bytes, limits)


def check_expansion(path: Path, what: str, decoded: int, file_bytes: int, limits: DecodeLimits) -> None:
    """Refuse `decoded` bytes made from `file_bytes` when the ratio says decompression bomb."""
    if decoded <= limits.ratio_floor_bytes:
        return
    ratio = decoded / max(file_bytes, 1)
    if ratio > limits.max_ratio:
        raise ImageLoadError(
            path,
            f"decompression bomb ({what}: {_size(decoded)} from {_size(file_bytes)}, "
            f"{ratio:.0f}:1; at most {limits.max_ratio:.0f}:1)",
        )


def _size(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} bytes"
