"""Cheap sensitivity: every quantized node's own quantization error, from one pass over the images.

The agreement ranking of sensitivity.py costs one inference pass over `val` per node (about two
minutes each for the CNN-LSTM's 39 quantized nodes on a 2-core CPU: more than an hour). This
ranking costs one pass of a *shadow* model: the FP32 graph plus, for every quantized node, a copy
that reads the FP32 activations through the Q/DQ pairs the calibration chose (and the int8
weights). The noise-to-signal ratio (noise power / signal power, as ONNX Runtime's
`qdq_loss_debug` reports it in dB) between each node's output and its copy's is that node's own
error, on FP32 inputs, so one node's rank does not depend on the errors of the nodes before it.

Measured at the node's output, not at its inputs: an input tensor whose power is dominated by one
large channel (or a weight by one large value) shows a tiny input error while every other channel
rounds to zero; what the node makes of it is what matters. `qdq_loss_debug` also keeps every
activation of every image in memory (gigabytes for a 224x224 VGG stack on 129 images); this
streams batch by batch and keeps two sums per node. With `accumulated`, the Q/DQ model runs too
and each node's output is compared with FP32's: how far the fully quantized model has drifted by
that node (reported, not ranked on).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgecxr.runtime.onnxrt import session_options
from edgecxr.stages.export.sensitivity import quantized_nodes

#: images the ranking reads (evenly spaced over the split): a ranking needs a statistic, not every image
ERROR_IMAGES = 32
#: images per pass: every exposed activation of a batch is held at once (VGG block 1: 12.8 MB per image and tensor)
ERROR_BATCH = 2


@dataclass
class NodeError:
    """One quantized node's own quantization error on the analysis images (noise power / signal power)."""

    name: str
    op_type: str
    weights: int  #: parameters of its quantized weight (0 for activation-only nodes)
    own_nsr: float  #: its output with its own inputs and weight quantized, vs FP32, both fed FP32 activations (channel mean)
    output_nsr: float | None = None  #: its output in the fully quantized model vs FP32 (with `accumulated`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def shadow_model(qdq: Any, fp32: Any, weighted_only: bool = False) -> tuple[Any, dict[str, tuple[str, str, int]]]:
    """The FP32 model plus a quantized copy of every quantized node, reading the FP32 activations.

    Returns the model and node name -> (FP32 output, copy's output, quantized weight parameters).
    Each copy's quantized inputs go through a QuantizeLinear/DequantizeLinear pair with the Q/DQ
    model's scale and zero point; a weight stored as int8 is dequantized from the Q/DQ model's
    int8 values. Nodes without an FP32 counterpart of the same name are skipped.
    """
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    graph = model.graph
    qconsts = {t.name: t for t in qdq.graph.initializer}
    producers = {out: n for n in qdq.graph.node for out in n.output}
    fp32_nodes = {n.name: n for n in fp32.graph.node}
    copied: set[str] = set()

    def const(name: str) -> str:
        new = f"shadow/{name}"
        if new not in copied:
            t = onnx.TensorProto()
            t.CopyFrom(qconsts[name])
            t.name = new
            graph.initializer.append(t)
            copied.add(new)
        return new

    pairs: dict[str, tuple[str, str, int]] = {}
    for node in quantized_nodes(qdq, weighted_only):
        src = fp32_nodes.get(node.name)
        if src is None or len(src.input) != len(node.input) or not src.output:
            continue
        inputs, weights = list(src.input), 0
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or any(n and n not in qconsts for n in dq.input[1:]):
                continue
            axis = [a for a in dq.attribute if a.name == "axis"]
            qparams = [const(n) if n else "" for n in dq.input[1:]]
            out = f"shadow/{node.name}/in{i}"
            if dq.input[0] in qconsts:  # int8 weight
                weights += int(np.prod(qconsts[dq.input[0]].dims))
                graph.node.append(helper.make_node("DequantizeLinear", [const(dq.input[0]), *qparams], [out],
                                                   name=out + "/dq", **{a.name: a.i for a in axis}))
            else:
                q = producers.get(dq.input[0])
                if q is None or q.op_type != "QuantizeLinear":
                    continue
                if q.input[0] in qconsts:  # a float weight quantized in the graph
                    weights += int(np.prod(qconsts[q.input[0]].dims))
                graph.node.append(helper.make_node("QuantizeLinear", [src.input[i], *qparams], [out + "_q"],
                                                   name=out + "/q", **{a.name: a.i for a in axis}))
                graph.node.append(helper.make_node("DequantizeLinear", [out + "_q", *qparams], [out],
                                                   name=out + "/dq", **{a.name: a.i for a in axis}))
            inputs[i] = out
        copy = onnx.NodeProto()
        copy.CopyFrom(src)
        copy.name = f"shadow/{src.name}"
        del copy.input[:]
        copy.input.extend(inputs)
        outs = [f"shadow/{o}" if o else "" for o in src.output]
        del copy.output[:]
        copy.output.extend(outs)
        graph.node.append(copy)
        pairs[node.name] = (src.output[0], outs[0], weights)
    return model, pairs


