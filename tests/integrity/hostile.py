"""Generators of hostile and good image files for the integrity campaign.

Every file is made here from a committed example X-ray (examples/images, CC BY) by real encoders
(OpenCV, pydicom) and byte surgery; PNG chunks get correct CRCs unless the case is about the CRC,
so a lie in a header is caught by the header rule and not by accident.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import cv2
import numpy as np

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
PNG_SIG = b"\x89PNG\r\n\x1a\n"


@cache
def example(index: int = 0, side: int = 256) -> np.ndarray:
    """Committed example X-ray `index`, resized so its short side is `side` (uint8 gray)."""
    paths = sorted(EXAMPLES.glob("*/*.png"))
    image = cv2.imread(str(paths[index % len(paths)]), cv2.IMREAD_GRAYSCALE)
    h, w = image.shape
    scale = side / min(h, w)
    return cv2.resize(image, (max(16, round(w * scale)), max(16, round(h * scale))), interpolation=cv2.INTER_AREA)


def encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok, ext
    return buf.tobytes()


def good_png(index: int = 0) -> bytes:
    return encode(example(index), ".png")


def good_jpeg(index: int = 0, quality: int = 90) -> bytes:
    return encode(example(index), ".jpg", cv2.IMWRITE_JPEG_QUALITY, quality)


# -- PNG chunk surgery ------------------------------------------------------------------------------
def chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], len(PNG_SIG)
    while pos + 8 <= len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def assemble(parts: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIG + b"".join(chunk(k, d) for k, d in parts)


def png_claiming(width: int, height: int, bit_depth: int = 8, color: int = 0, idat: bytes | None = None) -> bytes:
    """A PNG whose IHDR claims width x height, with a small valid zlib stream of zeros as IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    data = idat if idat is not None else zlib.compress(b"\0" * 65536, 9)
    return assemble([(b"IHDR", ihdr), (b"IDAT", data), (b"IEND", b"")])


def png_bomb() -> bytes:
    """16384 x 16384 RGBA 16-bit (2 GiB decoded) from a ~2 MB zlib stream of zero rows."""
    comp = zlib.compressobj(9)
    row = b"\0" * (1 + 16384 * 8)
    body = b"".join(comp.compress(row) for _ in range(2048)) + comp.flush()
    return png_claiming(16384, 16384, 16, 6, idat=body)


def png_bad_crc(png: bytes, which: bytes = b"IDAT") -> bytes:
    parts = chunks(png)
    out = PNG_SIG
    for k, d in parts:
        out += chunk(k, d, crc=(zlib.crc32(k + d) ^ 0x5A5A5A5A) & 0xFFFFFFFF) if k == which else chunk(k, d)
    return out


def png_flip(png: bytes, fraction: float) -> bytes:
    """Flip one byte inside the IDAT data at `fraction` of it (the CRC is left as it was)."""
    idat_start = png.index(b"IDAT") + 4
    idat_len = struct.unpack(">I", png[idat_start - 8 : idat_start - 4])[0]
    pos = idat_start + min(idat_len - 1, int(idat_len * fraction))
    return png[:pos] + bytes([png[pos] ^ 0xFF]) + png[pos + 1 :]


def png_truncated_idat(png: bytes, fraction: float) -> bytes:
    """The IDAT data cut to `fraction` (with a correct CRC for what is left) and IEND kept."""
    parts = [(k, d[: max(1, int(len(d) * fraction))] if k == b"IDAT" else d) for k, d in chunks(png)]
    return assemble(parts)


def png_without_iend(png: bytes) -> bytes:
    return assemble([(k, d) for k, d in chunks(png) if k != b"IEND"])


# -- JPEG surgery -------------------------------------------------------------------------------------
def jpeg_scan_start(jpg: bytes) -> int:
    """Offset of the entropy-coded data (after the SOS segment)."""
    sos = jpg.index(b"\xff\xda")
    (length,) = struct.unpack(">H", jpg[sos + 2 : sos + 4])
    return sos + 2 + length


def jpeg_half_with_eoi(jpg: bytes, fraction: float) -> bytes:
    """Cut inside the scan at `fraction` of it, then append an end-of-image marker."""
    start = jpeg_scan_start(jpg)
    cut = start + int((len(jpg) - 2 - start) * fraction)
    return jpg[:cut] + b"\xff\xd9"


