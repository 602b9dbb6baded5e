"""CNN-LSTM (Islam, Islam & Asraf 2020): VGG16-like conv blocks, the 7x7x512 map read as 49 steps by an LSTM.

Architecture at the paper's 224x224x1 input (Section 3, Fig. 5):
  5 conv blocks of 3x3 ReLU 'same' convolutions (2, 2, 3, 3, 3 convs; 64, 128, 256, 512, 512
  filters), each block followed by 2x2 max pooling  ->  7x7x512
  Reshape to (49, 512)  ->  LSTM  ->  Dropout  ->  Dense(3, softmax) over ("covid", "pneumonia", "normal").

Choices where the text is silent (its Table 2 did not survive in our copy of the preprint):
  * LSTM(512 units, tanh, last state only). 512 matches the feature width of each step and is what
    the authors' public code for the journal version (Asraf047/COVID19-CNN-LSTM) uses. We keep
    Keras' default tanh/sigmoid activations and no recurrent dropout, because that is the
    configuration tf2onnx maps to a single ONNX LSTM op and TensorRT runs natively (the authors'
    code used activation="relu"; that would fall off the fused path).
  * Dropout(0.5) after the LSTM: the rate CoroNet uses and the one left commented out in the
    authors' code; the conv stack has ~14.7M parameters trained from scratch on ~900 images, so
    regularising the classifier is worth more than the small loss of capacity.
  * No batch normalisation: the preprint describes none (the later journal code added it).
  * He-normal initialisation of the convolutions (the papers do not say). With Keras' default
    Glorot init a plain stack of 13 ReLU convolutions shrinks the signal's variance by about 2x
    per layer (He et al. 2015); our first full run sat exactly at chance (loss ln 3) for its
    whole first epoch. He init is the standard remedy for deep plain ReLU networks.
  This gives 14,713,536 conv + 2,099,200 LSTM + 1,539 dense = 16,814,275 parameters.

Export constraints as for CoroNet: standard layers only, input named "image" (NHWC, one gray
channel in [0, 1], scaled by `edgecxr.preprocess`), output layer "probs".

`width` (filter multiplier) and `blocks` (how many of the five blocks) exist so tests can build
tiny variants at small inputs; the defaults are the paper's model.
"""

from __future__ import annotations

from typing import Any

from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.lazy import require
from edgecxr.core.spec import PreprocessSpec
from edgecxr.data.manifest import CLASSES_3

NAME = "cnn-lstm"
#: Output order as in the paper: bacterial and viral pneumonia are one class.
CLASSES = CLASSES_3
#: 224x224 resized, normalised to [0, 1]; X-rays are gray, so one channel.
CNN_LSTM_V1 = PreprocessSpec(NAME, 1, 224, 224, 1, scale=1.0, offset=0.0)
#: The paper's recipe, exactly as published (`edgecxr train --recipe paper`).
PAPER_RECIPE = {"epochs": 200, "batch_size": 16, "lr": 1e-4, "weights": "none", "patience": 20,
                "augment": "paper", "class_weights": True, "optimizer": "adam", "weight_decay": 0.0,
                "schedule": "constant", "warmup_epochs": 0, "label_smoothing": 0.0, "precision": "float32"}
#: Peak learning rate of the from-scratch recipe: the plain VGG stack has no BatchNorm, so lower than CoroNet's.
SCRATCH_LR = 3e-4
#: Options of the test-only miniature.
TINY = {"input_size": 32, "width": 1 / 16, "blocks": 3, "lstm_units": 16}

DEFAULT_INPUT_SIZE = 224
#: Convolutions per block and filters per block (VGG16's layout).
BLOCK_CONVS = (2, 2, 3, 3, 3)
BLOCK_FILTERS = (64, 128, 256, 512, 512)
DEFAULT_LSTM_UNITS = 512
DEFAULT_DROPOUT = 0.5

#: Short note for docs/ (same content as the module docstring's "choices").
DESIGN_NOTE = (
    "CNN-LSTM: the preprint's Table 2 is not in our copy, so the LSTM is 512 units (tanh, last state), "
    "matching the 512 features per step and the authors' public code, followed by Dropout(0.5) and "
    "Dense(3, softmax); no batch normalisation, as in the preprint's text; He-normal init of the convolutions "
    "(with Glorot init the plain 13-convolution ReLU stack did not train). Default tanh activations "
    "keep the LSTM a single ONNX LSTM op for tf2onnx/TensorRT. 16.8M parameters at 224x224x1."
)


def build_cnn_lstm(
    input_size: int = DEFAULT_INPUT_SIZE,
    channels: int = 1,
    width: float = 1.0,
    blocks: int = len(BLOCK_CONVS),
    lstm_units: int = DEFAULT_LSTM_UNITS,
    dropout: float = DEFAULT_DROPOUT,
    num_classes: int = len(CLASSES),
) -> Any:
    """Build the CNN-LSTM as a Keras functional model (uncompiled).

    Args:
        input_size: square input side; 224 gives the paper's 7x7x512 map and (49, 512) sequence.
        channels: input channels (1: the gray X-ray, as `edgecxr.preprocess` produces).
        width: multiplier on every block's filter count (1.0 = paper; small values for tests).
        blocks: number of conv blocks used, 1..5 (5 = paper).
        lstm_units: LSTM hidden size.
        dropout: dropout rate between the LSTM and the softmax layer.
        num_classes: softmax outputs (3 in the paper).

    Raises:
        EdgeCXRError: an option outside its valid range.
    """
    keras = require("keras", "building the CNN-LSTM")
    layers = keras.layers
    if not 1 <= blocks <= len(BLOCK_CONVS):
        raise EdgeCXRError(f"blocks must be 1..{len(BLOCK_CONVS)}, got {blocks}")
    if width <= 0:
        raise EdgeCXRError(f"width must be positive, got {width}")
    if input_size < 2**blocks:
        raise EdgeCXRError(f"input {input_size} is too small for {blocks} pooling blocks (needs >= {2**blocks})")
    if not 0.0 <= dropout < 1.0:
        raise EdgeCXRError(f"dropout must be in [0, 1), got {dropout}")

    inputs = keras.Input(shape=(int(input_size), int(input_size), int(channels)), name="image")
    x = inputs
    for b in range(blocks):
        filters = max(1, round(BLOCK_FILTERS[b] * width))
        for c in range(BLOCK_CONVS[b]):
            x = layers.Conv2D(
                filters, 3, padding="same", activation="relu", kernel_initializer="he_normal",
                name=f"block{b + 1}_conv{c + 1}",
            )(x)
        x = layers.MaxPooling2D(2, name=f"block{b + 1}_pool")(x)
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    x = layers.Reshape((h * w, c), name="to_sequence")(x)
    x = layers.LSTM(lstm_units, name="lstm")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probs", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="cnn_lstm")