def _session(model: Any, outputs: Sequence[str]) -> Any:
    """A CPU session of `model` that also returns `outputs`, run as written (no rewrite folds the Q/DQ away)."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs if n not in have)
    return ort.InferenceSession(m.SerializeToString(), sess_options=session_options(optimize=False), providers=["CPUExecutionProvider"])


def _channel_power(a: np.ndarray) -> np.ndarray:
    """Sum of squares per channel (axis 1; the whole tensor below rank 2), float64."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 2:
        return np.array([np.sum(np.square(a))])
    return np.sum(np.square(np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)), axis=1)


def _add(acc: dict[str, Any], key: str, noise: np.ndarray, power: np.ndarray) -> None:
    if key in acc:
        acc[key][0] += noise
        acc[key][1] += power
    else:
        acc[key] = [noise, power]


def _nsr(pair: list[np.ndarray] | None) -> float:
    """Mean over the live channels of each channel's noise / signal power.

    Per channel, not over the whole tensor: one large channel (a constant 1000 that INT8 holds
    exactly) would otherwise dominate the signal power and hide every other channel rounding to 0.
    """
    if pair is None:
        return 0.0
    noise, power = pair
    live = power > 0
    return float(np.mean(noise[live] / power[live])) if live.any() else 0.0


def node_errors(
    qdq: Any, fp32: Any, x: np.ndarray, *, weighted_only: bool = False, accumulated: bool = False,
    batch_size: int = ERROR_BATCH, log: Callable[[str], None] | None = None,
) -> list[NodeError]:
    """Every quantized node's own error on images `x` (one pass of the shadow model), largest first.

    Reads at most ERROR_IMAGES of `x`, evenly spaced; the search then scores every image.
    """
    x = x[:: max(1, -(-len(x) // ERROR_IMAGES))]
    shadow, pairs = shadow_model(qdq, fp32, weighted_only)
    ref_outs = sorted({p[0] for p in pairs.values()})
    wanted = [*ref_outs, *[p[1] for p in pairs.values()]]
    session = _session(shadow, wanted)
    qdq_session = _session(qdq, ref_outs) if accumulated else None
    in_name = session.get_inputs()[0].name
    own: dict[str, Any] = {}
    drift: dict[str, Any] = {}
    t0 = time.perf_counter()
    for start in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32)
        values = dict(zip(wanted, session.run(wanted, {in_name: batch}), strict=True))
        for name, (ref, out, _) in pairs.items():
            if values[ref].dtype.kind == "f":  # Shape and friends: nothing to round
                _add(own, name, _channel_power(values[out] - values[ref]), _channel_power(values[ref]))
        if qdq_session is not None:
            got = qdq_session.run(ref_outs, {qdq_session.get_inputs()[0].name: batch})
            for ref, v in zip(ref_outs, got, strict=True):
                if v.dtype.kind == "f":
                    _add(drift, ref, _channel_power(v - values[ref]), _channel_power(values[ref]))
        if log and (start // batch_size) % 16 == 15:
            log(f"  quantization error: {start + len(batch)}/{len(x)} images, {time.perf_counter() - t0:.0f} s")

    ops = {n.name: n.op_type for n in qdq.graph.node}
    rows = [NodeError(name, ops[name], weights, _nsr(own.get(name)), _nsr(drift.get(ref)) if accumulated else None)
            for name, (ref, _, weights) in pairs.items()]
    rows.sort(key=lambda r: -r.own_nsr)
    return rows
