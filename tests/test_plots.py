"""edgecxr.plots writes real PNGs (read back with OpenCV) and rejects malformed input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from edgecxr.stages import plots  # noqa: E402

C4 = ["covid", "normal", "pneumonia_bacterial", "pneumonia_viral"]


def _read_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path} is not a readable image"
    return image


def test_plot_history_png(tmp_path):
    history = {
        "loss": [1.3, 0.9, 0.7],
        "val_loss": [1.2, 1.0, 1.05],
        "accuracy": [0.4, 0.6, 0.7],
        "val_accuracy": [0.45, 0.55, 0.5],
        "learning_rate": [1e-3, 1e-3, 5e-4],
    }
    out = plots.plot_history(history, tmp_path / "sub" / "history.png")
    assert out == tmp_path / "sub" / "history.png"
    image = _read_png(out)
    h, w = image.shape[:2]
    assert w > h  # two panels side by side (loss, accuracy); learning_rate gets none
    assert not list((tmp_path / "sub").glob("*.tmp"))  # atomic write left no temp file


def test_plot_history_train_only(tmp_path):
    _read_png(plots.plot_history({"loss": [1.0, 0.5]}, tmp_path / "h.png"))


def test_plot_history_empty_raises(tmp_path):
    with pytest.raises(ValueError):
        plots.plot_history({"loss": []}, tmp_path / "h.png")


def test_plot_confusion_png(tmp_path):
    cm = np.array([[28, 1, 1, 0], [2, 25, 3, 1], [0, 4, 26, 5], [0, 0, 0, 0]])  # last class absent
    out = plots.plot_confusion(cm, C4, tmp_path / "cm.png", title="CoroNet test")
    image = _read_png(out)
    assert image.ndim == 3 and image.shape[0] > 200
    # not a blank canvas: the heat map puts dark blue pixels in the figure
    assert image[..., :3].std() > 10


def test_plot_confusion_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        plots.plot_confusion(np.eye(3, dtype=int), C4, tmp_path / "cm.png")
