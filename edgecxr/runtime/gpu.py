"""GPU facts and CUDA graphs: the thin layer edgecxr keeps on top of Polygraphy's CUDA wrapper.

Why this module exists at all: Polygraphy (`polygraphy.cuda`) loads libcudart through ctypes and
wraps streams, device memory and copies, which is everything the TensorRT runner needs to run an
engine; it replaced our own cuda-python/pycuda layer (runtime/cuda_mem.py, removed). Two things it
does not wrap, and this module adds, calling the same libcudart handle (`wrapper().handle`):

- device facts for the engine sidecar and the compatibility check: GPU name, compute capability,
  memory, CUDA runtime/driver versions (cudaGetDeviceProperties' first field is the name, stable
  across CUDA versions; the rest come from cudaDeviceGetAttribute / cudaMemGetInfo, which have
  stable signatures, instead of reading a struct whose layout changes);
- CUDA graph capture and replay (cudaStreamBeginCapture / EndCapture / GraphInstantiateWithFlags /
  GraphLaunch): Polygraphy's TrtRunner has no CUDA graph support (checked in 0.53.6).

Nothing is imported at module import time; every function works on a CPU-only machine by
reporting why there is no GPU.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from edgecxr.core.errors import BackendUnavailableError
from edgecxr.core.lazy import available, require

log = logging.getLogger("edgecxr.runtime.gpu")

# cudaDeviceAttr values (CUDA runtime API, unchanged since CUDA 5)
_ATTR_MULTIPROCESSORS = 16
_ATTR_INTEGRATED = 18
_ATTR_CC_MAJOR = 75
_ATTR_CC_MINOR = 76
_CAPTURE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal


def format_cuda_version(version: int | None) -> str | None:
    """CUDA's integer versions (12040 = 12.4) as 'MAJOR.MINOR'; None stays None.

    Why: cudaRuntimeGetVersion / cudaDriverGetVersion return 1000*major + 10*minor, and the sidecar
    should record what a person reads in `nvidia-smi`.
    """
    if version is None or version <= 0:
        return None
    return f"{version // 1000}.{(version % 1000) // 10}"


def quiet_polygraphy() -> None:
    """Send Polygraphy's messages through Python logging (stderr), warnings and worse only.

    Polygraphy prints to stdout by default, where `edgecxr build` prints the engine path and
    `--json` commands print JSON.
    """
    from polygraphy.logger import G_LOGGER

    G_LOGGER.use_python_logging_system = True
    G_LOGGER.module_severity = G_LOGGER.WARNING


def cudart() -> Any:
    """The ctypes handle of libcudart that Polygraphy loaded; BackendUnavailableError if none."""
    require("polygraphy", "the TensorRT backend (CUDA memory and engines)")
    quiet_polygraphy()
    from polygraphy import cuda
    from polygraphy.logger import G_LOGGER

    try:
        with G_LOGGER.verbosity(G_LOGGER.CRITICAL):  # its multi-line "not found" warning: our one line instead
            handle = cuda.wrapper().handle
    except Exception as exc:  # OSError from ctypes, PolygraphyException: no CUDA runtime here
        raise BackendUnavailableError(f"the CUDA runtime (libcudart) cannot be loaded: {str(exc).splitlines()[0]}") from None
    if not handle:
        raise BackendUnavailableError("the CUDA runtime (libcudart) cannot be loaded")
    return handle


def _check(status: int, what: str) -> None:
    if status != 0:
        raise BackendUnavailableError(f"CUDA error {status} in {what}")


def _int_out(fn: Any, *args: Any) -> int:
    value = ctypes.c_int(0)
    _check(fn(ctypes.byref(value), *args), getattr(fn, "__name__", "CUDA call"))
    return int(value.value)


def device_count() -> int:
    try:
        return _int_out(cudart().cudaGetDeviceCount)
    except BackendUnavailableError:
        return 0


def gpu_availability() -> str | None:
    """None when Polygraphy and libcudart are here and see a GPU, else the one-line reason why not."""
    if not available("polygraphy"):
        return "polygraphy is not installed (pip install 'edgecxr[gpu]')"
    try:
        rt = cudart()
        count = _int_out(rt.cudaGetDeviceCount)
    except BackendUnavailableError as exc:
        return str(exc)
    except Exception as exc:  # a driver too old for the runtime, etc.: report, do not crash `info`
        return f"CUDA not usable: {exc}"
    return None if count > 0 else "no CUDA GPU visible (driver missing or CUDA_VISIBLE_DEVICES empty)"


def device_properties(index: int = 0) -> dict[str, Any]:
    """Name, compute capability, memory and CUDA versions of GPU `index` (the sidecar's `gpu`)."""
    rt = cudart()
    props = ctypes.create_string_buffer(16384)  # cudaDeviceProp is ~1 KB; `char name[256]` comes first
    try:  # CUDA 12 headers map the name to _v2; the old symbol stays exported for older runtimes
        get_props = rt.cudaGetDeviceProperties_v2
    except AttributeError:
        get_props = rt.cudaGetDeviceProperties
    _check(get_props(props, ctypes.c_int(index)), "cudaGetDeviceProperties")
    name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace").strip()
    major = _int_out(rt.cudaDeviceGetAttribute, ctypes.c_int(_ATTR_CC_MAJOR), ctypes.c_int(index))
    minor = _int_out(rt.cudaDeviceGetAttribute, ctypes.c_int(_ATTR_CC_MINOR), ctypes.c_int(index))
    info: dict[str, Any] = {"name": name, "compute_capability": f"{major}.{minor}"}
    try:
        info["multiprocessors"] = _int_out(rt.cudaDeviceGetAttribute, ctypes.c_int(_ATTR_MULTIPROCESSORS), ctypes.c_int(index))
        info["integrated"] = bool(_int_out(rt.cudaDeviceGetAttribute, ctypes.c_int(_ATTR_INTEGRATED), ctypes.c_int(index)))
        _check(rt.cudaSetDevice(ctypes.c_int(index)), "cudaSetDevice")
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        _check(rt.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)), "cudaMemGetInfo")
        info["total_memory_mb"] = int(total.value) >> 20
    except BackendUnavailableError as exc:  # facts for the record only: never block a build on them
        log.warning("GPU %d: %s", index, exc)
    info.update(versions())
    return info


