"""Reduced-scale JPEG decoding for large scanner images (edgecxr.data.io, `min_size`)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgecxr.core.spec import preprocess
from edgecxr.data.io import load_image
from edgecxr.data.raster import REDUCED_DECODE_MARGIN, reduced_decode_factor
from edgecxr.models.cnn_lstm import CNN_LSTM_V1
from edgecxr.models.coronet import CORONET_V1

BIG = "covid__covid-19-pneumonia-23-day1.jpg"  # 4280x3520 RGB JPEG


@pytest.mark.parametrize(
    "w,h,size,factor",
    [
        (4280, 3520, (150, 150), 8),  # 3520 // 8 = 440 >= 300
        (4280, 3520, (224, 224), 4),  # 440 < 448, 3520 // 4 = 880
        (912, 672, (224, 224), 1),  # 672 // 2 = 336 < 448: decode in full
        (3520, 4280, (150, 150), 8),  # orientation does not matter
        (4280, 3520, None, 1),
    ],
)
def test_factor(w, h, size, factor):
    assert reduced_decode_factor(w, h, size) == factor


def test_margin_is_kept():
    for side in range(100, 5000, 37):
        f = reduced_decode_factor(side, side, (150, 150))
        assert f == 1 or side // f >= REDUCED_DECODE_MARGIN * 150


@pytest.mark.parametrize("spec", [CORONET_V1, CNN_LSTM_V1], ids=lambda s: s.family)
def test_big_jpeg_reduced_close_to_full(shared_originals, spec):
    path = shared_originals / BIG
    full = load_image(path)
    reduced = load_image(path, (spec.height, spec.width))
    assert full.shape == (3520, 4280)
    f = reduced_decode_factor(4280, 3520, (spec.height, spec.width))
    assert reduced.shape == (-(-3520 // f), -(-4280 // f))
    a, b = preprocess(full, spec), preprocess(reduced, spec)
    # Same picture: tiny mean difference (DCT-domain vs area downscaling), in the model's input range.
    span = spec.output_range[1] - spec.output_range[0]
    assert np.abs(a - b).mean() < 0.005 * span
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.995


def test_png_and_small_jpeg_are_not_reduced(shared_originals, tmp_path):
    png = shared_originals / "covid__16654_1_1.png"  # 2200x1992 PNG: no DCT scaling for PNG
    assert load_image(png, (150, 150)).shape == load_image(png).shape
    small = shared_originals / "normal__NORMAL2-IM-1356-0001.jpeg"  # 912x672
    np.testing.assert_array_equal(load_image(small, (224, 224)), load_image(small))


def test_16bit_png_unaffected(tmp_path):
    img = (np.arange(1200 * 1000) % 65536).astype(np.uint16).reshape(1200, 1000)
    path = tmp_path / "x16.png"
    cv2.imwrite(str(path), img)
    np.testing.assert_array_equal(load_image(path, (150, 150)), img)
