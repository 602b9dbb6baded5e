"""FP16 ONNX: FP16 weights behind FP32 I/O, Softmax kept in FP32, runs on ONNX Runtime CPU."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import GateFailedError
from edgecxr.core.metadata import META_PRECISION, read_metadata
from edgecxr.stages.export.fp16 import convert_fp16
from edgecxr.stages.export.onnx import export_bundle

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.mark.parametrize("fixture", ["exported_cnn", "exported_lstm"])
def test_fp16_weights_fp32_io_and_runs(fixture, request):
    bundle = Bundle.load(request.getfixturevalue(fixture))
    path = bundle.artifact("onnx_fp16")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)

    float_inits = [i for i in model.graph.initializer if i.data_type in (FLOAT, FLOAT16)]
    assert float_inits and all(i.data_type == FLOAT16 for i in float_inits)
    assert model.graph.input[0].type.tensor_type.elem_type == FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == FLOAT
    assert read_metadata(path)[META_PRECISION] == "fp16"

    # Softmax computes in FP32 and writes the output directly (no round trip through FP16).
    (softmax,) = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmax.output[0] == "probs"
    producer = {o: n for n in model.graph.node for o in n.output}[softmax.input[0]]
    assert producer.op_type == "Cast" and producer.attribute[0].i == FLOAT

    spec = bundle.spec
    lo, hi = spec.output_range
    x = np.random.default_rng(7).uniform(lo, hi, (4, *spec.input_shape)).astype(np.float32)
    fp32 = ort.InferenceSession(str(bundle.artifact("onnx_fp32")), providers=["CPUExecutionProvider"])
    fp16 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    a, b = fp32.run(None, {"image": x})[0], fp16.run(None, {"image": x})[0]
    assert b.dtype == np.float32
    assert 0 < np.abs(a - b).max() < 1e-2  # really computed in FP16, and close

    section = bundle.meta["export"]["fp16"]
    assert section["parity_vs_fp32"]["passed"] and section["parity_vs_keras"]["max_abs_diff"] < 1e-2
    assert "Softmax" in section["kept_float_ops"]
    assert section["summary"]["io"] == {"image": "float", "probs": "float"}


def test_extra_block_ops_stay_float(exported_cnn):
    model = onnx.load(str(Bundle.load(exported_cnn).artifact("onnx_fp32")))
    converted = convert_fp16(model, extra_block_ops=["Gemm"])
    weights = {i.name: i.data_type for i in converted.graph.initializer}
    gemms = [n for n in converted.graph.node if n.op_type == "Gemm"]
    assert gemms and all(weights[n.input[1]] == FLOAT for n in gemms)
    convs = [n for n in converted.graph.node if n.op_type == "Conv"]
    assert all(weights[n.input[1]] == FLOAT16 for n in convs)


def test_fp16_over_tolerance_is_not_published(keras_lstm_bundle, copy_bundle):
    bundle = copy_bundle(keras_lstm_bundle)
    with pytest.raises(GateFailedError, match="FP16 ONNX differs"):
        export_bundle(bundle, fp16_atol=1e-12, progress=False)
    reloaded = Bundle.load(bundle.dir)
    assert reloaded.artifact("onnx_fp32").is_file()  # FP32 passed and is published
    assert reloaded.artifact("onnx_fp16", must_exist=False) is None
    assert (bundle.dir / "model.fp16.rejected.onnx").is_file()
    assert reloaded.meta["export"]["fp16"]["rejected"] == "model.fp16.rejected.onnx"
