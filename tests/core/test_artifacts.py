"""core.artifacts: the one table every stage and the runtime ask about artifact kinds."""

import pytest

from edgecxr.core import artifacts
from edgecxr.core.errors import BundleError
from edgecxr.runtime.backends import RUNNERS
from edgecxr.runtime.select import BACKENDS


def test_every_backend_of_the_table_has_a_runner_and_the_reverse():
    """Each table backend has a runner; each other runner says whose files it runs (OpenVINO: the
    ONNX files of onnxruntime), so a new runtime cannot appear without a place in the table."""
    own = {name for name, cls in RUNNERS.items() if cls.runs_files_of is None}
    assert {k.backend for k in artifacts.KINDS} == own
    assert {cls.runs_files_of for cls in RUNNERS.values() if cls.runs_files_of} <= own
    assert RUNNERS["openvino"].runs_files_of == "onnxruntime"
    assert set(BACKENDS) == {"auto", *RUNNERS}


@pytest.mark.parametrize(
    ("name", "backend"),
    [("a/model.keras", "keras"), ("m.int8.onnx", "onnxruntime"), ("x.ENGINE", "tensorrt"), ("x.plan", "tensorrt")],
)
def test_backend_by_suffix(name, backend):
    assert artifacts.backend_for(name) == backend


def test_unknown_suffix_and_key_are_bundle_errors_naming_what_is_known():
    with pytest.raises(BundleError, match=r"\.onnx"):
        artifacts.backend_for("scan.png")
    with pytest.raises(BundleError, match="onnx_int8"):
        artifacts.kind("onnx_int4")
    with pytest.raises(BundleError, match="fp16"):
        artifacts.onnx_key("int4")


def test_precision_keys_and_default_files():
    assert [artifacts.onnx_key(p) for p in artifacts.PRECISIONS] == ["onnx_fp32", "onnx_fp16", "onnx_int8"]
    assert artifacts.BUNDLE_FILES["onnx_int8"] == "model.int8.onnx"
    assert "engine" not in artifacts.BUNDLE_FILES  # engines are named per GPU and TensorRT version
    assert artifacts.DEPLOYABLE == ("onnx_fp32", "onnx_fp16", "onnx_int8")
    assert artifacts.suffixes("tensorrt") == (".engine", ".plan")
