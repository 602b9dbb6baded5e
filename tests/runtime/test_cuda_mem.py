"""CUDA binding selection and the parts of cuda_mem that need no GPU."""

from __future__ import annotations

import pytest

from edgecxr.core.errors import BackendUnavailableError, MissingDependencyError
from edgecxr.core.lazy import available
from edgecxr.runtime import cuda_mem
from edgecxr.runtime.backends import create_runner
from edgecxr.runtime.tensorrt import TensorRTRunner
from edgecxr.stages.evaluate import resolve_backend


def test_format_cuda_version():
    assert cuda_mem.format_cuda_version(12040) == "12.4"
    assert cuda_mem.format_cuda_version(11080) == "11.8"
    assert cuda_mem.format_cuda_version(13000) == "13.0"
    assert cuda_mem.format_cuda_version(0) is None
    assert cuda_mem.format_cuda_version(None) is None


@pytest.mark.skipif(available("cuda") or available("pycuda"), reason="a CUDA binding is installed here")
def test_without_a_cuda_binding_everything_says_why():
    assert cuda_mem.which_cuda_binding() is None
    assert "cuda-python" in cuda_mem.gpu_availability()
    with pytest.raises(MissingDependencyError, match=r"edgecxr\[gpu\]"):
        cuda_mem.cuda_api()
    with pytest.raises(MissingDependencyError, match=r"edgecxr\[gpu\]"):
        cuda_mem.cuda_api("pycuda")


@pytest.mark.skipif(available("tensorrt"), reason="tensorrt is installed here")
def test_tensorrt_runner_availability_reason_on_cpu(tmp_path):
    reason = TensorRTRunner.availability()
    assert reason and "tensorrt" in reason
    # engines are routed to the TensorRT backend by suffix, and creating it here refuses with the reason
    for name in ("model.engine", "model.PLAN"):
        assert resolve_backend("auto", tmp_path / name) == "tensorrt"
        with pytest.raises(BackendUnavailableError, match=r"backend 'tensorrt' is not available here: tensorrt"):
            create_runner("tensorrt", tmp_path / name)
