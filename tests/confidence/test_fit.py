"""The statistics of stages/confidence/fit.py on synthetic data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from edgecxr.runtime.confidence import apply_temperature
from edgecxr.stages.confidence import fit


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities that are softmax(3 * true logits): calibrated at T = 3 by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, 4))
    p_true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p_true])
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    return sharp.astype(np.float32), y, 3.0


def test_temperature_recovers_the_known_one_and_lowers_ece():
    probs, y, truth = _overconfident()
    t = fit.fit_temperature(probs, y)
    assert t == pytest.approx(truth, rel=0.1)
    before, after = fit.reliability(probs, y)["ece"], fit.reliability(apply_temperature(probs, t), y)["ece"]
    assert after < before / 2 and after < 0.03
    assert fit.nll(apply_temperature(probs, t), y) < fit.nll(probs, y)


def test_temperature_keeps_every_label():
    probs, y, _ = _overconfident(500)
    scaled = apply_temperature(probs, 2.7)
    assert (scaled.argmax(1) == probs.argmax(1)).all()
    assert np.allclose(scaled.sum(1), 1, atol=1e-5)
    assert apply_temperature(probs, None) is probs


def test_reliability_bins_count_every_image():
    probs, y, _ = _overconfident(300)
    rel = fit.reliability(probs, y)
    assert sum(b["n"] for b in rel["bins"]) == 300 and 0 <= rel["ece"] <= 1


def test_mahalanobis_separates_far_points_and_threshold_passes_99_percent():
    rng = np.random.default_rng(1)
    means = rng.normal(0, 5, (3, 32))
    y = rng.integers(0, 3, 3000)
    feats = means[y] + rng.normal(0, 1, (3000, 32))
    score = fit.fit_mahalanobis(feats, y, 3)
    y_val = rng.integers(0, 3, 1000)
    inside = score.score(None, means[y_val] + rng.normal(0, 1, (1000, 32)))
    outside = score.score(None, rng.normal(0, 1, (200, 32)) * 4 + 20)
    assert fit.auroc(inside, outside) > 0.99
    thr = fit.threshold_for(inside)
    assert 0.99 <= np.mean(inside <= thr) <= 0.995  # conformal rank: at least the target, not far above
    assert np.mean(outside > thr) > 0.95


def test_threshold_is_the_conformal_rank():
    scores = np.arange(1, 130, dtype=float)  # 129 val images, as in the shared data
    assert fit.threshold_for(scores) == pytest.approx(129.0 * (1 + fit.SCORE_TOLERANCE))  # ceil(130 * 0.99) = 129: every val image passes
    assert fit.threshold_for(np.arange(1, 1001, dtype=float)) == pytest.approx(991.0 * 1.0001)  # ceil(1001 * 0.99) = 991
    assert 129.0 * (1 + 1e-6) <= fit.threshold_for(scores) < 129.1  # the film that sets it passes despite run-to-run noise
    assert fit.threshold_for(scores, target=0.5) == pytest.approx(65.0 * 1.0001)


def test_auroc_known_values():
    assert fit.auroc([0, 1, 2], [3, 4]) == 1.0
    assert fit.auroc([3, 4], [0, 1, 2]) == 0.0
    assert fit.auroc([1, 1], [1, 1]) == 0.5
    fpr, tpr = fit.roc_curve(np.array([0.9, 0.8, 0.1]), np.array([1, 0, 1]))
    assert fpr[-1] == tpr[-1] == 1 and fpr[0] == tpr[0] == 0


def test_energy_score_is_higher_for_flat_logits():
    w = np.eye(4)
    score = fit.energy_score(w, np.zeros(4))
    confident, flat = np.array([[10.0, 0, 0, 0]]), np.array([[0.1, 0.1, 0.1, 0.1]])
    assert score.score(None, flat)[0] > score.score(None, confident)[0]
