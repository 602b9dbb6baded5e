"""An FP32 ONNX for bundles that ship only their FP16 model (the reference models, to stay small).

INT8 calibration and the sensitivity analysis start from an FP32 graph. Every FP16 weight is
exactly representable in FP32, so widening the FP16 model's weights, casts and value types gives
the FP32 model of those weights: the trained FP32 model rounded once to FP16, which passed the
gate against the trained model. The widened file is checked against the FP16 one before it is
published, and recorded as derived (`export.fp32_from_fp16`), so nobody mistakes it for the
trained FP32 weights; the gate still compares against the stored reference of the trained model.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError
from edgecxr.core.fileutil import sha256_file
from edgecxr.core.metadata import bundle_metadata, set_metadata
from edgecxr.core.publish import Candidate
from edgecxr.stages.export.onnx_tools import onnx_predict, write_model

#: max |probability difference| allowed between the FP16 model and its widened FP32 twin
WIDEN_ATOL = 1e-3


def widen_fp16(model: Any) -> Any:
    """The FP16 ONNX with every FP16 initializer, cast and value type widened to FP32 (a new model)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.data_type == TensorProto.FLOAT16:
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for node in out.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
    for vi in [*out.graph.value_info, *out.graph.input, *out.graph.output]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.checker.check_model(out)
    return out


def ensure_fp32(bundle: Bundle, images: int = 8, seed: int = 0) -> Path:
    """The bundle's FP32 ONNX; derived from its FP16 ONNX (and recorded) when it has none."""
    import onnx

    existing = bundle.artifact("onnx_fp32", must_exist=False)
    if existing is not None:
        return existing
    fp16_path = bundle.artifact("onnx_fp16", must_exist=False)
    if fp16_path is None:
        bundle.artifact("onnx_fp32")  # raises: no FP32 and nothing to derive it from (names `edgecxr export`)
    fp32 = widen_fp16(onnx.load(str(fp16_path)))
    set_metadata(fp32, bundle_metadata(bundle, "fp32"))
    fp32.doc_string = f"edgecxr {bundle.model} ({bundle.spec.id}), FP32 widened from {fp16_path.name}"
    spec = bundle.spec
    x = np.random.default_rng(seed).random((images, spec.height, spec.width, spec.channels), dtype=np.float32)
    x = x * spec.scale + spec.offset
    with Candidate(bundle.default_path("onnx_fp32")) as candidate:
        write_model(fp32, candidate.path)
        diff = float(np.abs(onnx_predict(candidate.path, x) - onnx_predict(fp16_path, x)).max())
        if diff > WIDEN_ATOL:
            kept = candidate.reject(note={"max_abs_diff_vs_fp16": diff})
            raise BundleError(f"the widened FP32 model differs from {fp16_path.name} by {diff:.3g} (kept as {kept.name})")
        final = candidate.publish()
    bundle.set_artifact("onnx_fp32", final)
    export = dict(bundle.meta.get("export") or {})
    export["fp32_from_fp16"] = {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": fp16_path.name, "source_sha256": sha256_file(fp16_path), "sha256": sha256_file(final),
        "max_abs_diff_vs_fp16": diff, "images": images,
    }
    bundle.update(export=export)
    return final
