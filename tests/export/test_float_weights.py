"""Float weights of an INT8 model stored as FP16 only where FP16 holds them exactly."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgecxr.stages.export.float_weights import store_float_weights_fp16
from edgecxr.stages.export.qdq_check import check_tensorrt_qdq
from edgecxr.stages.export.sensitivity import _predict


def _x(bundle, n: int = 4) -> np.ndarray:
    lo, hi = bundle.spec.output_range
    return np.random.default_rng(0).uniform(lo, hi, (n, *bundle.spec.input_shape)).astype(np.float32)


def test_only_weights_fp16_holds_exactly_are_rewritten_and_outputs_do_not_change(exported_lstm, copy_bundle, tmp_path):
    from edgecxr.stages.export.int8 import quantize_qdq

    bundle = copy_bundle(exported_lstm)
    fp32 = onnx.load(str(bundle.artifact("onnx_fp32")))
    for init in fp32.graph.initializer:  # what a model widened from FP16 holds (the shipped reference models)
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16).astype(np.float32),
                                                  init.name))
    src = tmp_path / "fp16exact.onnx"
    onnx.save(fp32, str(src))
    quantize_qdq(src, tmp_path / "q.onnx", _x(bundle, 8), progress=False)
    qdq = onnx.load(str(tmp_path / "q.onnx"))
    before = _predict(qdq, _x(bundle))
    info = store_float_weights_fp16(qdq, min_elements=16)
    lstm = next(n for n in qdq.graph.node if n.op_type == "LSTM")
    assert set(lstm.input[1:3]) <= set(info["fp16_stored"])  # W and R of the LSTM, which ONNX Runtime leaves in float
    assert info["bytes_saved"] > 0
    assert np.array_equal(_predict(qdq, _x(bundle)), before)  # lossless
    assert check_tensorrt_qdq(qdq) == []  # Q/DQ untouched

    rounded = onnx.load(str(tmp_path / "q.onnx"))
    w = next(t for t in rounded.graph.initializer if t.name == lstm.input[1])
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + np.float32(1e-7), w.name))  # FP16 would round it
    assert lstm.input[1] not in store_float_weights_fp16(rounded, min_elements=16)["fp16_stored"]
