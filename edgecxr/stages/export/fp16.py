"""FP16 ONNX (FP32 I/O) from the FP32 export, checked in ONNX Runtime before it is published.

TensorRT 10.1+ builds strongly typed networks: an engine is FP16 where the ONNX says FP16, so the
FP16 model is a file of its own rather than a builder flag. onnxconverter-common's
`convert_float_to_float16` does the conversion; `keep_io_types=True` keeps the "image" input and
"probs" output float32 so every runtime feeds the same preprocessed tensor.

Ops kept in FP32 (the block list): onnxconverter-common's defaults (ops without FP16 kernels or
with integer/ML semantics) plus the numerically sensitive ones: Softmax/LogSoftmax (their
exponentials and normalising sum lose precision in FP16, and the probabilities are what every
gate compares), exponentials, logarithms, powers, square roots, reciprocals and
reductions/normalisations (sums of many terms). Convolutions, Gemm/MatMul, pooling, ReLU and the
LSTM run in FP16;
ONNX Runtime's CPU provider inserts casts around FP16 ops it has no kernel for (e.g. LSTM), so
the file also runs on CPU-only workstations.

`max_finite_val` is raised from the library's 1e4 to FP16's true maximum (65504) so large folded
BatchNorm weights are not clipped needlessly; smaller constants than FP16 can hold are clamped by
the library (logged in its own warnings).

onnxconverter-common 1.16 works with onnx 1.23 as is (earlier releases used the removed
`onnx.mapping`). One quirk needs a fix-up: with keep_io_types=True, when the op producing a graph
output is in the block list (here Softmax -> "probs"), the converter appends a Cast to FP16 and
declares the output float16, breaking the FP32-I/O contract and rounding the probabilities.
`_restore_float_outputs` removes that Cast (the Softmax already yields float32) or, for any other
producer, casts back to float32.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError
from edgecxr.core.fileutil import sha256_file
from edgecxr.core.lazy import require
from edgecxr.core.metadata import bundle_metadata, set_metadata
from edgecxr.core.publish import Candidate
from edgecxr.stages.export.onnx_tools import (
    check_standard,
    onnx_predict,
    op_counts,
    parity_stats,
    write_model,
)

if TYPE_CHECKING:  # pragma: no cover
    import onnx

log = logging.getLogger(__name__)

#: FP16 vs FP32 ONNX: max absolute probability difference tolerated (FP16 has ~3 decimal digits).
FP16_ATOL = 1e-2
#: Largest finite float16.
FP16_MAX = 65504.0

#: Op types kept in FP32 on top of onnxconverter-common's DEFAULT_OP_BLOCK_LIST.
SENSITIVE_OPS = (
    "Softmax",
    "LogSoftmax",
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Erf",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "LayerNormalization",
    "InstanceNormalization",
)


def block_list(extra: Sequence[str] = ()) -> list[str]:
    """onnxconverter-common's default block list + SENSITIVE_OPS + `extra`, de-duplicated."""
    float16 = require("onnxconverter_common.float16", "FP16 conversion")
    out: list[str] = []
    for op in [*float16.DEFAULT_OP_BLOCK_LIST, *SENSITIVE_OPS, *extra]:
        if op not in out:
            out.append(op)
    return out


def convert_fp16(
    model: onnx.ModelProto, *, extra_block_ops: Sequence[str] = (), node_block_list: Sequence[str] = ()
) -> onnx.ModelProto:
    """FP16 copy of an FP32 ONNX model with FP32 input/output and FP32 for the blocked ops."""
    float16 = require("onnxconverter_common.float16", "FP16 conversion")
    try:
        with warnings.catch_warnings(record=True) as caught:
            # One UserWarning per clamped constant (thousands on a real model): counted instead.
            warnings.simplefilter("always", UserWarning)
            converted = float16.convert_float_to_float16(
                model,
                keep_io_types=True,
                max_finite_val=FP16_MAX,
                op_block_list=block_list(extra_block_ops),
                node_block_list=list(node_block_list),
            )
    except Exception as exc:  # the converter raises plain ValueError/KeyError on odd graphs
        raise BundleError(f"onnxconverter-common could not convert the model to FP16: {exc}") from exc
    clamped = sum("truncated to" in str(w.message) for w in caught)
    if clamped:
        log.info("FP16: %d constants outside FP16's range were clamped (to +-1e-7 or +-65504)", clamped)
    for w in caught:
        if "truncated to" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    _restore_float_outputs(converted, model)
    return converted


