"""CoroNet: the paper's exact parameter count, export-friendly graph, weights handling, tiny variant."""

from __future__ import annotations

import numpy as np
import pytest

from edgecxr.core.errors import EdgeCXRError
from edgecxr.models import build_model, default_spec
from edgecxr.models.coronet import build_coronet

keras = pytest.importorskip("keras")

FORBIDDEN = ("Lambda", "Rescaling", "Normalization", "TFSMLayer")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def test_paper_configuration_has_table_iii_parameter_count():
    model = build_model("coronet", weights="none")
    assert model.count_params() == 33_969_964  # Table III, total
    base = model.get_layer("xception")
    assert tuple(base.output.shape[1:]) == (5, 5, 2048)
    assert tuple(model.get_layer("flatten").output.shape[1:]) == (51_200,)
    assert model.get_layer("dense").count_params() == 13_107_456
    assert model.get_layer("probs").count_params() == 1_028
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert non_trainable == 54_528  # BatchNorm moving statistics
    assert model.inputs[0].name == "image"
    assert model.layers[-1].name == "probs"
    assert tuple(model.input_shape[1:]) == default_spec("coronet").input_shape == (150, 150, 3)
    assert not [layer.name for layer in _all_layers(model) if type(layer).__name__ in FORBIDDEN]


def test_tiny_variant_same_head_softmax_outputs():
    model = build_model("coronet", tiny=True)
    assert tuple(model.input_shape[1:]) == (32, 32, 3)
    assert [layer.name for layer in model.layers[-4:]] == ["flatten", "dropout", "dense", "probs"]
    probs = model.predict(np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype("float32"), verbose=0)
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_xception_rejects_inputs_below_71():
    with pytest.raises(EdgeCXRError, match="at least 71"):
        build_model("coronet", weights="none", input_size=64)
    with pytest.raises(EdgeCXRError, match="no pretrained weights"):
        build_model("coronet", tiny=True, weights="imagenet")


def test_weights_from_local_file(tmp_path):
    src = keras.applications.Xception(include_top=False, weights=None, input_shape=(71, 71, 3))
    path = tmp_path / "xception_notop.weights.h5"
    src.save_weights(path)
    model = build_coronet(input_size=71, weights=str(path))
    for a, b in zip(model.get_layer("xception").get_weights(), src.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(EdgeCXRError, match="not found"):
        build_coronet(input_size=71, weights=str(tmp_path / "missing.h5"))


def test_imagenet_download_failure_says_use_weights_none(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(EdgeCXRError, match="start from random weights"):
        build_coronet(input_size=71, weights="imagenet")


def test_tiny_coronet_exports_to_onnx_and_matches_keras():
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    from edgecxr.models import default_spec
    from edgecxr.stages.export.keras_io import keras_to_onnx

    model = build_model("coronet", tiny=True)
    # the product's own conversion path (what `edgecxr export` runs)
    onnx_model = keras_to_onnx(model, default_spec("coronet", 32))
    assert [i.name for i in onnx_model.graph.input] == ["image"]
    assert {n.domain for n in onnx_model.graph.node} <= {"", "ai.onnx"}
    x = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype("float32")
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x})[0]
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)
