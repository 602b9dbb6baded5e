"""Occlusion heat maps (runtime/heatmap.py) on a real ONNX model whose answer depends on one known region.

The quadrant model reads only the mean of the top-left quarter of its input, so the right map is
known exactly: positive over that quarter, zero wherever no patch touching it reaches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecxr.core.errors import ArgumentError
from edgecxr.core.metadata import META_CLASSES, META_MODEL, META_PRECISION, META_PREPROCESS
from edgecxr.models.cnn_lstm import CNN_LSTM_V1
from edgecxr.models.coronet import CORONET_V1
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.heatmap import OCCLUSION, HeatMap, Occlusion, explain, occlusion_map
from runtime import tinymodels

SPEC = tinymodels.SPEC  # CoroNet constants at 32x32x3
CLASSES = tinymodels.CLASSES
QUARTER = SPEC.height // 2


def make_quadrant_onnx(path: Path, gain: float = 8.0) -> Path:
    """logits = gain * mean(top-left quarter) * [1, -1, 0, 0]: only that quarter matters."""
    h, w, c = SPEC.input_shape
    inits = [
        numpy_helper.from_array(np.array([0, 0], np.int64), "starts"),
        numpy_helper.from_array(np.array([h // 2, w // 2], np.int64), "ends"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(np.array([[gain, -gain, 0.0, 0.0]], np.float32), "W"),
    ]
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["quarter"]),
        helper.make_node("ReduceMean", ["quarter"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "one"], ["m1"]),
        helper.make_node("Mul", ["m1", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
    graph = helper.make_graph(
        nodes, "quadrant",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", h, w, c])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(CLASSES)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {META_CLASSES: json.dumps(CLASSES), META_PREPROCESS: json.dumps(SPEC.to_dict()),
                                   META_MODEL: "coronet", META_PRECISION: "fp32"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def quadrant(tmp_path_factory):
    path = make_quadrant_onnx(tmp_path_factory.mktemp("quadrant") / "quadrant.onnx")
    with Classifier.load(path, input_rules=None) as clf:
        yield clf


def bright_top_left(size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 90, (size, size), dtype=np.uint8)
    image[: size // 2, : size // 2] = rng.integers(200, 255, (size // 2, size // 2), dtype=np.uint8)
    return image


# -- the map lights up the region the answer depends on -------------------------------------------
def test_map_lights_up_exactly_the_region_the_model_reads(quadrant):
    pred, heat = explain(quadrant, bright_top_left(), target=CLASSES[0])
    assert heat is not None and pred.error is None
    v = heat.values
    assert v.shape == (SPEC.height, SPEC.width) and v.dtype == np.float32
    side = OCCLUSION.windows(SPEC.height, SPEC.width)[0][2]
    # no patch that reaches the quarter covers these pixels: hiding them cannot change the answer
    far = np.ones_like(v, dtype=bool)
    far[: QUARTER + side, : QUARTER + side] = False
    assert np.abs(v[far]).max() < 1e-6
    inside = v[:QUARTER, :QUARTER]
    assert inside.min() > 0  # hiding any part of the bright quarter lowers class 0
    hot = np.unravel_index(int(np.argmax(v)), v.shape)
    assert hot[0] < QUARTER and hot[1] < QUARTER
    norm = heat.normalized()
    assert norm.min() >= 0 and norm.max() == pytest.approx(1.0) and norm[far].max() == 0


def test_the_other_class_gets_the_opposite_sign_and_the_baseline_is_the_prediction(quadrant):
    image = bright_top_left()
    _, heat0 = explain(quadrant, image, target=CLASSES[0])
    _, heat1 = explain(quadrant, image, target=CLASSES[1])
    assert heat1.values[:QUARTER, :QUARTER].max() < 0  # hiding the bright quarter *raises* class 1
    assert heat1.normalized().max() == 0  # nothing supports it: the display form is blank, not noise
    pred = quadrant.predict(image)[0]
    assert heat0.baseline == pytest.approx(pred.probabilities[CLASSES[0]], abs=1e-6)
    assert heat0.target == CLASSES[0] and heat0.target_index == 0
    _, auto = explain(quadrant, image)  # no target: the predicted class
    assert auto.target == pred.label


def test_batch_size_changes_the_calls_not_the_map(quadrant):
    tensor = np.random.default_rng(1).uniform(-1, 1, SPEC.input_shape).astype(np.float32)
    calls: list[int] = []

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return quadrant.runner.infer(batch)

    maps = {}
    for bs in (1, 7, 500):
        calls.clear()
        maps[bs] = occlusion_map(counting, tensor, 0, SPEC, batch_size=bs)
        runs = maps[bs].model_runs
        assert sum(calls) == runs and max(calls) <= bs and len(calls) == -(-runs // bs)
    np.testing.assert_allclose(maps[1].values, maps[7].values, atol=1e-6)
    np.testing.assert_allclose(maps[1].values, maps[500].values, atol=1e-6)


def test_rejected_and_unreadable_inputs_get_no_map(tmp_path):
    path = make_quadrant_onnx(tmp_path / "q.onnx")
    noise = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with Classifier.load(path) as clf:  # the default input rules: noise is rejected
        pred, heat = explain(clf, noise)
        assert heat is None and pred.status == "rejected"
        pred, heat = explain(clf, tmp_path / "bad.png")
        assert heat is None and pred.error
        with pytest.raises(ArgumentError, match="unknown class"):
            explain(clf, bright_top_left(), target="cat")


# -- the configuration ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [CORONET_V1, CNN_LSTM_V1], ids=lambda s: s.id)
def test_default_windows_cover_every_pixel_of_both_models(spec):
    windows = OCCLUSION.windows(spec.height, spec.width)
    assert len(windows) == 81
    covered = np.zeros((spec.height, spec.width), dtype=int)
    for y, x, side in windows:
        assert y + side <= spec.height and x + side <= spec.width
        covered[y : y + side, x : x + side] += 1
    assert covered.min() >= 1
    assert windows[0][2] == round(0.2 * spec.height)


def test_numeric_fill_is_an_intensity_on_every_spec():
    t = np.zeros((4, 4, 1), np.float32)
    assert Occlusion(fill=0.5).fill_value(t, CORONET_V1) == pytest.approx(0.0)  # [-1, 1] models
    assert Occlusion(fill=0.5).fill_value(t, CNN_LSTM_V1) == pytest.approx(0.5)  # [0, 1] models
    assert Occlusion().fill_value(t + 0.25, CNN_LSTM_V1) == pytest.approx(0.25)  # the image mean


@pytest.mark.parametrize("kwargs", [{"patch": 0}, {"patch": 1.5}, {"stride": 0.3}, {"fill": 2.0},
                                    {"fill": "black"}, {"patch": float("nan")}])
def test_bad_configs_are_refused(kwargs):
    with pytest.raises(ArgumentError):
        Occlusion(**kwargs)


def test_heatmap_facts_for_json():
    heat = HeatMap(np.array([[0.5, -0.1]], np.float32), "normal", 1, 0.9, 81, 32, 0.25, OCCLUSION)
    d = heat.to_dict()
    assert d["model_runs"] == 82 and d["max_drop"] == 0.5 and d["min_drop"] == pytest.approx(-0.1)
    json.dumps(d)