def _restore_float_outputs(converted: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Make graph outputs that were float32 in `original` float32 again (see module docstring)."""
    import onnx
    from onnx import helper

    float_outputs = {o.name for o in original.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    graph = converted.graph
    for out in graph.output:
        if out.name not in float_outputs or out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            continue
        producer = next((n for n in graph.node if out.name in n.output), None)
        to = next((a.i for a in producer.attribute if a.name == "to"), None) if producer is not None else None
        source = producer.input[0] if producer is not None and producer.input else None
        source_node = next((n for n in graph.node if source in n.output), None) if source else None
        source_is_float = source_node is not None and _output_is_float32(converted, source, source_node)
        if producer is not None and producer.op_type == "Cast" and to == onnx.TensorProto.FLOAT16 and source_is_float:
            # Blocked op (e.g. Softmax) already yields float32: drop the Cast, let it write the output.
            graph.node.remove(producer)
            for i, name in enumerate(source_node.output):
                if name == source:
                    source_node.output[i] = out.name
            for consumer in graph.node:
                for i, name in enumerate(consumer.input):
                    if name == source:
                        consumer.input[i] = out.name
        else:
            fp16_name = f"{out.name}_fp16"
            for node in graph.node:
                node.output[:] = [fp16_name if o == out.name else o for o in node.output]
                node.input[:] = [fp16_name if i == out.name else i for i in node.input]
            graph.node.append(helper.make_node("Cast", [fp16_name], [out.name], name=f"{out.name}_to_float32", to=onnx.TensorProto.FLOAT))
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    kept = [vi for vi in graph.value_info if vi.name not in float_outputs]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _output_is_float32(model: onnx.ModelProto, tensor: str, producer: onnx.NodeProto) -> bool:
    import onnx

    for vi in model.graph.value_info:
        if vi.name == tensor:
            return vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # No recorded type: a Softmax/LogSoftmax kept in FP32 by the block list yields float32.
    return producer.op_type in SENSITIVE_OPS


def fp16_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Initializer dtypes and I/O dtypes: proves the file holds FP16 weights behind FP32 I/O."""
    import onnx

    counts: dict[str, int] = {}
    for init in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(init.data_type).lower()
        counts[name] = counts.get(name, 0) + 1
    io = {
        vi.name: onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()
        for vi in [*model.graph.input, *model.graph.output]
    }
    return {"initializers": dict(sorted(counts.items())), "io": io}


def export_fp16(
    bundle: Bundle,
    fp32_model: onnx.ModelProto,
    x: np.ndarray,
    *,
    fp32_probs: np.ndarray,
    keras_probs: np.ndarray | None = None,
    atol: float = FP16_ATOL,
    extra_block_ops: Sequence[str] = (),
    batch_size: int = 16,
) -> dict[str, Any]:
    """Write model.fp16.onnx when it runs in ONNX Runtime CPU and matches FP32 within `atol`.

    Returns the "fp16" sub-section of bundle.json's export section. A failing model is kept as
    model.fp16.rejected.onnx and not registered; the caller decides whether that is an error.
    """
    model = convert_fp16(fp32_model, extra_block_ops=extra_block_ops)
    set_metadata(model, bundle_metadata(bundle, "fp16"))
    model.doc_string = f"edgecxr {bundle.model} ({bundle.spec.id}), FP16 with FP32 I/O"
    check_standard(model)
    summary = fp16_summary(model)
    if summary["io"] != {"image": "float", "probs": "float"}:
        raise BundleError(f"FP16 conversion changed the I/O types: {summary['io']}")

    with Candidate(bundle.default_path("onnx_fp16")) as candidate:
        write_model(model, candidate.path)
        probs = onnx_predict(candidate.path, x, batch_size)  # raises BundleError if ONNX Runtime cannot run it
        section: dict[str, Any] = {
            "block_list": "onnxconverter_common DEFAULT_OP_BLOCK_LIST + "
            + ", ".join(dict.fromkeys([*SENSITIVE_OPS, *extra_block_ops])),
            "kept_float_ops": sorted({n.op_type for n in fp32_model.graph.node} & set(block_list(extra_block_ops))),
            "ops": op_counts(model),
            "summary": summary,
            "parity_vs_fp32": parity_stats(fp32_probs, probs, atol),
        }
        if keras_probs is not None:
            section["parity_vs_keras"] = parity_stats(keras_probs, probs, atol)
        if section["parity_vs_fp32"]["passed"]:
            final = candidate.publish()
            section["sha256"] = sha256_file(final)
            bundle.set_artifact("onnx_fp16", final)
        else:
            section["rejected"] = candidate.reject(note={"fp16": section}).name
    return section
