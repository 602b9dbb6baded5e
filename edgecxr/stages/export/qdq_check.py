"""Static checks on a Q/DQ ONNX model: what TensorRT's explicit quantization accepts
(symmetric, zero point 0, per-channel weights), and which nodes stay in float.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgecxr.core.errors import BundleError
from edgecxr.stages.export.onnx_tools import STANDARD_DOMAINS, opset_of

if TYPE_CHECKING:  # pragma: no cover
    import onnx

log = logging.getLogger(__name__)


#: Aliases accepted by --keep-float besides node names.
KEEP_FLOAT_ALIASES = ("first-conv", "head", "lstm", "depthwise", "activations")


#: Op types never quantized (see module docstring).
ALWAYS_FLOAT_OPS = ("Softmax", "LogSoftmax")


#: Ops whose input 1 is a weight that TensorRT wants per-channel, and the input index of their bias.
_WEIGHT_OPS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "MatMul": None}


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """Value of an initializer or Constant node output, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _axis(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(attr.i)
    return 1  # ONNX default for QuantizeLinear/DequantizeLinear


def _weight_axis(consumer: onnx.NodeProto, weight_rank: int) -> int:
    """Output-channel axis of a Conv/Gemm/MatMul weight (the axis per-channel scales must follow)."""
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return weight_rank - 1  # MatMul: (..., K, N)


def check_tensorrt_qdq(model: str | Path | onnx.ModelProto) -> list[str]:
    """Every reason TensorRT's explicit-quantization path would reject or mis-run this Q/DQ model.

    Checks: opset >= 13; Q/DQ in the standard domain; every QuantizeLinear/DequantizeLinear has a
    constant, positive scale and an explicit int8 zero point equal to 0 (a missing zero point means
    uint8); weights of Conv/ConvTranspose/Gemm/MatMul are dequantized per-channel (1-D scale, one
    per output channel, `axis` on that channel); no bias is quantized (no DequantizeLinear feeds a
    Conv/Gemm bias, no int32 DequantizeLinear anywhere). An empty list means compatible.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    problems: list[str] = []
    if opset_of(model) < 13:
        problems.append(f"opset {opset_of(model)} < 13: per-channel Q/DQ needs opset 13+")
    producers = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: the model is not quantized")
    for node in qdq:
        label = f"{node.op_type} '{node.name}'"
        if node.domain not in STANDARD_DOMAINS:
            problems.append(f"{label}: domain '{node.domain}' (TensorRT reads only standard ONNX Q/DQ)")
        scale = _constant(model, node.input[1])
        if scale is None:
            problems.append(f"{label}: scale is not a constant")
        elif not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            problems.append(f"{label}: scale has non-positive or non-finite values")
        zp = _constant(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None:
            problems.append(f"{label}: no explicit zero point (defaults to uint8); TensorRT needs int8 zero point 0")
        elif zp.dtype == np.int32:
            problems.append(f"{label}: int32 quantization (a quantized bias); TensorRT wants float bias")
        elif zp.dtype != np.int8:
            problems.append(f"{label}: zero point dtype {zp.dtype}, TensorRT needs int8")
        elif np.any(zp != 0):
            problems.append(f"{label}: zero point {zp.ravel()[:4].tolist()} is not 0 (asymmetric); TensorRT needs symmetric")
    for node in model.graph.node:
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2:
            continue
        label = f"{node.op_type} '{node.name}'"
        dq = producers.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            weight = _constant(model, dq.input[0])
            if weight is None:  # Q->DQ on a float weight: look through the QuantizeLinear
                q = producers.get(dq.input[0])
                weight = _constant(model, q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            if weight is not None:
                scale = _constant(model, dq.input[1])
                axis = _axis(dq) % max(weight.ndim, 1)
                want = _weight_axis(node, weight.ndim)
                if scale is None or scale.ndim != 1:
                    problems.append(f"{label}: weight is quantized per-tensor; TensorRT needs per-channel scales")
                elif axis != want or scale.size != weight.shape[want]:
                    problems.append(
                        f"{label}: weight scales on axis {axis} (size {scale.size}); expected axis {want} "
                        f"(size {weight.shape[want]}, the output channels)"
                    )
        bias_index = _WEIGHT_OPS[node.op_type]
        if bias_index is not None and len(node.input) > bias_index and node.input[bias_index]:
            bias_src = producers.get(node.input[bias_index])
            if bias_src is not None and bias_src.op_type == "DequantizeLinear":
                problems.append(f"{label}: bias is quantized; TensorRT wants a float bias (QuantizeBias=False)")
    return problems


def _conv_group(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def resolve_keep_float(model: onnx.ModelProto, items: Iterable[str]) -> dict[str, list[str]]:
    """Map --keep-float items (aliases or node names) to node names; unknown names are an error.

    first-conv: the first Conv in graph (topological) order. head: MatMul/Gemm nodes after the last
    Conv or LSTM. lstm: LSTM nodes. depthwise: grouped Conv nodes (group > 1; Xception's depthwise
    convolutions, one 3x3 filter per channel, are the layers known to quantize worst). activations:
    every node without a weight (ReLU, pooling, reshapes, LSTM input), so Q/DQ sit only on the
    inputs of Conv/Gemm/MatMul. Anything else must be a node name of the FP32 graph.
    """
    nodes = list(model.graph.node)
    names = {n.name for n in nodes}
    out: dict[str, list[str]] = {}
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item == "first-conv":
            convs = [n.name for n in nodes if n.op_type == "Conv"]
            if not convs:
                raise BundleError("nodes to keep in float: first-conv, but the model has no Conv node", params=("keep_float",))
            out[item] = convs[:1]
        elif item == "head":
            last = max((i for i, n in enumerate(nodes) if n.op_type in ("Conv", "LSTM")), default=-1)
            head = [n.name for n in nodes[last + 1 :] if n.op_type in ("MatMul", "Gemm")]
            if not head:
                raise BundleError("nodes to keep in float: head, but no MatMul/Gemm node follows the last Conv/LSTM", params=("keep_float",))
            out[item] = head
        elif item == "lstm":
            out[item] = [n.name for n in nodes if n.op_type == "LSTM"]
        elif item == "depthwise":
            grouped = [n.name for n in nodes if n.op_type == "Conv" and _conv_group(n) > 1]
            if not grouped:
                raise BundleError("nodes to keep in float: depthwise, but the model has no grouped (depthwise) Conv node", params=("keep_float",))
            out[item] = grouped
        elif item == "activations":
            # Q/DQ only on the inputs of ops with a weight: the placement TensorRT's own quantization
            # tools use (ReLU and pooling fuse into the conv before them, so they gain nothing from INT8)
            out[item] = [n.name for n in nodes if n.op_type not in _WEIGHT_OPS and n.op_type not in ALWAYS_FLOAT_OPS]
        elif item in names:
            out[item] = [item]
        else:
            close = difflib.get_close_matches(item, sorted(names), n=3)
            hint = f"; did you mean {close}?" if close else f"; aliases: {list(KEEP_FLOAT_ALIASES)}"
            raise BundleError(f"nodes to keep in float: no node named {item!r} in the FP32 graph{hint}", params=("keep_float",))
    return out


def weight_quantization(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Nodes with weights, split by whether their weight arrives through a DequantizeLinear.

    Shows at a glance what --keep-float did and that ONNX Runtime leaves the LSTM in float.
    """
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    out: dict[str, list[str]] = {"int8": [], "float": []}
    for node in model.graph.node:
        if node.op_type in (*_WEIGHT_OPS, "LSTM", "GRU", "RNN") and len(node.input) > 1:
            kind = "int8" if producers.get(node.input[1]) == "DequantizeLinear" else "float"
            out[kind].append(f"{node.op_type}:{node.name}")
    return out
