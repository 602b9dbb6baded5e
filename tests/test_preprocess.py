"""Golden tests for the one preprocessing function: a silent change to resize, scaling or channel
handling changes these numbers and fails CI (then bump the preprocessing version on purpose)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecxr.core.errors import BundleError, EdgeCXRError
from edgecxr.core.spec import PreprocessSpec, preprocess, to_gray
from edgecxr.models import default_spec
from edgecxr.models.cnn_lstm import CNN_LSTM_V1
from edgecxr.models.coronet import CORONET_V1


def golden_image() -> np.ndarray:
    """A deterministic 480x360 uint8 ramp pattern (no file, no decoder involved)."""
    yy, xx = np.mgrid[0:480, 0:360]
    return ((xx * 3 + yy * 5) % 256).astype(np.uint8)


# (spec, shape, mean, std, min, max, value at [10, 20, 0]) recorded from preprocessing version 1.
GOLDEN = [
    (CORONET_V1, (150, 150, 3), -0.000905217, 0.538535476, -0.937254906, 0.937255025, -0.560784280),
    (CNN_LSTM_V1, (224, 224, 1), 0.499551028, 0.275499970, 0.015686275, 0.984313786, 0.811764777),
]


@pytest.mark.parametrize("spec,shape,mean,std,lo,hi,probe", GOLDEN, ids=lambda v: getattr(v, "id", None))
def test_golden_statistics(spec, shape, mean, std, lo, hi, probe):
    out = preprocess(golden_image(), spec)
    assert out.shape == shape
    assert out.dtype == np.float32
    assert out.flags["C_CONTIGUOUS"]
    assert out.mean() == pytest.approx(mean, abs=1e-6)
    assert out.std() == pytest.approx(std, abs=1e-6)
    assert out.min() == pytest.approx(lo, abs=1e-6)
    assert out.max() == pytest.approx(hi, abs=1e-6)
    assert out[10, 20, 0] == pytest.approx(probe, abs=1e-6)


def test_upscaling_uses_linear_interpolation():
    small = golden_image()[:90, :100]
    out = preprocess(small, CNN_LSTM_V1)
    assert out.shape == (224, 224, 1)
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_coronet_channels_are_identical_copies():
    out = preprocess(golden_image(), CORONET_V1)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_rgb_gray_and_rgba_agree():
    gray = golden_image()
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full_like(gray, 7)[:, :, None]], axis=2)
    ref = preprocess(gray, CNN_LSTM_V1)
    np.testing.assert_array_equal(preprocess(rgb, CNN_LSTM_V1), ref)
    np.testing.assert_array_equal(preprocess(rgba, CNN_LSTM_V1), ref)


def test_luma_weights_are_bt601():
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red -> 0.299 * 255 = 76.2 -> 76
    assert to_gray(rgb)[0, 0] == 76


def test_the_same_film_in_8_bit_16_bit_or_float_gives_the_same_tensor():
    """One film, whatever container (8-bit PNG, 16-bit PNG, a DICOM's float display image), reaches
    the model as the same tensor: every input is rounded to 8-bit levels before resizing. Before,
    the 16-bit/float paths resized between the levels, and an example film's OOD score moved from
    8.38 (PNG) to 8.06 (as DICOM) across the abstention threshold."""
    g8 = golden_image()
    for spec in (CORONET_V1, CNN_LSTM_V1):
        want = preprocess(g8, spec)
        np.testing.assert_array_equal(preprocess(g8.astype(np.uint16) * 257, spec), want)  # exact 8 -> 16 bit
        np.testing.assert_array_equal(preprocess(g8.astype(np.float32) / 255.0, spec), want)  # as load_dicom gives it


def test_float_input_must_be_unit_range():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preprocess(golden_image().astype(np.float32), CNN_LSTM_V1)
    ok = preprocess(golden_image().astype(np.float32) / 255.0, CNN_LSTM_V1)
    np.testing.assert_array_equal(ok, preprocess(golden_image(), CNN_LSTM_V1))


@pytest.mark.parametrize("bad", [np.zeros((0, 0), np.uint8), np.zeros((5, 5, 2), np.uint8), np.zeros((4, 4), np.int32)])
def test_bad_arrays_raise(bad):
    with pytest.raises(ValueError):
        preprocess(bad, CNN_LSTM_V1)


def test_nan_raises():
    img = np.full((32, 32), 0.5, dtype=np.float32)
    img[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        preprocess(img, CNN_LSTM_V1)


def test_spec_round_trip_and_guards():
    spec = CORONET_V1.with_size(224)
    assert spec.input_shape == (224, 224, 3)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert spec.id == "coronet-v1@224x224x3"
    assert CORONET_V1.output_range == (-1.0, 1.0)
    with pytest.raises(BundleError, match="version 2"):
        PreprocessSpec.from_dict({**spec.to_dict(), "version": 2})
    with pytest.raises(BundleError, match="unknown fields"):
        PreprocessSpec.from_dict({**spec.to_dict(), "mean": 0.5})
    with pytest.raises(BundleError, match="incomplete"):
        PreprocessSpec.from_dict({"family": "coronet", "version": 1})
    with pytest.raises(EdgeCXRError, match="unknown model 'resnet'"):
        default_spec("resnet")
