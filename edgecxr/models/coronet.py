"""CoroNet (Khan, Shah & Bhat 2020): Xception base + Flatten + Dropout(0.5) + Dense(256) + Dense(4).

The paper's Table III at 150x150x3 input: Xception without its top gives 5x5x2048 (20,861,480
parameters), flattened to 51,200, then Dense(256, relu) (13,107,456) and Dense(4, softmax) (1,028):
33,969,964 parameters in total, which `tests/models/test_coronet.py` checks exactly.

Export constraints (ONNX / TensorRT): the graph holds only standard layers; no Lambda, no
Rescaling/Normalization (input scaling to Xception's [-1, 1] lives in `edgecxr.preprocess`, the
one implementation shared with every runtime). The input is named "image" and the output layer
"probs", names the exporter and the runtimes rely on.

`base="tiny"` swaps Xception for a three-block separable-conv stack with the same head. It exists
only so tests can build and train a CoroNet-shaped model in a second at 32..71 px (Xception
refuses inputs below 71x71); it is not a model to deploy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.lazy import require
from edgecxr.core.spec import PreprocessSpec
from edgecxr.data.manifest import CLASSES_4

NAME = "coronet"
#: Output order: the manifest's four classes.
CLASSES = CLASSES_4
#: Xception input in [-1, 1] ("tf" mode of keras' xception.preprocess_input), 150x150 as in the
#: paper's Table III (5x5x2048 base output).
CORONET_V1 = PreprocessSpec(NAME, 1, 150, 150, 3, scale=2.0, offset=-1.0)
#: The paper's recipe, exactly as published (`edgecxr train --recipe paper`).
PAPER_RECIPE = {"epochs": 80, "batch_size": 10, "lr": 1e-4, "weights": "imagenet", "patience": 0,
                "augment": "none", "class_weights": False, "optimizer": "adam", "weight_decay": 0.0,
                "schedule": "constant", "warmup_epochs": 0, "label_smoothing": 0.0, "precision": "float32"}
#: Peak learning rate of the from-scratch recipe (stages/train/recipes.py, chosen on `val`).
SCRATCH_LR = 1e-3
#: Options of the test-only miniature (far too small to learn anything useful).
TINY = {"input_size": 32, "base": "tiny", "dense_units": 16, "weights": None}

#: The paper's configuration.
DEFAULT_INPUT_SIZE = 150
DEFAULT_DROPOUT = 0.5
DEFAULT_DENSE_UNITS = 256
#: Xception's smallest accepted input side (keras.applications).
XCEPTION_MIN_SIZE = 71
BASES = ("xception", "tiny")


def resolve_weights(weights: str | Path | None) -> str | None:
    """Normalise a --weights value: None/"none" -> None, "imagenet", or an existing weights file path.

    A missing path is an error here rather than Keras' generic ValueError, so the CLI can say what
    it expected.
    """
    if weights is None:
        return None
    text = str(weights)
    if text.lower() == "none":
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    path = Path(text).expanduser()
    if not path.is_file():
        raise EdgeCXRError(
            f"weights file {text} not found; the weights are 'imagenet', 'none' or the path of "
            "Xception no-top weights (xception_weights_tf_dim_ordering_tf_kernels_notop.h5 or a .weights.h5)",
            params=("weights",),
        )
    return str(path)


def build_coronet(
    input_size: int = DEFAULT_INPUT_SIZE,
    weights: str | Path | None = "imagenet",
    dropout: float = DEFAULT_DROPOUT,
    dense_units: int = DEFAULT_DENSE_UNITS,
    num_classes: int = len(CLASSES),
    base: str = "xception",
) -> Any:
    """Build CoroNet as a Keras functional model (uncompiled).

    Args:
        input_size: square input side; 150 reproduces the paper's Table III.
        weights: "imagenet" (downloaded by Keras; needs internet), None/"none" (random init) or the
            path of Xception no-top weights (.h5 or .weights.h5). Only for base="xception".
        dropout: dropout rate between Flatten and Dense(256).
        dense_units: width of the hidden fully connected layer.
        num_classes: softmax outputs (4 in the paper).
        base: "xception" (the paper) or "tiny" (test-only small separable-conv stack).

    Raises:
        EdgeCXRError: invalid size/base/weights, or ImageNet weights could not be downloaded.
    """
    keras = require("keras", "building CoroNet")
    if base not in BASES:
        raise EdgeCXRError(f"unknown CoroNet base {base!r}; expected one of {list(BASES)}")
    if not 0.0 <= dropout < 1.0:
        raise EdgeCXRError(f"dropout must be in [0, 1), got {dropout}")
    weights = resolve_weights(weights)
    shape = (int(input_size), int(input_size), 3)
    if base == "xception":
        if input_size < XCEPTION_MIN_SIZE:
            raise EdgeCXRError(
                f"Xception needs an input of at least {XCEPTION_MIN_SIZE}x{XCEPTION_MIN_SIZE}, got {input_size}; "
                "use the tiny base for small test models"
            )
        backbone = _xception(keras, shape, weights)
    else:
        if weights is not None:
            raise EdgeCXRError("the tiny CoroNet base has no pretrained weights; start from random weights",
                               params=("weights",))
        if input_size < 16:
            raise EdgeCXRError(f"tiny CoroNet needs an input of at least 16x16, got {input_size}")
        backbone = _tiny_base(keras, shape)

    inputs = keras.Input(shape=shape, name="image")
    x = backbone(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="coronet")


def _xception(keras: Any, shape: tuple[int, int, int], weights: str | None) -> Any:
    """Xception without top, as one nested model named "xception" (Table III's first row)."""
    try:
        return keras.applications.Xception(include_top=False, weights=weights, input_shape=shape)
    except Exception as exc:  # Keras raises a bare Exception when the download fails
        if weights == "imagenet":
            raise EdgeCXRError(
                f"could not download the ImageNet Xception weights ({exc}); without internet start from "
                "random weights (train from scratch) or the path of a local "
                "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                params=("weights",),
            ) from exc
        if weights is not None:
            raise EdgeCXRError(f"could not load Xception weights from {weights}: {exc}", params=("weights",)) from exc
        raise


def _tiny_base(keras: Any, shape: tuple[int, int, int]) -> Any:
    """Test-only stand-in for Xception: stem conv + 2 separable-conv blocks (BN, ReLU, max-pool)."""
    layers = keras.layers
    inputs = keras.Input(shape=shape, name="tiny_input")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="tiny_stem_conv")(inputs)
    x = layers.BatchNormalization(name="tiny_stem_bn")(x)
    x = layers.ReLU(name="tiny_stem_relu")(x)
    for i, filters in enumerate((16, 32), start=1):
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"tiny_block{i}_sepconv")(x)
        x = layers.BatchNormalization(name=f"tiny_block{i}_bn")(x)
        x = layers.ReLU(name=f"tiny_block{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"tiny_block{i}_pool")(x)
    return keras.Model(inputs, x, name="tiny_base")
