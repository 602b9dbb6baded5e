"""Augmentation and batching (edgecxr.augment): range, fill, determinism, one-hot labels and weights."""

from __future__ import annotations

import numpy as np
import pytest

from edgecxr.core.errors import EdgeCXRError
from edgecxr.stages.train.augment import POLICIES, augment_image, batch_sequence, get_policy, one_hot


def _image(size: int = 40, channels: int = 3) -> np.ndarray:
    v = np.tile(np.linspace(0, 1, size, dtype=np.float32), (size, 1))
    return np.repeat((v * 2 - 1)[..., None], channels, axis=2)  # CoroNet's [-1, 1] scaling


def test_none_policy_is_identity_and_unknown_policy_refused():
    img = _image()
    np.testing.assert_array_equal(augment_image(img, np.random.default_rng(0), POLICIES["none"], 2.0, -1.0), img)
    with pytest.raises(EdgeCXRError, match="flip"):
        get_policy("flip")


@pytest.mark.parametrize("channels", [1, 3])
def test_cxr_policy_keeps_shape_range_and_is_seeded(channels):
    img = _image(channels=channels)
    a = augment_image(img, np.random.default_rng(7), POLICIES["cxr"], 2.0, -1.0)
    b = augment_image(img, np.random.default_rng(7), POLICIES["cxr"], 2.0, -1.0)
    c = augment_image(img, np.random.default_rng(8), POLICIES["cxr"], 2.0, -1.0)
    assert a.shape == img.shape and a.dtype == np.float32
    assert a.min() >= -1.0 - 1e-6 and a.max() <= 1.0 + 1e-6  # stays in the model's input range
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_geometric_fill_is_black_in_model_units():
    big_shift = POLICIES["paper"].__class__(shift=0.5)
    img = np.ones((20, 20, 1), np.float32)  # white everywhere
    out = augment_image(img, np.random.default_rng(1), big_shift, 2.0, -1.0)
    assert out.min() == pytest.approx(-1.0)  # uncovered pixels get the value of intensity 0 (black)


def test_batch_sequence_one_hot_weights_and_reshuffle():
    pytest.importorskip("keras")
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    seq = batch_sequence(x, y, 3, 4, POLICIES["none"], seed=3, class_weights={0: 0.5, 1: 2.0, 2: 2.0})
    assert len(seq) == 3
    xb, yb, wb = seq[0]
    assert xb.shape == (4, 1, 1, 1) and yb.shape == (4, 3)
    ids = xb.reshape(-1).astype(int)
    np.testing.assert_array_equal(yb, one_hot(y[ids], 3))
    np.testing.assert_array_equal(wb, np.where(y[ids] == 0, 0.5, 2.0))
    seen = np.concatenate([seq[i][0].reshape(-1) for i in range(len(seq))])
    assert sorted(seen.astype(int).tolist()) == list(range(10))  # every image once per epoch
    first = seen.copy()
    seq.on_epoch_end()
    second = np.concatenate([seq[i][0].reshape(-1) for i in range(len(seq))])
    assert not np.array_equal(first, second)  # reshuffled
    seq.set_epoch(0)
    np.testing.assert_array_equal(np.concatenate([seq[i][0].reshape(-1) for i in range(len(seq))]), first)


def test_mixup_blends_each_batch_with_itself_and_stays_a_pure_function_of_seed_epoch_batch():
    """--mixup: every image is lam x one image + (1 - lam) x another of the batch, its target and weight the
    same blend of theirs; the same (seed, epoch, batch) gives the same batch, and mixup 0 is the plain batch."""
    pytest.importorskip("keras")
    x = np.arange(16, dtype=np.float32).reshape(16, 1, 1, 1) * 10  # image value = 10 x its index
    y = np.array([0] * 8 + [1] * 4 + [2] * 4)
    cw = {0: 0.5, 1: 2.0, 2: 2.0}
    plain = batch_sequence(x, y, 3, 8, POLICIES["none"], seed=3, class_weights=cw)
    mixed = batch_sequence(x, y, 3, 8, POLICIES["none"], seed=3, class_weights=cw, mixup=0.4)
    again = batch_sequence(x, y, 3, 8, POLICIES["none"], seed=3, class_weights=cw, mixup=0.4)
    xp, yp, wp = plain.batch(1, 0)
    xm, ym, wm = mixed.batch(1, 0)
    for got, want in zip(again.batch(1, 0), (xm, ym, wm), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(xm, xp)  # blended
    np.testing.assert_allclose(ym.sum(axis=1), 1.0, rtol=1e-6)  # still a distribution
    assert ((ym > 0) & (ym < 1)).any()  # no longer one-hot
    ids = xp.reshape(-1) / 10
    for k in range(len(xm)):  # image k = lam x image a + (1 - lam) x image b, a = the plain batch's k-th
        a = int(ids[k])
        matches = []
        for b in ids.astype(int):
            lam = 1.0 if b == a else (xm[k, 0, 0, 0] - 10 * b) / (10 * (a - b))
            if 0 <= lam <= 1 and np.allclose(ym[k], lam * one_hot(y[[a]], 3)[0] + (1 - lam) * one_hot(y[[b]], 3)[0],
                                             atol=1e-6):
                matches.append(np.isclose(wm[k], lam * cw[y[a]] + (1 - lam) * cw[y[b]], atol=1e-6))
        assert any(matches), k
    xz = batch_sequence(x, y, 3, 8, POLICIES["none"], seed=3, class_weights=cw, mixup=0.0).batch(1, 0)
    for got, want in zip(xz, (xp, yp, wp), strict=True):
        np.testing.assert_array_equal(got, want)
