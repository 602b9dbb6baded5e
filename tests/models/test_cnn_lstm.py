"""CNN-LSTM: the paper's 7x7x512 map read as (49, 512) by one LSTM, and a single ONNX LSTM op on export."""

from __future__ import annotations

import numpy as np
import pytest

from edgecxr.core.errors import EdgeCXRError
from edgecxr.data.manifest import CLASSES_3
from edgecxr.models import build_model, default_spec

keras = pytest.importorskip("keras")


def test_paper_configuration_shapes():
    model = build_model("cnn-lstm")
    assert tuple(model.input_shape[1:]) == default_spec("cnn-lstm").input_shape == (224, 224, 1)
    assert tuple(model.get_layer("block5_pool").output.shape[1:]) == (7, 7, 512)
    lstm = model.get_layer("lstm")
    assert tuple(lstm.input.shape[1:]) == (49, 512)
    assert isinstance(lstm, keras.layers.LSTM)
    assert lstm.activation.__name__ == "tanh" and lstm.recurrent_dropout == 0 and not lstm.unroll
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert tuple(model.output_shape[1:]) == (len(CLASSES_3),)
    assert model.inputs[0].name == "image" and model.layers[-1].name == "probs"
    assert model.count_params() == 16_814_275


def test_width_and_blocks_make_tiny_variants():
    model = build_model("cnn-lstm", input_size=32, width=0.125, blocks=2, lstm_units=8)
    assert tuple(model.get_layer("to_sequence").output.shape[1:]) == (64, 16)
    tiny = build_model("cnn-lstm", tiny=True)
    probs = tiny.predict(np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(EdgeCXRError, match="too small"):
        build_model("cnn-lstm", input_size=16)
    with pytest.raises(EdgeCXRError, match="no ImageNet"):
        build_model("cnn-lstm", tiny=True, weights="imagenet")


def test_weights_file_of_same_architecture(tmp_path):
    src = build_model("cnn-lstm", tiny=True)
    path = tmp_path / "w.weights.h5"
    src.save_weights(path)
    model = build_model("cnn-lstm", tiny=True, weights=str(path))
    for a, b in zip(model.get_weights(), src.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_exports_to_one_onnx_lstm_op():
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    from edgecxr.models import default_spec
    from edgecxr.stages.export.keras_io import keras_to_onnx

    model = build_model("cnn-lstm", tiny=True)
    # the product's own conversion path (what `edgecxr export` runs)
    onnx_model = keras_to_onnx(model, default_spec("cnn-lstm", 32))
    ops = [n.op_type for n in onnx_model.graph.node]
    assert ops.count("LSTM") == 1 and "Loop" not in ops and "Scan" not in ops
    x = np.random.default_rng(1).random((2, 32, 32, 1), dtype=np.float32)
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"image": x})[0], model.predict(x, verbose=0), atol=1e-5)


def test_convolutions_use_he_init():
    """Glorot init collapsed the signal of the 13-conv ReLU stack (pre-LSTM std ~5e-4); He keeps it."""
    from edgecxr.core.lazy import require
    from edgecxr.models import build_model

    keras = require("keras")
    model = build_model("cnn-lstm", tiny=True)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs
    assert all(type(c.kernel_initializer).__name__ == "HeNormal" for c in convs)


def test_weights_from_another_input_side_load(tmp_path):
    """Progressive resizing: no weight depends on the input side, so a 32x32 model initialises a 64x64 one."""
    small = build_model("cnn-lstm", tiny=True, input_size=32)
    small.save(tmp_path / "small.keras")
    large = build_model("cnn-lstm", tiny=True, input_size=64, weights=str(tmp_path / "small.keras"))
    assert large.input_shape == (None, 64, 64, 1)
    for a, b in zip(small.get_weights(), large.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
