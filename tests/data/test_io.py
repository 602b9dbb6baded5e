"""load_image / expand_inputs on real files, real encoders and deliberately broken files."""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from cxr_fixtures import example_pngs, make_dicom, write_jpeg, xray
from PIL import Image, ImageOps

from edgecxr.core.errors import DataError, ImageLoadError
from edgecxr.core.spec import preprocess, to_gray
from edgecxr.data.io import expand_inputs, load_image
from edgecxr.data.raster import MAX_SIDE
from edgecxr.models.coronet import CORONET_V1

# --- real files ----------------------------------------------------------------------------------


def test_every_original_decodes_to_its_manifest_size(shared_originals: Path) -> None:
    with open(shared_originals.parent / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 13
    for row in rows:
        image = load_image(shared_originals.parent / row["file"])
        assert image.ndim == 2, row["file"]
        assert image.shape == (int(row["height"]), int(row["width"])), row["file"]
        assert image.dtype == np.uint8
        assert image.std() > 10, f"{row['file']} decoded to a nearly flat image"


def test_originals_match_pillow_luma(shared_originals: Path) -> None:
    """RGB/RGBA sources reduce to BT.601 luma, like the Pillow "L" conversion of the curated set."""
    for name in ("covid__16654_1_1.png", "covid__11547_2020_1203_Fig1_HTML-a.png", "pneumonia_viral__person276_virus_569.jpeg"):
        ours = load_image(shared_originals / name).astype(int)
        ref = np.asarray(ImageOps.exif_transpose(Image.open(shared_originals / name)).convert("L")).astype(int)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() <= 2, name  # integer vs float rounding, JPEG IDCT differences


def test_curated_pngs_decode_exactly(shared_cxr: Path) -> None:
    """The curated PNGs carry (invalid) ICC chunks that are dropped before decoding: pixels unchanged."""
    paths = sorted((shared_cxr / "images").glob("*/*.png"))[::97]
    assert len(paths) >= 10
    for p in paths:
        assert np.array_equal(load_image(p), np.asarray(Image.open(p).convert("L"))), p


def test_invalid_icc_profile_is_silent_and_changes_no_pixel(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Gray PNGs with an RGB ICC profile (as Pillow writes them) make libpng warn on every decode."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(xray(0)).save(tmp_path / "icc.png", icc_profile=icc)
    capfd.readouterr()
    out = load_image(tmp_path / "icc.png")
    assert np.array_equal(out, xray(0))
    assert "libpng" not in capfd.readouterr().err


def test_examples_decode_and_preprocess(examples: Path) -> None:
    for p in example_pngs():
        image = load_image(p)
        assert image.dtype == np.uint8 and image.ndim == 2 and min(image.shape) == 256
        x = preprocess(image, CORONET_V1)
        assert x.shape == (150, 150, 3) and -1.0 <= x.min() < x.max() <= 1.0


# --- bit depths, color types, orientation ---------------------------------------------------------


def test_16bit_gray_png_is_exact(tmp_path: Path) -> None:
    a = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), a)
    out = load_image(tmp_path / "g16.png")
    assert out.dtype == np.uint16 and np.array_equal(out, a)


