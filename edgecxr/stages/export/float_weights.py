"""Float weights of an INT8 model stored as FP16 where that is lossless: the file shrinks, no value changes.

An INT8 Q/DQ model still carries FP32 weights for every node left in float: the CNN-LSTM's LSTM
(ONNX Runtime's Q/DQ quantizer does not quantize LSTM), and whatever the fallback keeps in float.
For a model whose FP32 graph was widened from its FP16 model (the shipped reference models), every
such weight is an FP16 value written in 32 bits, so storing it as FP16 followed by a Cast to FP32
gives back exactly the same tensor: the CNN-LSTM's 2.1M LSTM weights go from 8.4 MB to 4.2 MB.
A weight that FP16 would round is left as it is. ONNX Runtime folds the Cast when it loads the
model, TensorRT folds it into a constant at build time (a Cast is an ordinary op in a strongly
typed network), and the Q/DQ pairs are not touched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: smaller tensors are not worth a Cast node
MIN_ELEMENTS = 1024


def store_float_weights_fp16(model: Any, min_elements: int = MIN_ELEMENTS) -> dict[str, Any]:
    """Rewrite, in place, FP32 initializers that FP16 holds exactly into FP16 + Cast; returns what changed."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    converted, saved = [], 0
    casts = []
    for i, init in enumerate(list(graph.initializer)):
        if init.data_type != TensorProto.FLOAT or init.name in outputs or not readers.get(init.name):
            continue
        if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in readers[init.name]):
            continue  # Q/DQ scales and weights to be quantized stay as the quantizer wrote them
        value = numpy_helper.to_array(init)
        if value.size < min_elements:
            continue
        half = value.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), value, equal_nan=True):
            continue
        name = init.name
        stored = f"{name}_fp16"
        graph.initializer[i].CopyFrom(numpy_helper.from_array(half, stored))  # `init` is that same message
        casts.append(helper.make_node("Cast", [stored], [name], name=f"{name}_cast_fp32", to=TensorProto.FLOAT))
        converted.append(name)
        saved += value.size * 2
    for cast in reversed(casts):
        graph.node.insert(0, cast)
    return {"fp16_stored": converted, "bytes_saved": int(saved), "rule": "lossless only: FP16 holds every value exactly"}
