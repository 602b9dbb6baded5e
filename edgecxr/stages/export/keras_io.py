"""Keras side of the export: load the reference model, predict, convert to ONNX with tf2onnx."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecxr.core.errors import BundleError
from edgecxr.core.lazy import require
from edgecxr.core.spec import PreprocessSpec

if TYPE_CHECKING:  # pragma: no cover
    import onnx
from edgecxr.core.metadata import INPUT_NAME, OUTPUT_NAME
from edgecxr.stages.export.onnx_tools import DEFAULT_OPSET, MIN_OPSET, ExportError, op_counts, set_batch_dim

log = logging.getLogger(__name__)


def load_keras(path: str | Path) -> Any:
    """Load a bundle's model.keras for inference (needs the 'train' extra)."""
    keras = require("keras", "exporting the Keras model")
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # keras raises ValueError/TypeError/OSError for unreadable files
        raise BundleError(f"{path}: Keras cannot load this model: {exc}") from exc


def walk_layers(layer: Any) -> list[Any]:
    """Every layer inside `layer`, depth first in model order (nested models and RNN wrappers included)."""
    out = []
    for sub in getattr(layer, "layers", []) or []:
        out.append(sub)
        out.extend(walk_layers(sub))
    for attr in ("layer", "forward_layer", "backward_layer"):  # Bidirectional / TimeDistributed wrappers
        sub = getattr(layer, attr, None)
        if sub is not None and sub is not layer and hasattr(sub, "get_config"):
            out.append(sub)
    return out


def keras_lstm_count(model: Any) -> int:
    """Number of LSTM layers in a Keras model (a Bidirectional LSTM counts once: one ONNX op)."""
    keras = require("keras", "exporting the Keras model")
    count = 0
    for layer in walk_layers(model):
        if isinstance(layer, keras.layers.Bidirectional):
            count += 1
        elif isinstance(layer, keras.layers.LSTM) and not _inside_bidirectional(model, layer, keras):
            count += 1
    return count


def _inside_bidirectional(model: Any, layer: Any, keras: Any) -> bool:
    for outer in walk_layers(model):
        if isinstance(outer, keras.layers.Bidirectional) and layer in (
            getattr(outer, "forward_layer", None),
            getattr(outer, "backward_layer", None),
            getattr(outer, "layer", None),
        ):
            return True
    return False


def keras_predict(model: Any, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Keras reference probabilities (inference mode: Dropout off, BatchNorm uses moving stats)."""
    from edgecxr.runtime.base import infer_in_batches

    return infer_in_batches(lambda b: model(np.ascontiguousarray(b, dtype=np.float32), training=False), x, batch_size)


def keras_to_onnx(model: Any, spec: PreprocessSpec, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert a Keras model to ONNX: input "image" (N,H,W,C) float32, output "probs" (N,classes)."""
    tf = require("tensorflow", "exporting to ONNX")
    tf2onnx = require("tf2onnx", "exporting to ONNX")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: per-channel Q/DQ INT8 needs opset >= {MIN_OPSET}")
    want = tuple(spec.input_shape)
    have = tuple(model.input_shape[1:]) if getattr(model, "input_shape", None) else None
    if have is not None and have != want:
        raise BundleError(f"Keras model input {have} does not match the bundle's preprocessing {spec.id} ({want})")
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    signature = (tf.TensorSpec((None, *want), tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=signature)
    def serve(image: Any) -> dict[str, Any]:
        return {OUTPUT_NAME: model(image, training=False)}

    try:
        onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset)
    except Exception as exc:  # tf2onnx raises many untyped errors
        raise ExportError(f"tf2onnx could not convert the model (opset {opset}): {exc}") from exc
    inputs = [i.name for i in onnx_model.graph.input]
    outputs = [o.name for o in onnx_model.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise ExportError(f"unexpected ONNX I/O {inputs} -> {outputs}; expected ['{INPUT_NAME}'] -> ['{OUTPUT_NAME}']")
    set_batch_dim(onnx_model)
    return onnx_model


def check_lstm_ops(model: onnx.ModelProto, expected: int) -> None:
    """Each Keras LSTM layer must be exactly one ONNX LSTM op (TensorRT's native RNN path)."""
    counts = op_counts(model)
    got = counts.get("LSTM", 0)
    loops = {k: v for k, v in counts.items() if k in ("Loop", "Scan")}
    if got != expected or (expected and loops):
        raise ExportError(
            f"the Keras model has {expected} LSTM layer(s) but the ONNX graph has {got} LSTM op(s)"
            + (f" and {loops}" if loops else "")
            + ": tf2onnx did not map the layer to a single ONNX LSTM (it does so only for default "
            "tanh/sigmoid activations, no recurrent dropout, unroll=False); TensorRT would run the "
            "unrolled loop slowly or not at all. Rebuild the model with a plain keras.layers.LSTM."
        )
