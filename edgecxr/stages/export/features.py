"""Expose the penultimate-layer features as a second ONNX output, `features`, for the OOD score.

Why in the graph: the out-of-distribution score (`edgecxr.runtime.ood`) reads the features the
model's last layer sees, and it must be applied by every backend, TensorRT included. A TensorRT
engine built from an ONNX file exposes exactly that file's outputs, so the features are made a
graph output once, here, and every runtime (ONNX Runtime, TensorRT) returns them with the
probabilities in the same inference call at no extra cost.

"The features" are the data input of the node that computes the logits: the Gemm / MatMul whose
result (through Add, Cast, and Q/DQ pairs in an INT8 model) reaches the Softmax that produces the
probabilities. In an FP16 model they are cast to float32 so every precision gives the same output
type. The probabilities output and its values are unchanged (the caller checks that on images).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgecxr.core.errors import BundleError
from edgecxr.core.lazy import require

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: the output's name (runtime.base.FEATURES; repeated here so the export stage needs no runtime import)
FEATURES_OUTPUT = "features"
#: nodes a value passes through unchanged in meaning between the logits layer and the Softmax
_PASS_THROUGH = ("Cast", "QuantizeLinear", "DequantizeLinear", "Identity", "Add")
_LOGITS_OPS = ("Gemm", "MatMul")


def has_features(model: onnx.ModelProto) -> bool:
    return any(o.name == FEATURES_OUTPUT for o in model.graph.output)


def features_tensor(model: onnx.ModelProto) -> tuple[str, Any]:
    """(name of the tensor the logits layer reads, that layer's node), found from the Softmax back.

    Raises BundleError when the graph does not end in Softmax <- ... <- Gemm/MatMul.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    dynamic = _from_image(model)
    first = graph.output[0].name
    node = producer.get(first)
    while node is not None and node.op_type in ("Cast", "Identity"):  # an FP16 model casts its probabilities out
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Softmax":
        raise BundleError(f"the model's first output {first!r} is not made by a Softmax; cannot find its features")
    name = node.input[0]
    for _ in range(16):  # a short chain; a longer one is not the layout this knows
        node = producer.get(name)
        if node is None:
            break
        if node.op_type in _LOGITS_OPS:
            data = [i for i in node.input[:2] if i in dynamic]
            if len(data) != 1:
                raise BundleError(f"the logits layer {node.name!r} has {len(data)} non-constant inputs; expected 1")
            return data[0], node
        if node.op_type not in _PASS_THROUGH:
            break
        data = [i for i in node.input if i in dynamic]
        if len(data) != 1:
            break
        name = data[0]
    raise BundleError("no Gemm/MatMul found before the Softmax; cannot find the model's features")


def _from_image(model: onnx.ModelProto) -> set[str]:
    """Every tensor computed from the graph input (not only from weights); nodes are in topological order."""
    dynamic = {i.name for i in model.graph.input}
    for node in model.graph.node:
        if any(i in dynamic for i in node.input):
            dynamic.update(node.output)
    return dynamic


def add_features_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Return `model` with a float32 `features` output (N, D) added after the probabilities.

    A model that already has it is returned as it is. The returned info says which tensor and
    which logits layer were used, for the bundle's record.
    """
    onnx = require("onnx", "adding the features output")
    from onnx import TensorProto, helper

    if has_features(model):
        return model, {"tensor": None, "already": True}
    tensor, logits = features_tensor(model)
    graph = model.graph
    graph.node.append(helper.make_node("Cast", [tensor], [FEATURES_OUTPUT], to=TensorProto.FLOAT,
                                       name="edgecxr_features_cast"))
    width = _width(model, logits)
    batch = graph.output[0].type.tensor_type.shape.dim[0]
    out = helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, [batch.dim_param or batch.dim_value or "N", width])
    graph.output.append(out)
    onnx.checker.check_model(model)
    return model, {"tensor": tensor, "logits_node": logits.name, "dim": width}


def _width(model: onnx.ModelProto, logits: Any) -> int | str:
    """The feature width: rows of the logits layer's weight (Gemm B, transposed or not), else 'D'."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    weight = logits.input[1]
    for _ in range(4):  # through DequantizeLinear / Cast to the stored weight
        if weight in inits:
            shape = numpy_helper.to_array(inits[weight]).shape
            if len(shape) != 2:
                return "D"
            trans_b = next((a.i for a in logits.attribute if a.name == "transB"), 0)
            return int(shape[1] if trans_b else shape[0])
        node = producer.get(weight)
        if node is None or not node.input:
            break
        weight = node.input[0]
    return "D"


def logits_weights(model: onnx.ModelProto) -> tuple[Any, Any]:
    """(W (D, C), b (C,)) of the logits layer as float32 arrays, for the energy score (logits = f @ W + b)."""
    import numpy as np
    from onnx import numpy_helper

    _, logits = features_tensor(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}

    def value(name: str) -> Any:
        for _ in range(4):
            if name in inits:
                return inits[name]
            node = producer.get(name)
            if node is None:
                break
            if node.op_type == "DequantizeLinear":  # an INT8 weight: scale it back
                q, scale = value(node.input[0]), value(node.input[1])
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                shape = [1] * q.ndim
                if np.ndim(scale):
                    shape[axis] = -1
                return q.astype(np.float32) * np.reshape(scale, shape)
            name = node.input[0]
        raise BundleError(f"cannot read the weight {name!r} of the logits layer")

    w = np.asarray(value(logits.input[1]), dtype=np.float32)
    if next((a.i for a in logits.attribute if a.name == "transB"), 0):
        w = w.T
    b = np.asarray(value(logits.input[2]), dtype=np.float32) if len(logits.input) > 2 and logits.input[2] else None
    if b is None:
        b = np.zeros(w.shape[1], np.float32)
    return w, b
