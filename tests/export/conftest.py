"""Fixtures for the export / calibrate / verify tests: tiny Keras models, bundles and a synthetic manifest.

The models are a few layers at 32x32 so the whole set stays fast on two shared CPU cores; they are
exported once per session and copied per test that changes its bundle.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from manifest_files import write_manifest

from edgecxr.core.bundle import Bundle
from edgecxr.core.lazy import require
from edgecxr.data.manifest import CLASSES_3, CLASSES_4
from edgecxr.models import default_spec

SIZE = 32


def _randomize(model, seed: int) -> None:
    """Non-zero biases and BatchNorm statistics, as a trained model has (zeros hide fusion bugs)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if "batch_normalization" in layer.name:  # gamma, beta, moving mean, moving variance
            new = [rng.uniform(0.5, 1.5, w.shape) if i in (0, 3) else rng.normal(0, 0.2, w.shape) for i, w in enumerate(weights)]
        else:
            new = [rng.normal(0, 0.3, w.shape) for w in weights]
        layer.set_weights([w.astype(np.float32) for w in new])


def build_tiny_cnn(seed: int = 0):
    """CoroNet-shaped: convs (+BN, separable) -> Flatten -> Dropout -> Dense(16) -> Dense(4, softmax)."""
    keras = require("keras")

    inp = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.SeparableConv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(4)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    out = keras.layers.Dense(len(CLASSES_4), activation="softmax", name="probs")(x)
    model = keras.Model(inp, out, name="tiny_cnn")
    _randomize(model, seed)
    return model


def build_tiny_lstm(seed: int = 1):
    """CNN-LSTM-shaped: convs -> (4x4x16) -> Reshape(16, 16) -> LSTM -> Dropout -> Dense(3, softmax)."""
    keras = require("keras")

    inp = keras.Input((SIZE, SIZE, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(4)(x)
    x = keras.layers.Reshape((16, 16))(x)
    x = keras.layers.LSTM(12)(x)
    x = keras.layers.Dropout(0.5)(x)
    out = keras.layers.Dense(len(CLASSES_3), activation="softmax", name="probs")(x)
    model = keras.Model(inp, out, name="tiny_lstm")
    _randomize(model, seed)
    return model


def make_bundle(directory: Path, kind: str) -> Bundle:
    """A bundle holding a tiny Keras model ("cnn": CoroNet spec, 4 classes; "lstm": CNN-LSTM spec, 3)."""
    if kind == "cnn":
        model, family, classes = build_tiny_cnn(), "coronet", CLASSES_4
    else:
        model, family, classes = build_tiny_lstm(), "cnn-lstm", CLASSES_3
    bundle = Bundle.create(directory, family, classes, default_spec(family).with_size(SIZE))
    path = bundle.default_path("keras")
    model.save(path)
    bundle.set_artifact("keras", path)
    bundle.save()
    return bundle


@pytest.fixture(scope="session")
def keras_cnn_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow")
    return make_bundle(tmp_path_factory.mktemp("cnn-keras"), "cnn").dir


@pytest.fixture(scope="session")
def keras_lstm_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow")
    return make_bundle(tmp_path_factory.mktemp("lstm-keras"), "lstm").dir


@pytest.fixture(scope="session")
def exported_cnn(keras_cnn_bundle, tmp_path_factory) -> Path:
    """The tiny CNN exported (FP32 + FP16) with random parity inputs."""
    from edgecxr.stages.export.onnx import export_bundle

    directory = tmp_path_factory.mktemp("cnn-exported") / "bundle"
    shutil.copytree(keras_cnn_bundle, directory)
    export_bundle(Bundle.load(directory), progress=False)
    return directory


@pytest.fixture(scope="session")
def exported_lstm(keras_lstm_bundle, tmp_path_factory) -> Path:
    from edgecxr.stages.export.onnx import export_bundle

    directory = tmp_path_factory.mktemp("lstm-exported") / "bundle"
    shutil.copytree(keras_lstm_bundle, directory)
    export_bundle(Bundle.load(directory), progress=False)
    return directory


@pytest.fixture
def copy_bundle(tmp_path) -> Callable[[Path], Bundle]:
    """Copy a session bundle into this test's tmp dir (tests that add artifacts must not share one)."""

    def _copy(src: Path) -> Bundle:
        dst = tmp_path / f"bundle-{src.parent.name}"
        shutil.copytree(src, dst)
        return Bundle.load(dst)

    return _copy


def write_synthetic_manifest(root: Path, splits: tuple[tuple[str, int], ...], seed: int = 0) -> Path:
    """Random-texture PNGs for each class and (split, count), 2 sizes and bit depths, and their manifest.csv.

    Labels are arbitrary (the images carry no signal); the gate compares artifacts with each other,
    which only needs identical inputs. Real X-rays are used where the `shared_cxr` fixture is.
    """
    import cv2

    rng = np.random.default_rng(seed)
    rows = []
    k = 0
    for label in CLASSES_4:
        for split, n in splits:
            for _ in range(n):
                rel = f"images/{label}/{split}_{k:03d}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                h, w = (48, 40) if k % 2 else (36, 52)
                base = cv2.GaussianBlur(rng.uniform(0, 1, (h, w)), (0, 0), 3)
                base = (base - base.min()) / (np.ptp(base) + 1e-9)
                img = (base * 65535).astype(np.uint16) if k % 3 == 0 else (base * 255).astype(np.uint8)
                cv2.imwrite(str(root / rel), img)
                rows.append({"relative_path": rel, "label": label, "split": split, "patient_id": f"p{k}"})
                k += 1
    return write_manifest(root / "manifest.csv", rows)


@pytest.fixture(scope="session")
def synthetic_manifest(tmp_path_factory) -> Path:
    """A small manifest of random-texture PNGs: 4 classes x (calib 4, val 4, test 6) (write_synthetic_manifest)."""
    return write_synthetic_manifest(tmp_path_factory.mktemp("synthetic-cxr"), (("calib", 4), ("val", 4), ("test", 6)))