def test_16bit_rgb_png_keeps_depth(tmp_path: Path) -> None:
    rgb = np.zeros((40, 50, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 60000, 30000, 1000
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    out = load_image(tmp_path / "c16.png")
    assert out.dtype == np.uint16
    assert np.all(out == round(0.299 * 60000 + 0.587 * 30000 + 0.114 * 1000))


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    rgb = np.stack([xray(0), xray(0) // 2, np.full_like(xray(0), 200)], axis=2)
    alpha = np.zeros(rgb.shape[:2], np.uint8)  # fully transparent: must still be ignored
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.shape == rgb.shape[:2] and np.array_equal(out, to_gray(rgb))


def test_palette_png_is_expanded(tmp_path: Path) -> None:
    gray = xray(1)
    Image.fromarray(gray).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
        ref = np.asarray(im.convert("L")).astype(int)
    out = load_image(tmp_path / "p.png")
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert len(np.unique(out)) > 16  # palette entries, not raw indices


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    im = Image.fromarray((np.arange(40 * 30).reshape(30, 40) % 256).astype(np.uint8)).convert("P")
    im.save(tmp_path / "pt.png", transparency=0)
    assert load_image(tmp_path / "pt.png").shape == (30, 40)


def test_low_bit_and_gray_alpha_pngs(tmp_path: Path) -> None:
    bw = np.zeros((32, 32), bool)
    bw[:, 16:] = True
    Image.fromarray(bw).save(tmp_path / "bw.png")
    assert set(np.unique(load_image(tmp_path / "bw.png"))) == {0, 255}
    Image.new("LA", (40, 30), (100, 7)).save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.shape == (30, 40) and np.all(out == 100)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    """The curated set applied EXIF orientation (Pillow exif_transpose); so must the runtime."""
    a = xray(2)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(tmp_path / "rot.jpg")
    ref = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg")))
    assert out.shape == (a.shape[1], a.shape[0]) == ref.shape
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 2


def test_format_comes_from_content_not_suffix(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "x.png"), xray(3))
    (tmp_path / "really_png.jpg").write_bytes((tmp_path / "x.png").read_bytes())
    assert np.array_equal(load_image(tmp_path / "really_png.jpg"), xray(3))
    (tmp_path / "really_png.dcm").write_bytes((tmp_path / "x.png").read_bytes())
    assert np.array_equal(load_image(tmp_path / "really_png.dcm"), xray(3))
    # A DICOM named .png is recognised by its preamble.
    make_dicom(tmp_path / "dicom.png", xray(3))
    out = load_image(tmp_path / "dicom.png")
    assert out.dtype == np.float32 and out.shape == xray(3).shape


# --- broken files --------------------------------------------------------------------------------


def _png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def _tiny_png_with_header(width: int, height: int) -> bytes:
    """A few hundred bytes that claim a width x height 8-bit gray image (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _broken_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, substring expected in the reason)."""
    png = tmp_path / "good.png"
    cv2.imwrite(str(png), xray(4))
    png_bytes = png.read_bytes()
    jpg = write_jpeg(tmp_path / "good.jpg", xray(4))
    jpg_bytes = jpg.read_bytes()
    iend = png_bytes.rindex(b"IEND") - 4
    idat = png_bytes.index(b"IDAT") + 4
    cases: dict[str, tuple[bytes | None, str, str]] = {
        "empty.png": (b"", "empty file", ""),
        "text.png": (b"hello, this is not an image\n" * 4, "text file", ""),
        "text.dcm": (b"patient,label\n1,covid\n" * 10, "not a DICOM", ""),
        "gif.png": (b"GIF89a" + b"\0" * 200, "GIF", ""),
        "png_cut_in_idat.png": (png_bytes[: len(png_bytes) // 2], "truncated PNG", ""),
        "png_no_iend.png": (png_bytes[:iend], "truncated PNG", ""),
        "png_bad_idat.png": (png_bytes[:idat + 10] + bytes(200) + png_bytes[idat + 210:], "corrupt PNG", ""),
        "png_bad_ihdr.png": (png_bytes[:8] + _png_chunk(b"tEXt", b"a\0b") + png_bytes[8:], "IHDR", ""),
        "png_bomb.png": (_tiny_png_with_header(100_000, 100_000), "too large", ""),
        "png_tiny.png": (_tiny_png_with_header(8, 8), "too small", ""),
        "jpeg_cut_90.jpg": (jpg_bytes[: int(len(jpg_bytes) * 0.9)], "truncated JPEG", ""),
        "jpeg_no_eoi.jpg": (jpg_bytes[:-2], "no end-of-image", ""),
        "jpeg_cut_in_header.jpg": (jpg_bytes[:100], "truncated JPEG", ""),
        "jpeg_garbage_header.jpg": (b"\xff\xd8" + b"\x12\x34" * 100, "corrupt JPEG header", ""),
        "jpeg_bomb.jpg": (_jpeg_with_size(jpg_bytes, 60000, 60000), "too large", ""),
    }
    out = {}
    for name, (data, reason, _) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        out[name] = (p, reason)
    out["missing.png"] = (tmp_path / "missing.png", "file not found")
    (tmp_path / "folder.png").mkdir()
    out["folder.png"] = (tmp_path / "folder.png", "directory")
    return out


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    sof = data.index(b"\xff\xc0")
    patched = bytearray(data)
    patched[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(patched)


def test_broken_files_raise_image_load_error(tmp_path: Path) -> None:
    for name, (path, reason) in _broken_files(tmp_path).items():
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        err = info.value
        assert reason.lower() in err.reason.lower(), f"{name}: {err.reason}"
        assert str(path) in str(err) and err.path == str(path)
        assert "\n" not in str(err), f"{name}: reason is not one line"


def test_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """The header is read, not the pixels: the reason quotes the header size."""
    p = tmp_path / "bomb.png"
    p.write_bytes(_tiny_png_with_header(MAX_SIDE + 1, 20))
    with pytest.raises(ImageLoadError, match=f"{MAX_SIDE + 1}x20 px in the PNG header"):
        load_image(p)


def test_trailing_bytes_after_jpeg_eoi_are_accepted(tmp_path: Path) -> None:
    p = write_jpeg(tmp_path / "trail.jpg", xray(5))
    p.write_bytes(p.read_bytes() + b"camera junk after EOI")
    assert load_image(p).shape == xray(5).shape


# --- input expansion ---------------------------------------------------------------------------


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    for rel in ("b.png", "a.JPG", "sub/c.jpeg", "sub/deeper/d.dcm", "sub/e.dicom", ".hidden.png", "notes.txt",
                ".cache/x.png"):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    make_dicom(root / "sub" / "IM0001", xray(0))  # suffix-less DICOM (PACS export)
    make_dicom(root / "DICOMDIR", xray(0))  # a directory record, not an image
    (root / "README").write_text("not dicom")
    return root


def test_expand_folder_is_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    got = [p.relative_to(root).as_posix() for p in expand_inputs([root])]
    assert got == ["a.JPG", "b.png", "sub/IM0001", "sub/c.jpeg", "sub/deeper/d.dcm", "sub/e.dicom"]


def test_expand_files_globs_order_and_dedupe(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    items = [root / "notes.txt", str(root / "sub" / "*.jpeg"), str(root / "**" / "*.dcm"), root / "b.png", root / "sub"]
    got = [p.relative_to(root).as_posix() for p in expand_inputs(items)]
    # explicit files are kept whatever their suffix; a path reached twice is listed once
    assert got == ["notes.txt", "sub/c.jpeg", "sub/deeper/d.dcm", "b.png", "sub/IM0001", "sub/e.dicom"]


def test_expand_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="pattern matches no files"):
        expand_inputs([str(tmp_path / "*.png")])
    with pytest.raises(DataError, match="no such file or folder"):
        expand_inputs([tmp_path / "nope.png"])
    with pytest.raises(DataError, match="folder contains no PNG, JPEG or DICOM"):
        expand_inputs([tmp_path / "empty"])
