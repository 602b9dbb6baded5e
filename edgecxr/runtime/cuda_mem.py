"""CUDA memory for the TensorRT runner: pinned host + device buffers, one stream, async copies, events.

TensorRT's Python API takes raw device pointers and a stream handle; something else must own the
memory. NVIDIA's samples use cuda-python (`samples/python/common_runtime.py`: cudaMallocHost +
numpy view, cudaMalloc, cudaMemcpyAsync, cudaStreamSynchronize) and, on Jetson, pycuda
(`samples/python/efficientnet/infer.py`). This module gives both the same small interface so the
runner does not care which is installed:

  api = cuda_api()                      # cuda-python if importable, else pycuda
  buf = api.alloc(n_elements, np.float32)   # .host (pinned numpy view), .device (int pointer)
  stream = api.stream()
  api.htod(buf, nbytes, stream); ...; api.dtoh(buf, nbytes, stream); stream.synchronize()

cuda-python moved its runtime module from `cuda.cudart` to `cuda.bindings.runtime` (12.6+); both
are tried. Nothing here imports CUDA at module import time: the module loads on a CPU-only
machine, and `cuda_api()` raises MissingDependencyError when neither package is present.

CUDA graphs (capture one `execute_async_v3` per fixed batch size, replay with one launch) are
supported with cuda-python only; pycuda's graph API differs across releases, so there the runner
keeps ordinary enqueues.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from edgecxr.core.errors import BackendUnavailableError, MissingDependencyError
from edgecxr.core.lazy import available


def format_cuda_version(version: int | None) -> str | None:
    """CUDA's integer versions (12040 = 12.4, 11080 = 11.8) as 'MAJOR.MINOR'; None stays None.

    Why: cudaRuntimeGetVersion / cudaDriverGetVersion return 1000*major + 10*minor, and the sidecar
    should record what a person reads in `nvidia-smi`.
    """
    if version is None or version <= 0:
        return None
    return f"{version // 1000}.{(version % 1000) // 10}"


def which_cuda_binding() -> str | None:
    """'cuda-python', 'pycuda' or None: which CUDA binding `cuda_api()` would use (no import)."""
    if available("cuda.bindings") or _legacy_cudart_spec():
        return "cuda-python"
    if available("pycuda"):
        return "pycuda"
    return None


def _legacy_cudart_spec() -> bool:
    # `cuda.cudart` (cuda-python < 12.6). find_spec on a submodule imports the parent package `cuda`,
    # which is a light namespace package, not the CUDA libraries.
    return available("cuda") and available("cuda.cudart")


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError as exc:
            raise MissingDependencyError("cuda-python", "gpu", "CUDA memory of the TensorRT backend") from exc
    return cudart


# ------------------------------------------------------------------------------------------------
# Pinned host + device buffer pair
# ------------------------------------------------------------------------------------------------
class HostDeviceBuffer:
    """Pinned host array and a device allocation of the same size (one TensorRT I/O tensor).

    Allocated once for the engine's largest batch, so every call reuses the same device address:
    that keeps `set_tensor_address` a one-time step and makes CUDA-graph replay valid.
    """

    def __init__(self, host: np.ndarray, device: int, release: Any):
        self.host = host
        self.device = int(device)
        self.nbytes = int(host.nbytes)
        self._release = release

    def free(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()


class Stream:
    """A CUDA stream: `handle` is the integer TensorRT's execute_async_v3 takes."""

    def __init__(self, raw: Any, handle: int, sync: Any, release: Any):
        self.raw = raw
        self.handle = int(handle)
        self._sync = sync
        self._release = release

    def synchronize(self) -> None:
        self._sync()

    def free(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()


class CudaApi:
    """What the TensorRT runner needs from CUDA; one subclass per Python binding."""

    name = ""
    supports_graphs = False

    def alloc(self, count: int, dtype: np.dtype | type) -> HostDeviceBuffer:
        raise NotImplementedError

    def stream(self) -> Stream:
        raise NotImplementedError

    def htod(self, buf: HostDeviceBuffer, nbytes: int, stream: Stream) -> None:
        """Async copy of the first `nbytes` of buf.host to buf.device."""
        raise NotImplementedError

    def dtoh(self, buf: HostDeviceBuffer, nbytes: int, stream: Stream) -> None:
        """Async copy of the first `nbytes` of buf.device to buf.host."""
        raise NotImplementedError

    def event(self) -> Any:
        raise NotImplementedError

    def record(self, event: Any, stream: Stream) -> None:
        raise NotImplementedError

    def elapsed_ms(self, start: Any, end: Any) -> float:
        raise NotImplementedError

    def free_event(self, event: Any) -> None:  # noqa: B027 - optional hook
        pass

    def device_properties(self, index: int = 0) -> dict[str, Any]:
        raise NotImplementedError

    def device_count(self) -> int:
        raise NotImplementedError

    def versions(self) -> dict[str, str | None]:
        """CUDA runtime and driver versions ('12.4')."""
        raise NotImplementedError

    # CUDA graphs (cuda-python only)
    def begin_capture(self, stream: Stream) -> None:
        raise BackendUnavailableError(f"CUDA graphs are not supported with {self.name}")

    def end_capture(self, stream: Stream) -> Any:
        raise BackendUnavailableError(f"CUDA graphs are not supported with {self.name}")

    def launch_graph(self, graph: Any, stream: Stream) -> None:
        raise BackendUnavailableError(f"CUDA graphs are not supported with {self.name}")

    def free_graph(self, graph: Any) -> None:  # noqa: B027 - optional hook
        pass


class _CudaPython(CudaApi):
    """cuda-python runtime API, as in NVIDIA's samples/python/common_runtime.py."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self) -> None:
        self.rt = _import_cudart()

    def call(self, result: Any) -> Any:
        """Check the error code cuda-python returns first and unwrap the rest (common_runtime.cuda_call)."""
        if not isinstance(result, tuple):
            result = (result,)
        err, rest = result[0], result[1:]
        if err != self.rt.cudaError_t.cudaSuccess:
            try:
                name = self.rt.cudaGetErrorName(err)[1]
                name = name.decode() if isinstance(name, bytes) else str(name)
            except Exception:  # the error name is only for the message
                name = str(err)
            raise BackendUnavailableError(f"CUDA error {name}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def alloc(self, count: int, dtype: np.dtype | type) -> HostDeviceBuffer:
        dtype = np.dtype(dtype)
        nbytes = max(1, int(count)) * dtype.itemsize
        host_ptr = self.call(self.rt.cudaMallocHost(nbytes))
        ctype = np.ctypeslib.as_ctypes_type(dtype)
        host = np.ctypeslib.as_array(ctypes.cast(host_ptr, ctypes.POINTER(ctype)), (max(1, int(count)),))
        device = self.call(self.rt.cudaMalloc(nbytes))
        rt = self.rt

        def release() -> None:
            rt.cudaFree(device)
            rt.cudaFreeHost(host_ptr)

        return HostDeviceBuffer(host, int(device), release)

    def stream(self) -> Stream:
        raw = self.call(self.rt.cudaStreamCreate())
        rt = self.rt
        return Stream(
            raw,
            int(raw),
            lambda: self.call(rt.cudaStreamSynchronize(raw)),
            lambda: rt.cudaStreamDestroy(raw),
        )

    def htod(self, buf: HostDeviceBuffer, nbytes: int, stream: Stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.call(self.rt.cudaMemcpyAsync(buf.device, buf.host.ctypes.data, nbytes, kind, stream.raw))

    def dtoh(self, buf: HostDeviceBuffer, nbytes: int, stream: Stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.call(self.rt.cudaMemcpyAsync(buf.host.ctypes.data, buf.device, nbytes, kind, stream.raw))

    def event(self) -> Any:
        return self.call(self.rt.cudaEventCreate())

    def record(self, event: Any, stream: Stream) -> None:
        self.call(self.rt.cudaEventRecord(event, stream.raw))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(self.call(self.rt.cudaEventElapsedTime(start, end)))

    def free_event(self, event: Any) -> None:
        self.rt.cudaEventDestroy(event)

    def device_count(self) -> int:
        try:
            return int(self.call(self.rt.cudaGetDeviceCount()))
        except BackendUnavailableError:  # no driver / no device: cudaErrorNoDevice, cudaErrorInsufficientDriver
            return 0

    def device_properties(self, index: int = 0) -> dict[str, Any]:
        prop = self.call(self.rt.cudaGetDeviceProperties(index))
        name = prop.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return {
            "name": str(name).strip(),
            "compute_capability": f"{prop.major}.{prop.minor}",
            "total_memory_mb": int(prop.totalGlobalMem) // (1 << 20),
            "multiprocessors": int(prop.multiProcessorCount),
            "integrated": bool(prop.integrated),
        }

    def versions(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {"binding": self.name}
        for key, fn in (("cuda_runtime", "cudaRuntimeGetVersion"), ("cuda_driver", "cudaDriverGetVersion")):
            try:
                out[key] = format_cuda_version(int(self.call(getattr(self.rt, fn)())))
            except BackendUnavailableError:
                out[key] = None
        return out

    # CUDA graphs: ThreadLocal capture mode, so other threads' CUDA calls do not invalidate the capture.
    def begin_capture(self, stream: Stream) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.call(self.rt.cudaStreamBeginCapture(stream.raw, mode))

    def end_capture(self, stream: Stream) -> Any:
        graph = self.call(self.rt.cudaStreamEndCapture(stream.raw))
        try:
            # (graph, flags) on cuda-python 12+; WithFlags exists since CUDA 11.4 with the same signature.
            instantiate = getattr(self.rt, "cudaGraphInstantiateWithFlags", None) or self.rt.cudaGraphInstantiate
            graph_exec = self.call(instantiate(graph, 0))
        except Exception:
            self.rt.cudaGraphDestroy(graph)
            raise
        return (graph, graph_exec)

    def launch_graph(self, graph: Any, stream: Stream) -> None:
        self.call(self.rt.cudaGraphLaunch(graph[1], stream.raw))

    def free_graph(self, graph: Any) -> None:
        self.rt.cudaGraphExecDestroy(graph[1])
        self.rt.cudaGraphDestroy(graph[0])


class _PyCuda(CudaApi):
    """pycuda (JetPack images often ship it), as in NVIDIA's samples/python/efficientnet/infer.py."""

    name = "pycuda"

    def __init__(self) -> None:
        try:
            import pycuda.driver as drv
        except ImportError as exc:
            raise MissingDependencyError("pycuda", "gpu", "CUDA memory of the TensorRT backend") from exc
        try:
            # autoprimaryctx (pycuda >= 2021.1) shares the primary context with TensorRT; autoinit otherwise.
            import pycuda.autoprimaryctx  # noqa: F401
        except ModuleNotFoundError:
            import pycuda.autoinit  # noqa: F401
        self.drv = drv

    def alloc(self, count: int, dtype: np.dtype | type) -> HostDeviceBuffer:
        host = self.drv.pagelocked_empty(max(1, int(count)), np.dtype(dtype))
        device = self.drv.mem_alloc(host.nbytes)

        def release() -> None:
            device.free()

        buf = HostDeviceBuffer(host, int(device), release)
        buf._allocation = device  # keep the DeviceAllocation alive as long as the buffer
        return buf

    def stream(self) -> Stream:
        raw = self.drv.Stream()
        return Stream(raw, raw.handle, raw.synchronize, None)

    def htod(self, buf: HostDeviceBuffer, nbytes: int, stream: Stream) -> None:
        n = nbytes // buf.host.itemsize
        self.drv.memcpy_htod_async(buf.device, buf.host[:n], stream.raw)

    def dtoh(self, buf: HostDeviceBuffer, nbytes: int, stream: Stream) -> None:
        n = nbytes // buf.host.itemsize
        self.drv.memcpy_dtoh_async(buf.host[:n], buf.device, stream.raw)

    def event(self) -> Any:
        return self.drv.Event()

    def record(self, event: Any, stream: Stream) -> None:
        event.record(stream.raw)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(end.time_since(start))

    def device_count(self) -> int:
        return int(self.drv.Device.count())

    def device_properties(self, index: int = 0) -> dict[str, Any]:
        dev = self.drv.Device(index)
        major, minor = dev.compute_capability()
        attrs = dev.get_attributes()
        return {
            "name": dev.name().strip(),
            "compute_capability": f"{major}.{minor}",
            "total_memory_mb": int(dev.total_memory()) // (1 << 20),
            "multiprocessors": int(attrs.get(self.drv.device_attribute.MULTIPROCESSOR_COUNT, 0)),
            "integrated": bool(attrs.get(self.drv.device_attribute.INTEGRATED, 0)),
        }

    def versions(self) -> dict[str, str | None]:
        build = self.drv.get_version()  # CUDA version pycuda was built against, as a tuple
        return {
            "binding": self.name,
            "cuda_runtime": ".".join(str(v) for v in build[:2]) if build else None,
            "cuda_driver": format_cuda_version(int(self.drv.get_driver_version())),
        }


_API: CudaApi | None = None


def cuda_api(prefer: str | None = None) -> CudaApi:
    """The process-wide CUDA binding: cuda-python if importable, else pycuda (or `prefer`)."""
    global _API
    if _API is not None and (prefer is None or _API.name == prefer):
        return _API
    order = [prefer] if prefer else ["cuda-python", "pycuda"]
    errors: list[str] = []
    for name in order:
        try:
            api: CudaApi = _CudaPython() if name == "cuda-python" else _PyCuda()
        except MissingDependencyError as exc:
            errors.append(str(exc))
            continue
        _API = api
        return api
    raise MissingDependencyError("cuda-python", "gpu", "CUDA memory of the TensorRT backend (or install pycuda)")


def gpu_availability() -> str | None:
    """None when a CUDA binding is installed and sees at least one GPU, else the reason why not."""
    if which_cuda_binding() is None:
        return "neither cuda-python nor pycuda is installed (pip install 'edgecxr[gpu]')"
    try:
        api = cuda_api()
        count = api.device_count()
    except Exception as exc:  # driver missing, pycuda.autoinit failing: report, do not crash `info`
        return f"CUDA not usable: {exc}"
    return None if count > 0 else "no CUDA GPU visible (driver missing or CUDA_VISIBLE_DEVICES empty)"
