"""The I/O contract both ONNX-file runners enforce at load (runtime/base.OnnxFileIO): one input, the
probabilities first and at most a `features` output; anything else is refused before a batch runs."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from edgecxr.core.errors import BundleError
from edgecxr.runtime.backends import RUNNERS


def _model(path, outputs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    nodes = [helper.make_node("Identity", ["x"], [name]) for name in outputs]
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 4]) for name in outputs]
    graph = helper.make_graph(nodes, "g", [x], outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_onnx_runners_refuse_an_extra_output_and_report_the_ones_they_take(tmp_path, backend):
    cls = RUNNERS[backend]
    if cls.availability() is not None:
        pytest.skip(cls.availability())
    bad = _model(tmp_path / "bad.onnx", ["probs", "logits"])
    with pytest.raises(BundleError, match=r"expected 1 input and 1 output \(plus an optional 'features'\), got "
                                          r"1 inputs and outputs \['probs', 'logits'\]"):
        cls(bad).load()
    good = cls(_model(tmp_path / "good.onnx", ["probs", "features"]))
    assert good.output_names() is None and good.io_shapes() == (None, None)  # nothing loaded yet
    good.load()
    try:
        assert good.output_names() == ["probs", "features"]
        shape_in, shape_out = good.io_shapes()
        assert len(shape_in) == 2 and len(shape_out) == 2 and shape_in[1] == shape_out[1] == 4
    finally:
        good.close()
    assert good.output_names() is None
