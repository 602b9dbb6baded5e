"""DICOM decoding on files synthesised with pydicom: LUT chain, inversion, compression, refusals."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from cxr_fixtures import make_dicom, xray
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import UID, JPEGBaseline8Bit, RLELossless

from edgecxr.core.errors import ImageLoadError
from edgecxr.core.spec import preprocess
from edgecxr.data.dicom import load_dicom
from edgecxr.data.io import load_image
from edgecxr.models.cnn_lstm import CNN_LSTM_V1


def ramp12() -> np.ndarray:
    """48x64 uint16 ramp over 12 bits (0..4095), with a bright corner so min/max are known."""
    a = (np.arange(48 * 64).reshape(48, 64) * 4095 // (48 * 64 - 1)).astype(np.uint16)
    return a


def test_monochrome2_scales_min_max_to_unit(dicom_factory) -> None:
    a = ramp12()
    out = load_image(dicom_factory("m2.dcm", a, bits_stored=12))
    assert out.dtype == np.float32 and out.shape == a.shape
    np.testing.assert_allclose(out, (a - a.min()) / (a.max() - a.min()), atol=1e-6)


def test_monochrome1_is_inverted(dicom_factory) -> None:
    a = ramp12()
    m2 = load_image(dicom_factory("m2.dcm", a, bits_stored=12))
    m1 = load_image(dicom_factory("m1.dcm", a, photometric="MONOCHROME1", bits_stored=12))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == pytest.approx(1.0) and m1[-1, -1] == pytest.approx(0.0)
    # INVERSE is MONOCHROME1's expected presentation shape: the same inversion, not a second one.
    m1i = load_image(dicom_factory("m1i.dcm", a, photometric="MONOCHROME1", bits_stored=12, PresentationLUTShape="INVERSE"))
    np.testing.assert_allclose(m1i, m1, atol=1e-6)


def test_rescale_slope_intercept_then_window(dicom_factory) -> None:
    """Window Center/Width apply to rescaled values; output range is the rescaled stored range."""
    a = ramp12()
    slope, intercept, center, width = 2.0, -1000.0, 3000.0, 2001.0
    out = load_image(
        dicom_factory("win.dcm", a, bits_stored=12, RescaleSlope=slope, RescaleIntercept=intercept,
                      WindowCenter=center, WindowWidth=width)
    )
    v = a.astype(np.float64) * slope + intercept
    c, w = center - 0.5, width - 1  # DICOM "LINEAR" windowing (PS3.3 C.11.2.1.2.1)
    expected = np.clip((v - c) / w + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert (out == 0).any() and (out == 1).any() and ((out > 0) & (out < 1)).any()


def test_window_wider_than_the_data_is_not_stretched(dicom_factory) -> None:
    """The window, not the image's min/max, defines the display range (low contrast stays low)."""
    a = ramp12()
    out = load_image(dicom_factory("wide.dcm", a, bits_stored=12, WindowCenter=2048, WindowWidth=8193))
    expected = ((a - 2047.5) / 8192 + 0.5)  # LINEAR window onto [0, 4095], then / 4095
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert 0.2 < out.min() < 0.3 and 0.7 < out.max() < 0.8


def test_rescale_without_window_uses_min_max(dicom_factory) -> None:
    a = ramp12()
    out = load_image(dicom_factory("rs.dcm", a, bits_stored=12, RescaleSlope=0.5, RescaleIntercept=-100))
    np.testing.assert_allclose(out, (a - a.min()) / (a.max() - a.min()), atol=1e-6)


def test_signed_pixels(dicom_factory) -> None:
    a = (ramp12().astype(np.int32) - 2048).astype(np.int16)
    out = load_image(dicom_factory("s.dcm", a, bits_stored=12, RescaleSlope=1, RescaleIntercept=0,
                                   WindowCenter=0, WindowWidth=1024))
    assert out[a <= -512].max() == 0.0 and out[a >= 512].min() == 1.0


def test_voi_lut_sequence_is_preferred_over_window(tmp_path: Path) -> None:
    a = (np.arange(48 * 64).reshape(48, 64) % 128).astype(np.uint16)  # uses half of the LUT
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 16]
    lut.LUTData = [min(4095, 16 * i) for i in range(256)]  # 16-bit declared, 12-bit used
    lut["LUTData"].VR = "US"
    p = make_dicom(tmp_path / "lut.dcm", a, bits_stored=8, VOILUTSequence=Sequence([lut]),
                   WindowCenter=10, WindowWidth=2)
    out = load_image(p)
    expected = np.minimum(4095, 16 * a) / 4080.0  # the LUT's own output range [0, 4080]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.max() == pytest.approx(16 * 127 / 4080)