def jpeg_garbage_in_scan(jpg: bytes, fraction: float, seed: int) -> bytes:
    """64 random bytes (with a stray marker) written over the scan at `fraction` of it."""
    start = jpeg_scan_start(jpg)
    pos = start + int((len(jpg) - 2 - start) * fraction)
    junk = bytearray(np.random.default_rng(seed).integers(0, 256, 64, dtype=np.uint8).tobytes())
    junk[10:12] = b"\xff\xd4"  # an RST marker out of sequence
    return jpg[:pos] + bytes(junk) + jpg[pos + 64 :]


def jpeg_claiming(jpg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its SOF0 frame header claiming width x height."""
    sof = jpg.index(b"\xff\xc0")
    return jpg[: sof + 5] + struct.pack(">HH", height, width) + jpg[sof + 9 :]


# -- DICOM -------------------------------------------------------------------------------------------------
def dicom_bytes(pixels: np.ndarray, jpeg: bool = False, frame: bytes | None = None, **attrs: object) -> bytes:
    """A DX DICOM (native pixels, or baseline JPEG when `jpeg`; `frame` replaces the JPEG) as bytes."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    ds.set_pixel_data(pixels, "MONOCHROME2", pixels.dtype.itemsize * 8)
    if jpeg:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([frame or encode(pixels, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95)])
        ds["PixelData"].VR = "OB"
    for key, value in attrs.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_short_pixels(pixels: np.ndarray) -> bytes:
    """A native DICOM whose PixelData holds half the Rows x Columns bytes it should."""
    data = dicom_bytes(pixels)
    n = pixels.size * pixels.dtype.itemsize
    half = n // 2
    # PixelData is the last element: shorten its value and fix its 4-byte length (OB/OW: 32-bit length)
    tag = data.rindex(b"\xe0\x7f\x10\x00")
    head = data[: tag + 8]  # tag (4) + VR (2) + reserved (2)
    return head + struct.pack("<I", half) + data[tag + 12 : tag + 12 + half]


#: name -> (maker, suffix, accepted): files made from the examples; `accepted` False means every
#: entry point must report the file as a per-file error and go on with the others
IMAGES: dict[str, tuple[Callable[[], bytes], str, bool]] = {
    # good ones: the rules must not refuse what is fine
    "good-png": (lambda: good_png(1), ".png", True),
    "good-jpeg": (lambda: good_jpeg(2), ".jpg", True),
    "good-png16": (lambda: encode(example(3).astype(np.uint16) * 257, ".png"), ".png", True),
    "good-rgb-png": (lambda: encode(cv2.cvtColor(example(4), cv2.COLOR_GRAY2BGR), ".png"), ".png", True),
    "good-gray-alpha-png": (
        lambda: encode(cv2.cvtColor(example(5), cv2.COLOR_GRAY2BGRA), ".png"), ".png", True),
    "good-jpeg-q30": (lambda: good_jpeg(6, 30), ".jpg", True),
    "good-progressive-jpeg": (
        lambda: encode(example(7), ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1), ".jpg", True),
    "good-png-named-jpg": (lambda: good_png(8), ".jpg", True),
    "good-dicom": (lambda: dicom_bytes(example(9)), ".dcm", True),
    "good-dicom16": (lambda: dicom_bytes(example(10).astype(np.uint16) * 16), ".dcm", True),
    # not images at all
    "empty": (lambda: b"", ".png", False),
    "text-as-png": (lambda: b"this is not an X-ray\n" * 10, ".png", False),
    "text-as-jpg": (lambda: b"GIF89a? no.\n" * 10, ".jpg", False),
    "text-as-dcm": (lambda: b"not dicom\n" * 40, ".dcm", False),
    "random-bytes": (lambda: np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes(), ".png", False),
    "png-signature-only": (lambda: PNG_SIG, ".png", False),
    "jpeg-soi-only": (lambda: b"\xff\xd8", ".jpg", False),
    "html-as-png": (lambda: b"<!doctype html><html><body>404</body></html>", ".png", False),
    "gif": (lambda: b"GIF89a" + b"\x01\x00\x01\x00\x80\x00\x00" + b"\0" * 30, ".png", False),
    "bmp": (lambda: encode(example(0), ".bmp"), ".png", False),
    "tiff": (lambda: encode(example(0), ".tiff"), ".jpg", False),
    # PNG: corruption
    "png-bad-idat-crc": (lambda: png_bad_crc(good_png(0)), ".png", False),
    "png-bad-ihdr-crc": (lambda: png_bad_crc(good_png(0), b"IHDR"), ".png", False),
    "png-no-iend": (lambda: png_without_iend(good_png(0)), ".png", False),
    **{f"png-truncated-{int(f * 100)}": ((lambda f=f: good_png(0)[: int(len(good_png(0)) * f)]), ".png", False)
       for f in (0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)},
    **{f"png-idat-cut-{int(f * 100)}": ((lambda f=f: png_truncated_idat(good_png(0), f)), ".png", False)
       for f in (0.1, 0.5, 0.9)},
    **{f"png-flip-{int(f * 100)}": ((lambda f=f: png_flip(good_png(0), f)), ".png", False)
       for f in (0.0, 0.25, 0.5, 0.75, 0.999)},
    # PNG: sizes that lie or are out of bounds (correct CRCs)
    "png-bomb-16k-rgba16": (png_bomb, ".png", False),
    "png-claims-60000": (lambda: png_claiming(60000, 60000), ".png", False),
    "png-claims-0x0": (lambda: png_claiming(0, 0), ".png", False),
    "png-claims-8x8": (lambda: png_claiming(8, 8), ".png", False),
    "png-claims-16x100000": (lambda: png_claiming(16, 100000), ".png", False),
    "png-claims-15000-8bit": (lambda: png_claiming(15000, 15000), ".png", False),
    "png-bad-bit-depth": (lambda: png_claiming(256, 256, bit_depth=7), ".png", False),
    # JPEG: corruption
    **{f"jpeg-truncated-{int(f * 100)}": ((lambda f=f: good_jpeg(0)[: int(len(good_jpeg(0)) * f)]), ".jpg", False)
       for f in (0.01, 0.1, 0.5, 0.9, 0.99)},
    **{f"jpeg-half-plus-eoi-{int(f * 100)}": ((lambda f=f: jpeg_half_with_eoi(good_jpeg(0), f)), ".jpg", False)
       for f in (0.1, 0.3, 0.5, 0.7, 0.9)},
    **{f"jpeg-garbage-{int(f * 100)}-{s}": ((lambda f=f, s=s: jpeg_garbage_in_scan(good_jpeg(0), f, s)), ".jpg", False)
       for f in (0.2, 0.5, 0.8) for s in (1, 2)},
    "jpeg-claims-16000": (lambda: jpeg_claiming(good_jpeg(0), 16000, 16000), ".jpg", False),
    "jpeg-claims-0-high": (lambda: jpeg_claiming(good_jpeg(0), 256, 0), ".jpg", False),
    "jpeg-claims-70000": (lambda: jpeg_claiming(good_jpeg(0), 65535, 65535), ".jpg", False),
    # DICOM: corruption
    "dicom-half-file": (lambda: dicom_bytes(example(0))[: len(dicom_bytes(example(0))) // 2], ".dcm", False),
    "dicom-short-pixel-data": (lambda: dicom_short_pixels(example(0)), ".dcm", False),
    "dicom-no-pixels": (lambda: dicom_bytes(example(0))[: dicom_bytes(example(0)).rindex(b"\xe0\x7f\x10\x00")],
                        ".dcm", False),
    "dicom-jpeg-half": (lambda: _half_jpeg_dicom(), ".dcm", False),
    # DICOM: a header that turns every pixel into one value
    "dicom-rescale-slope-0": (lambda: dicom_bytes(example(9), RescaleSlope="0", RescaleIntercept="100"), ".dcm", False),
}


def _half_jpeg_dicom() -> bytes:
    """A JPEG-baseline DICOM whose JPEG frame lost its second half (end marker appended)."""
    jpg = encode(example(0), ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95)
    return dicom_bytes(example(0), jpeg=True, frame=jpeg_half_with_eoi(jpg, 0.5))
