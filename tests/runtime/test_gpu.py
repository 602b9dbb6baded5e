"""The GPU layer on a machine without a GPU: every probe says why, nothing crashes, TensorRT stays unimported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgecxr.core.errors import BackendUnavailableError
from edgecxr.core.lazy import available
from edgecxr.runtime import gpu
from edgecxr.runtime.backends import create_runner
from edgecxr.runtime.tensorrt import TensorRTRunner
from edgecxr.stages.evaluate import resolve_backend


def test_format_cuda_version():
    assert gpu.format_cuda_version(12040) == "12.4"
    assert gpu.format_cuda_version(11080) == "11.8"
    assert gpu.format_cuda_version(13000) == "13.0"
    assert gpu.format_cuda_version(0) is None
    assert gpu.format_cuda_version(None) is None


@pytest.mark.skipif(gpu.gpu_availability() is None, reason="a GPU is visible here")
def test_without_a_gpu_every_probe_says_why():
    reason = gpu.gpu_availability()
    assert reason and "\n" not in reason
    assert gpu.device_count() == 0
    if available("polygraphy"):
        assert "polygraphy" not in reason  # installed: the reason is the CUDA runtime or the device
    else:
        assert "edgecxr[gpu]" in reason


@pytest.mark.skipif(available("tensorrt"), reason="tensorrt is installed here")
def test_tensorrt_runner_availability_reason_on_cpu(tmp_path):
    reason = TensorRTRunner.availability()
    assert reason and "tensorrt" in reason
    # engines are routed to the TensorRT backend by suffix, and creating it here refuses with the reason
    for name in ("model.engine", "model.PLAN"):
        assert resolve_backend("auto", tmp_path / name) == "tensorrt"
        with pytest.raises(BackendUnavailableError, match=r"backend 'tensorrt' is not available here: tensorrt"):
            create_runner("tensorrt", tmp_path / name)


def test_info_and_availability_never_import_tensorrt():
    """`edgecxr info` probes the GPU through Polygraphy's libcudart loader; TensorRT itself stays unimported."""
    code = (
        "import sys\n"
        "from edgecxr.runtime.backends import system_info\n"
        "info = system_info()\n"
        "assert info['cuda_binding'] in ('polygraphy', None), info['cuda_binding']\n"
        "assert 'tensorrt' not in sys.modules or info['tensorrt']['version'], 'tensorrt imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr
    assert "Polygraphy" not in out.stdout  # Polygraphy's messages never reach stdout


def test_without_libcudart_the_reason_is_one_line(monkeypatch, capsys):
    """Polygraphy's multi-line 'CUDA runtime not found' warning is replaced by one line."""
    pytest.importorskip("polygraphy")
    import ctypes

    import polygraphy.cuda.cuda as pg_cuda

    real = ctypes.CDLL

    def cdll(name, *args, **kwargs):
        if "cudart" in str(name):
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(pg_cuda, "G_CUDA", None)  # forget a wrapper loaded earlier in this process
    monkeypatch.setattr(pg_cuda, "_find_cuda_lib_dirs", lambda: [])
    monkeypatch.setattr(ctypes, "CDLL", cdll)
    reason = gpu.gpu_availability()
    assert reason == "the CUDA runtime (libcudart) cannot be loaded: libcudart.so: cannot open shared object file: No such file or directory"
    captured = capsys.readouterr()
    assert "CUDA runtime library" not in captured.out + captured.err
