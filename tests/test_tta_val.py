"""scripts/tta_val.py: the fixed views are what they say, and the val measurement reproduces the shipped model's own score."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.script_modules import load_script

tta = load_script("tta_val")


def test_views_keep_the_identity_and_fill_what_they_uncover_with_black():
    x = np.ones((2, 20, 20, 1), np.float32)
    np.testing.assert_array_equal(tta.view(x, -1.0, 0, 0, 1.0, 0), x)
    shifted = tta.view(x, -1.0, 0.1, 0, 1.0, 0)  # 2 px to the right: the first 2 columns are uncovered
    assert shifted.shape == x.shape
    assert (shifted[:, :, :2] == -1.0).all() and (shifted[:, :, 3:] == 1.0).all()
    zoomed_out = tta.view(x, -1.0, 0, 0, 0.8, 0)
    assert zoomed_out[0, 0, 0, 0] == -1.0 and zoomed_out[0, 10, 10, 0] == 1.0
    rgb = tta.view(np.ones((1, 20, 20, 3), np.float32), -1.0, 0.1, 0, 1.0, 0)  # CoroNet's 3 channels
    assert (rgb[:, :, :2] == -1.0).all()  # black in every channel, not only the first


@pytest.mark.slow
def test_val_as_is_equals_the_shipped_models_recorded_val_accuracy(shared_cxr, tmp_path):
    """The 'as is' view is the plain model: its val accuracy must be the one bundle.json recorded for it."""
    from edgecxr.core.bundle import Bundle

    out = tmp_path / "tta.json"
    assert tta.main(["--data", str(shared_cxr / "manifest.csv"), "--models", "cnn-lstm", "--out", str(out)]) == 0
    result = json.loads(out.read_text())["models"][0]
    recorded = Bundle.load(tta.REFERENCE_DIR / "cnn-lstm")
    assert result["views"]["as is"]["accuracy"] == pytest.approx(recorded.meta["metrics"]["val"]["accuracy"], abs=1 / 129)
    assert set(result["sets"]) == {"3 zooms", "3 shifts", "all 7"} and result["val_images"] == 129
