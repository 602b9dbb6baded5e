"""Fake-quantized Keras layers for quantization-aware fine-tuning (QAT), in the TensorRT Q/DQ recipe.

Why these and not a QAT library: TensorFlow Model Optimization works on tf.keras 2 only, and
NVIDIA's TensorFlow quantization toolkit likewise; neither accepts Keras 3 models. Keras 3 itself
ships `keras.quantizers.fake_quant_with_min_max_vars` (round to the int8 grid in the forward pass,
straight-through gradient in the backward pass, on every backend), which is all QAT needs. So each
weighted layer is swapped for a subclass whose `call` reads its input and its kernel through that
function, exactly where `edgecxr calibrate` puts Q/DQ pairs in the ONNX graph:

  * weights: symmetric int8 per output channel, scale max|w| / 127 (ONNX Runtime's and TensorRT's
    recipe). BatchNorm scales each output channel by a constant when tf2onnx folds it into the
    convolution, and per-channel symmetric rounding commutes with that, so quantizing the unfolded
    kernel here rounds exactly like quantizing the folded one in the ONNX file;
  * activations: symmetric int8 per tensor on the input of every weighted op (and the LSTM's
    input, and the logits the float softmax reads), range max|x| over the calibration images,
    measured on the float model (`observe`: float weights too) as ONNX Runtime's MinMax calibrator
    does, then held fixed for the epoch. Measured with quantized weights instead, the ranges are not
    the calibrator's and the rounding grids part: tests/export/test_qat.py's fidelity test then fails.

The subclasses add no weights, so `get_weights()` lists the same arrays in the same order as the
float model's: fine-tuned weights go back into a plain copy of the original architecture
(`strip`), which exports to ONNX as before. The LSTM's weights stay float (ONNX Runtime's Q/DQ
quantizer leaves the LSTM in float); BatchNorm is frozen (inference statistics) while fine-tuning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecxr.core.errors import BundleError
from edgecxr.core.lazy import require
from edgecxr.stages.export.keras_io import walk_layers

#: smallest range a fake quantizer uses (an all-zero channel or input would give scale 0)
EPS = 1e-8


def _fq(x: Any, amax: Any, axis: int | None = None) -> Any:
    """x rounded to the symmetric int8 grid [-127, 127] * amax / 127 (straight-through gradient)."""
    keras = require("keras", "quantization-aware fine-tuning")
    return keras.quantizers.fake_quant_with_min_max_vars(x, -amax, amax, num_bits=8, narrow_range=True, axis=axis)


def fq_weight(w: Any) -> Any:
    """Per-output-channel (last axis) symmetric int8 fake quantization of a kernel."""
    keras = require("keras", "quantization-aware fine-tuning")
    ops = keras.ops
    flat = ops.reshape(w, (-1, w.shape[-1]))
    amax = ops.maximum(ops.stop_gradient(ops.max(ops.abs(flat), axis=0)), EPS)
    return ops.reshape(_fq(flat, amax, axis=-1), w.shape)


def fq_depthwise(w: Any) -> Any:
    """Depthwise kernels (kh, kw, C, M): the ONNX Conv has C*M output channels, one scale each."""
    keras = require("keras", "quantization-aware fine-tuning")
    ops = keras.ops
    kh, kw, c, m = w.shape
    return ops.reshape(fq_weight(ops.reshape(w, (kh, kw, c * m))), (kh, kw, c, m))


class _Observed:
    """Mixin: per-input activation ranges, observed in float (eager) or applied as fake quantization."""

    n_inputs = 1

    def _qat_init(self) -> None:
        self.qat_amax: list[float] = [0.0] * self.n_inputs
        self.qat_observe = False

    def _act(self, x: Any, i: int) -> Any:
        if self.qat_observe:  # calibration pass: record max|x|, compute in float
            keras = require("keras", "quantization-aware fine-tuning")
            self.qat_amax[i] = max(self.qat_amax[i], float(keras.ops.convert_to_numpy(keras.ops.max(keras.ops.abs(x)))))
            return x
        return _fq(x, max(self.qat_amax[i], EPS))

    def _w(self, w: Any, depthwise: bool = False) -> Any:
        """The kernel as the int8 file holds it; float while observing (ONNX Runtime calibrates the float model)."""
        if self.qat_observe:
            return w
        return fq_depthwise(w) if depthwise else fq_weight(w)


def _bias_act(layer: Any, outputs: Any, channels: int) -> Any:
    ops = require("keras", "quantization-aware fine-tuning").ops
    if layer.use_bias:
        outputs = ops.add(outputs, ops.reshape(layer.bias, (1,) * (len(outputs.shape) - 1) + (channels,)))
    return layer.activation(outputs) if layer.activation is not None else outputs


def _classes() -> dict[type, type]:
    """{float layer class: its fake-quantized subclass}, built lazily (Keras is an optional extra)."""
    keras = require("keras", "quantization-aware fine-tuning")
    L, ops = keras.layers, keras.ops

    class QatConv2D(_Observed, L.Conv2D):
        def call(self, inputs: Any) -> Any:
            return _bias_act(self, self.convolution_op(self._act(inputs, 0), self._w(self.kernel)), self.filters)

    class QatDepthwiseConv2D(_Observed, L.DepthwiseConv2D):
        def call(self, inputs: Any) -> Any:
            out = ops.depthwise_conv(self._act(inputs, 0), self._w(self.kernel, depthwise=True), strides=self.strides,
                                     padding=self.padding, dilation_rate=self.dilation_rate, data_format=self.data_format)
            return _bias_act(self, out, out.shape[-1])

    class QatSeparableConv2D(_Observed, L.SeparableConv2D):
        n_inputs = 2  # tf2onnx writes a depthwise Conv and a 1x1 Conv: both inputs get Q/DQ

        def call(self, inputs: Any) -> Any:
            mid = ops.depthwise_conv(self._act(inputs, 0), self._w(self.depthwise_kernel, depthwise=True), strides=self.strides,
                                     padding=self.padding, dilation_rate=self.dilation_rate, data_format=self.data_format)
            out = ops.conv(self._act(mid, 1), self._w(self.pointwise_kernel), strides=1, padding="valid",
                           data_format=self.data_format)
            return _bias_act(self, out, self.filters)

    class QatDense(_Observed, L.Dense):
        def _qat_init(self) -> None:
            # The softmax stays float, but ONNX Runtime still quantizes the logits it reads (the Gemm's output)
            self.n_inputs = 2 if self.activation is keras.activations.softmax else 1
            super()._qat_init()

        def call(self, inputs: Any, training: Any = None) -> Any:
            out = ops.matmul(self._act(inputs, 0), self._w(self.kernel))
            if self.n_inputs == 1:
                return _bias_act(self, out, self.units)
            out = ops.add(out, self.bias) if self.use_bias else out
            return self.activation(self._act(out, 1))

    class QatLSTM(_Observed, L.LSTM):
        def call(self, sequences: Any, initial_state: Any = None, mask: Any = None, training: Any = False) -> Any:
            return super().call(self._act(sequences, 0), initial_state=initial_state, mask=mask, training=training)

    return {L.Conv2D: QatConv2D, L.DepthwiseConv2D: QatDepthwiseConv2D, L.SeparableConv2D: QatSeparableConv2D,
            L.Dense: QatDense, L.LSTM: QatLSTM}


def quantized_layers(model: Any) -> list[Any]:
    """The fake-quantized layers of a model made by `wrap`."""
    return [layer for layer in walk_layers(model) if isinstance(layer, _Observed)]


def wrap(model: Any) -> Any:
    """A copy of `model` whose weighted layers are fake-quantized, with the same weights; BatchNorm frozen."""
    keras = require("keras", "quantization-aware fine-tuning")
    table = _classes()

    def clone(layer: Any) -> Any:
        cls = table.get(type(layer))
        if cls is None:
            return layer.__class__.from_config(layer.get_config())
        new = cls.from_config(layer.get_config())
        new._qat_init()
        return new

    qat = keras.models.clone_model(model, clone_function=clone, recursive=True)
    _copy_weights(model, qat)
    if not quantized_layers(qat):
        raise BundleError("the model has no Conv2D, DepthwiseConv2D, SeparableConv2D, Dense or LSTM layer to fine-tune for INT8")
    for layer in walk_layers(qat):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # Keras 3 runs a frozen BatchNorm with its moving statistics
    return qat


def strip(qat: Any, like: Any) -> Any:
    """The float architecture of `like` carrying `qat`'s fine-tuned weights (what is exported)."""
    keras = require("keras", "quantization-aware fine-tuning")
    plain = keras.models.clone_model(like, recursive=True)
    _copy_weights(qat, plain)
    return plain


def _copy_weights(src: Any, dst: Any) -> None:
    a, b = src.get_weights(), dst.get_weights()
    if [w.shape for w in a] != [w.shape for w in b]:
        raise BundleError("internal: the fake-quantized model's weights do not line up with the float model's")
    dst.set_weights(a)


def observe(qat: Any, x: np.ndarray, batch_size: int = 16) -> list[float]:
    """Measure every fake quantizer's activation range (max|x|) on `x` in float; returns them all."""
    layers = quantized_layers(qat)
    for layer in layers:
        layer.qat_amax = [0.0] * layer.n_inputs
        layer.qat_observe = True
    try:
        for i in range(0, len(x), batch_size):
            qat(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32), training=False)
    finally:
        for layer in layers:
            layer.qat_observe = False
    return [a for layer in layers for a in layer.qat_amax]
