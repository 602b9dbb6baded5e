"""`edgecxr train --weights reference|FILE.onnx`: the shipped ONNX files read back into Keras, checked.

On the real shipped files: the CNN-LSTM (plain convolutions + LSTM) and CoroNet (Xception, whose
BatchNorm ONNX Runtime folded into the convolutions) must reproduce ONNX Runtime's probabilities and
features; a file whose weights are mapped wrongly must be refused, not trained on.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import EdgeCXRError
from edgecxr.models import build_model
from edgecxr.stages.train.warm_start import (
    REFERENCE,
    check_against_onnx,
    is_onnx_weights,
    load_from_onnx,
    read_onnx_weights,
    resolve_onnx,
)

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")


def _builder(name: str):
    return lambda side: build_model(name, weights=None, input_size=side)


def test_which_weights_values_mean_onnx():
    assert is_onnx_weights("reference") and is_onnx_weights("runs/x/model.FP16.onnx")
    assert not is_onnx_weights("none") and not is_onnx_weights("imagenet") and not is_onnx_weights(None)
    assert not is_onnx_weights("best.weights.h5")
    assert resolve_onnx(REFERENCE, "cnn-lstm").name == "model.fp16.onnx"
    with pytest.raises(EdgeCXRError, match="not found"):
        resolve_onnx("nowhere/model.onnx", "cnn-lstm")


def test_the_shipped_cnn_lstm_starts_a_run_at_another_side():
    """The shipped weights into a bf16 training model of another side (224 <-> 128): the check runs on a
    float32 twin at the shipped side, the weights are the same, and the run's bf16 policy stays on."""
    from edgecxr.stages.train.recipes import dtype_scope

    shipped = Bundle.load(resolve_onnx(REFERENCE, "cnn-lstm").parent).meta["input_shape"][0]
    other = 128 if shipped != 128 else 224
    with dtype_scope("mixed_bfloat16"):
        model = build_model("cnn-lstm", weights=None, input_size=other)
        info = load_from_onnx(model, REFERENCE, "cnn-lstm", _builder("cnn-lstm"))
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.input_shape[1] == other
    assert info["side"] == shipped and info["layers"] == 15 and info["max_diff"] < 5e-3
    arrays, _ = read_onnx_weights(Path(info["onnx"]))
    kernel = model.get_layer("block1_conv1").get_weights()[0]
    np.testing.assert_array_equal(kernel, arrays["block1_conv1"]["kernel"].transpose(2, 3, 1, 0))


def test_the_shipped_coronet_loads_with_its_batchnorm_frozen_and_survives_save_and_load(tmp_path):
    # counter-named layers built first, as in a process that built other models: this model's residual
    # "batch_normalization_5" is then not the exporting process's "batch_normalization_5"
    for _ in range(3):
        keras.layers.BatchNormalization(), keras.layers.Conv2D(1, 1)
    model = build_model("coronet", weights=None)
    info = load_from_onnx(model, REFERENCE, "coronet", _builder("coronet"))
    assert info["side"] == 150 and info["max_diff"] < 5e-3
    bns = [layer for layer in model.get_layer("xception").layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 40 and not any(layer.trainable for layer in bns)
    before = [w.copy() for w in bns[0].get_weights()]
    x = np.random.default_rng(1).uniform(-1, 1, (2, 150, 150, 3)).astype(np.float32)
    model(x, training=True)  # what a training step and BatchNorm recalibration do: frozen statistics stay
    for a, b in zip(before, bns[0].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    path = tmp_path / "m.keras"
    model.save(path)  # a resumed run loads last.keras: the BatchNorm must still be frozen there
    again = keras.saving.load_model(path)
    assert not any(layer.trainable for layer in again.get_layer("xception").layers
                   if isinstance(layer, keras.layers.BatchNormalization))
    _, onnx_model = read_onnx_weights(Path(info["onnx"]))
    assert check_against_onnx(again, onnx_model) < 5e-3


def test_a_wrongly_mapped_file_is_refused(monkeypatch):
    """Mapping bugs that every shape check lets through must be caught by the check against ONNX Runtime:
    the LSTM's gates in ONNX's order, and two same-shaped kernels in each other's place."""
    from edgecxr.stages.train import warm_start

    monkeypatch.setattr(warm_start, "LSTM_GATES", (0, 1, 2, 3))
    with pytest.raises(EdgeCXRError, match="do not reproduce it"):
        load_from_onnx(build_model("cnn-lstm", weights=None), REFERENCE, "cnn-lstm", _builder("cnn-lstm"))
    monkeypatch.undo()

    assign = warm_start.assign

    def swapped(model, arrays):
        done = assign(model, arrays)
        a, b = model.get_layer("block5_conv1"), model.get_layer("block5_conv2")
        wa, wb = a.get_weights(), b.get_weights()
        a.set_weights(wb)
        b.set_weights(wa)
        return done

    monkeypatch.setattr(warm_start, "assign", swapped)
    with pytest.raises(EdgeCXRError, match="do not reproduce it"):
        load_from_onnx(build_model("cnn-lstm", weights=None), REFERENCE, "cnn-lstm", _builder("cnn-lstm"))


def test_names_that_disagree_with_the_graph_are_one_line(tmp_path):
    """block5_conv1's kernel stored under block5_conv2's name (and back): its bias then has no kernel."""
    source = onnx.load(str(resolve_onnx(REFERENCE, "cnn-lstm")))
    inits = {i.name: i for i in source.graph.initializer}
    a, b = (next(n for n in inits if f"/{layer}_1/convolution" in n) for layer in ("block5_conv1", "block5_conv2"))
    inits[a].name, inits[b].name = b, a
    for node in source.graph.node:
        node.input[:] = [b if i == a else a if i == b else i for i in node.input]
    path = tmp_path / "renamed.onnx"
    onnx.save(source, str(path))
    with pytest.raises(EdgeCXRError, match="do not fit it"):
        load_from_onnx(build_model("cnn-lstm", weights=None), str(path), "cnn-lstm", _builder("cnn-lstm"))


def test_another_architecture_is_refused():
    with pytest.raises(EdgeCXRError, match="has no weights for|do not match"):
        load_from_onnx(build_model("cnn-lstm", weights=None), str(resolve_onnx(REFERENCE, "coronet")), "cnn-lstm",
                       _builder("cnn-lstm"))


def test_a_run_starts_from_the_shipped_model_and_says_so(tmp_path):
    import cv2
    from manifest_files import write_manifest

    from edgecxr.data.manifest import CLASSES_4
    from edgecxr.stages.train.config import TrainConfig
    from edgecxr.stages.train.run import train

    rows = []
    for c, label in enumerate(CLASSES_4):
        (tmp_path / label).mkdir()
        for split in ("train", "val"):
            rel = f"{label}/{split}.png"
            cv2.imwrite(str(tmp_path / rel), np.full((64, 64), 40 + 50 * c, np.uint8))
            rows.append({"relative_path": rel, "label": label, "split": split, "patient_id": f"{label}{split}"})
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    log = io.StringIO()
    out = tmp_path / "run"
    train(TrainConfig(model="cnn-lstm", data=str(manifest), out=str(out), weights=REFERENCE, input_size=64,
                      epochs=1, batch_size=4, recipe="scratch", lr=1e-5), log=log)
    assert "initial weights from " in log.getvalue() and "model.fp16.onnx (15 layers" in log.getvalue()
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["training"]["config"]["weights"] == REFERENCE