def versions() -> dict[str, str | None]:
    rt = cudart()
    out: dict[str, str | None] = {"binding": "polygraphy"}
    for key, fn in (("cuda_runtime", "cudaRuntimeGetVersion"), ("cuda_driver", "cudaDriverGetVersion")):
        try:
            out[key] = format_cuda_version(_int_out(getattr(rt, fn)))
        except BackendUnavailableError:
            out[key] = None
    return out


class CudaGraph:
    """One captured CUDA graph: `capture(stream_ptr, enqueue)` once, `launch(stream_ptr)` many times."""

    def __init__(self) -> None:
        self._rt = cudart()
        self.graph = ctypes.c_void_p(0)
        self.exec = ctypes.c_void_p(0)

    def capture(self, stream_ptr: int, enqueue: Any) -> None:
        """Record what `enqueue()` puts on the stream; BackendUnavailableError if CUDA refuses."""
        rt, stream = self._rt, ctypes.c_void_p(stream_ptr)
        _check(rt.cudaStreamBeginCapture(stream, ctypes.c_int(_CAPTURE_THREAD_LOCAL)), "cudaStreamBeginCapture")
        try:
            ok = enqueue()
        finally:
            _check(rt.cudaStreamEndCapture(stream, ctypes.byref(self.graph)), "cudaStreamEndCapture")
        if not ok:
            self.free()
            raise BackendUnavailableError("the enqueue failed during CUDA graph capture")
        _check(rt.cudaGraphInstantiateWithFlags(ctypes.byref(self.exec), self.graph, ctypes.c_ulonglong(0)),
               "cudaGraphInstantiateWithFlags")

    def launch(self, stream_ptr: int) -> None:
        _check(self._rt.cudaGraphLaunch(self.exec, ctypes.c_void_p(stream_ptr)), "cudaGraphLaunch")

    def free(self) -> None:
        if self.exec.value:
            self._rt.cudaGraphExecDestroy(self.exec)
            self.exec = ctypes.c_void_p(0)
        if self.graph.value:
            self._rt.cudaGraphDestroy(self.graph)
            self.graph = ctypes.c_void_p(0)
