"""The calibrators of stages/confidence/calibrate.py on synthetic data with a known miscalibration.

The truth is built from the calibrator's own form: probabilities `raw` a model reports, labels drawn
from q = Calibrator(true params).apply(raw). A fit must recover the true parameters, lower NLL to
about the truth's, and the cross-validated choice must prefer a calibrator over the raw
probabilities when the miscalibration is real (and not when there is none).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgecxr.runtime.confidence import Calibrator
from edgecxr.stages.confidence import calibrate, fit


def _raw(n: int, c: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, c))
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def _labels(truth: Calibrator, raw: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(truth.apply(raw), dtype=np.float64)
    u = np.random.default_rng(seed).random(len(q))[:, None]
    return (u > np.cumsum(q, axis=1)).sum(axis=1).clip(0, q.shape[1] - 1), q


VECTOR = Calibrator("vector", scale=np.array([0.5, 0.8, 0.4, 0.7]), bias=np.array([0.6, -0.4, 0.1, -0.3]))
DIRICHLET = Calibrator("dirichlet", weights=np.array([[0.6, 0.2, 0.0, 0.0], [0.0, 0.5, 0.0, 0.2],
                                                      [0.1, 0.0, 0.7, 0.0], [0.0, 0.0, 0.2, 0.4]]),
                       bias=np.array([0.3, -0.2, 0.0, -0.1]))


def test_vector_scaling_recovers_the_known_scales_and_biases():
    raw = _raw(4000)
    y, q = _labels(VECTOR, raw)
    got = calibrate.fit_vector(raw, y)
    # the biases are defined up to a common shift (softmax); compare them centred
    np.testing.assert_allclose(got.scale, VECTOR.scale, atol=0.15)  # identity is 0.3 to 0.6 away
    np.testing.assert_allclose(got.bias - got.bias.mean(), VECTOR.bias - VECTOR.bias.mean(), atol=0.2)
    assert fit.nll(got.apply(raw), y) < fit.nll(raw, y) - 0.1
    assert fit.nll(got.apply(raw), y) == pytest.approx(fit.nll(q, y), abs=0.01)


def test_dirichlet_recovers_the_known_matrix_and_lowers_nll():
    raw = _raw(4000, seed=2)
    y, q = _labels(DIRICHLET, raw, seed=3)
    got, info = calibrate.fit_calibrator("dirichlet", raw, y)
    assert info["l2"] in calibrate.DIRICHLET_L2
    # W is defined up to adding one vector to every row (softmax shift): compare row differences
    np.testing.assert_allclose(np.diff(got.weights, axis=0), np.diff(DIRICHLET.weights, axis=0), atol=0.12)
    assert fit.nll(got.apply(raw), y) < fit.nll(raw, y) - 0.1
    assert fit.nll(got.apply(raw), y) == pytest.approx(fit.nll(q, y), abs=0.01)
    assert calibrate.ece(raw, got.apply(raw), y) < calibrate.ece(raw, raw, y) / 2


def test_temperature_and_none_through_the_same_entry_point():
    raw = _raw(3000, seed=4)
    truth = Calibrator("temperature", temperature=2.0)
    y, _ = _labels(truth, raw, seed=5)
    got, _ = calibrate.fit_calibrator("temperature", raw, y)
    assert got.temperature == pytest.approx(2.0, rel=0.1)
    assert (got.apply(raw).argmax(1) == raw.argmax(1)).all()  # a temperature never relabels
    none, _ = calibrate.fit_calibrator("none", raw, y)
    assert none.apply(raw) is raw
    with pytest.raises(ValueError, match="unknown calibrator"):
        calibrate.fit_calibrator("platt", raw, y)


def test_cross_validation_prefers_a_calibrator_only_when_there_is_something_to_fix():
    raw = _raw(400, seed=6)
    y, _ = _labels(VECTOR, raw, seed=7)
    choice = calibrate.cross_validate(raw, y, repeats=2)
    assert choice.kind != "none"
    assert choice.table[choice.kind]["cv_ece"] < choice.table["none"]["cv_ece"]
    # labels drawn from the raw probabilities themselves: nothing to fix. A fit may still show a lower
    # CV ECE (confidences pulled together fall in fewer bins), but its CV NLL is worse: not chosen
    honest, _ = _labels(Calibrator(), raw, seed=8)
    choice = calibrate.cross_validate(raw, honest, kinds=("none", "vector", "dirichlet"), repeats=2)
    assert choice.kind == "none", choice.table
    assert all(row["cv_nll"] > choice.table["none"]["cv_nll"] for k, row in choice.table.items() if k != "none")


def test_reported_ece_is_the_calibrated_labels_probability():
    raw = np.array([[0.6, 0.4], [0.6, 0.4], [0.3, 0.7]], dtype=np.float32)
    calibrated = np.array([[0.45, 0.55], [0.45, 0.55], [0.2, 0.8]])
    labels, conf = calibrate.reported(raw, calibrated)
    assert labels.tolist() == [1, 1, 1] and conf.tolist() == [0.55, 0.55, 0.8]  # the calibrator moved two labels
    y = np.array([0, 1, 1])
    # bins: 0.55 holds two images (one right), 0.8 one (right): |0.5 - 0.55| * 2/3 + |1 - 0.8| / 3
    assert calibrate.ece(raw, calibrated, y) == pytest.approx(0.05 * 2 / 3 + 0.2 / 3)


def test_fast_ece_matches_the_reliability_table_and_the_bootstrap_brackets_it():
    raw = _raw(400, seed=9)
    y, _ = _labels(VECTOR, raw, seed=10)
    cal = calibrate.fit_vector(raw, y)
    q = cal.apply(raw)
    labels, conf = calibrate.reported(raw, q)
    assert calibrate._ece_of(conf, labels == y) == pytest.approx(calibrate.ece(raw, q, y), abs=1e-9)
    lo, hi = calibrate.bootstrap_ece(raw, q, y, n=300)
    # resampling with replacement thins the bins, so bootstrap ECEs sit above the sample's own
    # (the interval may even start above it): only its upper end is sure to lie above it
    assert lo < hi and calibrate.ece(raw, q, y) < hi
    lo2, hi2 = calibrate.bootstrap_ece(raw[:100], q[:100], y[:100], n=300)
    assert hi2 - lo2 > hi - lo  # fewer images, wider interval


def test_a_perfectly_calibrated_model_still_shows_ece_that_shrinks_with_more_images():
    small, large = _raw(126, seed=11), _raw(5000, seed=11)
    floor_small = calibrate.calibrated_ece(small, small, n=300)
    floor_large = calibrate.calibrated_ece(large, large, n=100)
    assert floor_small["mean"] > 0.02 and floor_small["p95"] > floor_small["mean"]
    assert floor_large["mean"] < floor_small["mean"] / 3