def test_8bit_and_preprocess(dicom_factory) -> None:
    a = xray(0)
    out = load_image(dicom_factory("8.dcm", a))
    np.testing.assert_allclose(out * 255, (a - a.min()) * 255.0 / (a.max() - a.min()), atol=1e-3)
    x = preprocess(out, CNN_LSTM_V1)
    assert x.shape == (224, 224, 1) and 0.0 <= x.min() < x.max() <= 1.0


def test_rgb_secondary_capture_becomes_luma(dicom_factory) -> None:
    rgb = np.stack([xray(1), xray(1), xray(1)], axis=2)
    out = load_image(dicom_factory("rgb.dcm", rgb, photometric="RGB"))
    np.testing.assert_allclose(out, xray(1) / 255.0, atol=1 / 255)


def test_rle_lossless_equals_native(dicom_factory, tmp_path: Path) -> None:
    a = ramp12()
    native = dicom_factory("native.dcm", a, bits_stored=12)
    ds = dcmread(native)
    ds.compress(RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    assert dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(load_image(tmp_path / "rle.dcm"), load_image(native))


def _jpeg_dicom(path: Path, pixels: np.ndarray, uid: str) -> Path:
    """8-bit MONOCHROME2 DICOM whose pixel data is an OpenCV-encoded baseline JPEG, under `uid`."""
    make_dicom(path, pixels)
    ds = dcmread(path)
    ok, jpg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    ds.file_meta.TransferSyntaxUID = UID(uid)
    ds.PixelData = encapsulate([jpg.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path)
    return path


def test_jpeg_baseline_dicom(tmp_path: Path) -> None:
    if not get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG decoder plugin for pydicom (pip install 'edgecxr[dicom]')")
    a = xray(2)
    out = load_image(_jpeg_dicom(tmp_path / "jpg.dcm", a, JPEGBaseline8Bit))
    ref = (a - a.min()) / float(a.max() - a.min())
    assert out.shape == a.shape and np.abs(out - ref).mean() < 2 / 255


def test_undecodable_transfer_syntax_names_syntax_and_package(tmp_path: Path) -> None:
    htj2k = "1.2.840.10008.1.2.4.201"
    if get_decoder(UID(htj2k)).is_available:
        pytest.skip("an HTJ2K decoder is installed here")
    p = _jpeg_dicom(tmp_path / "htj2k.dcm", xray(3), htj2k)  # bytes are irrelevant: refused up front
    with pytest.raises(ImageLoadError) as info:
        load_image(p)
    reason = info.value.reason
    assert "High-Throughput JPEG 2000" in reason and htj2k in reason and "pylibjpeg-openjpeg" in reason


def test_unsupported_transfer_syntax(tmp_path: Path) -> None:
    p = _jpeg_dicom(tmp_path / "mpeg.dcm", xray(3), "1.2.840.10008.1.2.4.100")
    with pytest.raises(ImageLoadError, match=r"MPEG2 .*cannot be decoded by pydicom"):
        load_image(p)


def test_no_pixel_data(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "sr.dcm", xray(0))
    ds = dcmread(p)
    del ds.PixelData
    ds.save_as(p)
    with pytest.raises(ImageLoadError, match="no pixel data"):
        load_image(p)


def test_multi_frame_is_refused(tmp_path: Path) -> None:
    frames = np.stack([xray(0), xray(0)], axis=0)
    p = make_dicom(tmp_path / "mf.dcm", frames)
    assert int(dcmread(p).NumberOfFrames) == 2
    with pytest.raises(ImageLoadError, match=r"multi-frame DICOM \(2 frames\)"):
        load_image(p)


def test_truncated_pixel_data(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "cut.dcm", ramp12(), bits_stored=12)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 2000])
    with pytest.raises(ImageLoadError, match=r"truncated DICOM pixel data \(4144 of the 6144 bytes"):
        load_image(p)


def test_huge_rows_refused_before_decoding(tmp_path: Path) -> None:
    p = make_dicom(tmp_path / "big.dcm", xray(0))
    ds = dcmread(p)
    ds.Rows = 40000
    ds.save_as(p)
    with pytest.raises(ImageLoadError, match=r"too large \(\d+x40000 px in the DICOM header"):
        load_dicom(p)


def test_dicom_without_preamble(tmp_path: Path) -> None:
    """A bare data set (no 128-byte preamble / file meta), as some old exports write."""
    p = make_dicom(tmp_path / "full.dcm", ramp12(), bits_stored=12)
    ds = dcmread(p)
    del ds.file_meta
    ds.preamble = None
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert bare.read_bytes()[128:132] != b"DICM"
    out = load_image(bare)
    np.testing.assert_allclose(out, load_image(p), atol=1e-6)
