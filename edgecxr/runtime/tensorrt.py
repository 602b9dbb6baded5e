"""TensorRT backend: runs an engine built by `edgecxr build` through Polygraphy's TrtRunner.

Why Polygraphy: this project's machines have no GPU, so code here cannot be run before it ships;
NVIDIA's own library loads the engine (EngineFromBytes), creates the context, binds tensors by
name, sizes every output through an IOutputAllocator (so a second output such as `features`
needs nothing extra), calls execute_async_v3, and manages CUDA memory and streams
(`polygraphy.cuda`, ctypes on libcudart: no cuda-python or pycuda). It tracks TensorRT's API from
8.6 to 11 itself.

What stays ours, and why:
- the sidecar checks before deserializing (core.metadata): a clear EngineMismatchError naming both
  sides and the rebuild command instead of TensorRT's opaque failure, and the engine's sha256
  (skipped when the caller already verified it: `verified_sha256`);
- batching: batches larger than the profile's maximum are split, smaller than its minimum padded;
- the h2d / compute / d2h split `edgecxr bench` reports: the input is copied to a Polygraphy
  DeviceArray first and the outputs copied back after TrtRunner returns device views; each step
  ends with a stream synchronize and is timed on the host (trtexec uses CUDA events; at these
  sizes the difference is the synchronize call);
- CUDA graphs (`cuda_graph=True`), which TrtRunner does not offer: per batch size, fixed device
  buffers for the input and every output (sized for the profile's maximum), one ordinary enqueue
  to flush TensorRT's deferred shape work, then one execute_async_v3 captured and replayed
  (runtime/gpu.CudaGraph). Engines whose outputs have data-dependent shapes run without graphs.

`_infer` returns {output name: array} with the probabilities first (the output not named
`features`), so callers get penultimate-layer features where the model exports them.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from edgecxr.core.errors import BackendUnavailableError, BundleError
from edgecxr.core.lazy import available, require
from edgecxr.runtime.base import FEATURES, Runner

log = logging.getLogger("edgecxr.runtime.tensorrt")


class TensorRTRunner(Runner):
    """One TensorRT engine on one GPU, run by Polygraphy's TrtRunner.

    Options:
        cuda_graph: capture and replay a CUDA graph per batch size (default False).
        verified_sha256: the engine sha256 the caller already checked against the sidecar.
    """

    name = "tensorrt"
    kind = "engine"
    _timed_by_base = False  # _infer records h2d / compute / d2h itself

    @classmethod
    def availability(cls) -> str | None:
        if not available("tensorrt"):
            return "tensorrt is not installed (JetPack, NVIDIA's pip index or an NGC container)"
        from edgecxr.runtime import gpu

        return gpu.gpu_availability()

    def _load(self) -> None:
        from edgecxr.core.metadata import ensure_compatible, read_sidecar, verify_engine
        from edgecxr.runtime import gpu
        from edgecxr.runtime.sysinfo import current_platform

        self.sidecar = read_sidecar(self.path)
        self.platform = current_platform()
        ensure_compatible(self.path, self.sidecar, self.platform)
        if self.options.get("verified_sha256") != self.sidecar["engine"]["sha256"]:
            verify_engine(self.path, self.sidecar)

        trt = require("tensorrt", "TensorRT engines")
        gpu.quiet_polygraphy()
        from polygraphy import cuda
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner, get_trt_logger
        from polygraphy.datatype import DataType
        from polygraphy.exception import PolygraphyException

        def runtime() -> Any:
            rt = trt.Runtime(get_trt_logger())
            if self.sidecar.get("dla_core") is not None:
                rt.DLA_core = int(self.sidecar["dla_core"])
            return rt

        try:
            self.engine = EngineFromBytes(self.path.read_bytes(), runtime=runtime)()
            self.runner = TrtRunner(self.engine, name="edgecxr")
            self.runner.activate()
        except PolygraphyException as exc:
            raise BundleError(f"{self.path}: TensorRT could not load the engine ({str(exc).splitlines()[0]})") from None
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise BundleError(f"{self.path}: expected 1 input and at least 1 output tensor, got {inputs} and {outputs}")
        self.input_name = inputs[0]
        self._outputs = sorted(outputs, key=lambda n: n == FEATURES)  # probabilities first
        shape = tuple(engine.get_tensor_shape(self.input_name))
        if -1 in shape:  # (min, opt, max) of optimization profile 0
            lo, _opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(self.input_name, 0))
        else:
            lo = hi = shape
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.max_shape = tuple(int(d) for d in hi)
        self.sample_shape = self.max_shape[1:]
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.output_dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in outputs}
        self._cuda, self._pg_dtype, self._pg_error = cuda, DataType.from_dtype(self.input_dtype), PolygraphyException
        self.d_input = cuda.DeviceArray(shape=self.max_shape, dtype=self._pg_dtype)
        self.use_graph = bool(self.options.get("cuda_graph", False))
        self.graphs: dict[int, Any] = {}
        self.graph_outputs: dict[str, Any] = {}
        self._last = {}

    # -- inference ------------------------------------------------------------------------------
    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.sample_shape:
            raise ValueError(f"expected a batch of shape (N, {self.sample_shape}), got {batch.shape}")
        totals = {"h2d_ms": 0.0, "compute_ms": 0.0, "d2h_ms": 0.0}
        parts: dict[str, list[np.ndarray]] = {n: [] for n in self._outputs}
        for start in range(0, batch.shape[0], self.max_batch):
            chunk = batch[start : start + self.max_batch]
            n = chunk.shape[0]
            if n < self.min_batch:  # profile built with min_batch > 1: pad, then drop the padding's outputs
                pad = np.zeros((self.min_batch - n, *self.sample_shape), dtype=self.input_dtype)
                chunk = np.concatenate([chunk, pad])
            try:
                outs, times = self._run(chunk)
            except self._pg_error as exc:  # Polygraphy's errors (shape out of profile, CUDA): one line
                raise BundleError(f"{self.path}: TensorRT could not run a batch of {chunk.shape}: "
                                  f"{str(exc).strip().splitlines()[0]}") from None
            for name in self._outputs:
                parts[name].append(outs[name][:n])
            for key, value in times.items():
                totals[key] += value
        self._last = totals
        result: dict[str, np.ndarray] = OrderedDict()
        for name in self._outputs:
            if parts[name]:
                result[name] = np.concatenate(parts[name]).astype(np.float32, copy=False)
            else:
                result[name] = np.zeros((0, self.out_classes if name == self._outputs[0] else 0), np.float32)
        return result

    @property
    def max_batch_size(self) -> int:
        """Largest batch of the engine's optimization profile (callers may batch up to it; larger is split)."""
        return int(getattr(self, "max_batch", 0))

    @property
    def out_classes(self) -> int:
        return len(self.sidecar.get("classes", [])) if hasattr(self, "sidecar") else 0

    def _run(self, chunk: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        stream = self.runner.stream
        t0 = time.perf_counter()
        self.d_input.resize(chunk.shape).copy_from(chunk, stream=stream)  # same allocation: sized for max
        stream.synchronize()
        t1 = time.perf_counter()
        graph = self._graph_for(chunk.shape) if self.use_graph else None
        if graph is not None:
            graph.launch(stream.ptr)
            stream.synchronize()
            views = {n: self.graph_outputs[n].view(shape=tuple(self.runner.context.get_tensor_shape(n)))
                     for n in self._outputs}
        else:
            views = self.runner.infer({self.input_name: self.d_input}, copy_outputs_to_host=False)
        t2 = time.perf_counter()
        host = {}
        for name in self._outputs:
            view = views[name]
            host[name] = np.empty(tuple(view.shape), dtype=self.output_dtypes[name])
            view.copy_to(host[name], stream=stream)
        stream.synchronize()
        t3 = time.perf_counter()
        return host, {"h2d_ms": (t1 - t0) * 1e3, "compute_ms": (t2 - t1) * 1e3, "d2h_ms": (t3 - t2) * 1e3}

    def _graph_for(self, shape: tuple[int, ...]) -> Any:
        """The CUDA graph for this input shape, captured on first use; None (and graphs off) if it cannot be."""
        n = shape[0]
        if n in self.graphs:
            self.runner.context.set_input_shape(self.input_name, shape)
            return self.graphs[n]
        from edgecxr.runtime.gpu import CudaGraph

        ctx, stream = self.runner.context, self.runner.stream
        try:
            if not self.graph_outputs:  # fixed buffers for every output, sized at the profile's maximum
                ctx.set_input_shape(self.input_name, self.max_shape)
                for name in self._outputs:
                    out_shape = tuple(ctx.get_tensor_shape(name))
                    if any(d < 0 for d in out_shape):
                        raise BackendUnavailableError(f"output {name} has a data-dependent shape {out_shape}")
                    from polygraphy.datatype import DataType

                    self.graph_outputs[name] = self._cuda.DeviceArray(
                        shape=out_shape, dtype=DataType.from_dtype(self.output_dtypes[name]))
            if not ctx.set_input_shape(self.input_name, shape):
                raise BackendUnavailableError(f"the engine rejects input shape {shape}")
            ctx.set_tensor_address(self.input_name, self.d_input.ptr)
            for name, buf in self.graph_outputs.items():
                ctx.set_tensor_address(name, buf.ptr)
            # one ordinary enqueue first: it may do work that must not be captured (TensorRT guide, "CUDA Graphs")
            if not ctx.execute_async_v3(stream.ptr):
                raise BackendUnavailableError("execute_async_v3 failed before capture")
            stream.synchronize()
            graph = CudaGraph()
            graph.capture(stream.ptr, lambda: ctx.execute_async_v3(stream.ptr))
        except Exception as exc:  # some engines cannot be captured: plain enqueues through TrtRunner
            log.warning("CUDA graph capture failed for batch %d (%s); running without graphs", n, exc)
            self.use_graph = False
            return None
        self.graphs[n] = graph
        return graph

    def _close(self) -> None:
        for graph in getattr(self, "graphs", {}).values():
            graph.free()
        self.graphs = {}
        for buf in [*getattr(self, "graph_outputs", {}).values(), getattr(self, "d_input", None)]:
            if buf is not None:
                buf.free()
        self.graph_outputs, self.d_input = {}, None
        runner = getattr(self, "runner", None)
        if runner is not None and getattr(runner, "is_active", False):
            runner.deactivate()
        self.runner = None
        self.engine = None

    def output_names(self) -> list[str] | None:
        return list(self._outputs) if self.loaded else None

    def io_shapes(self) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
        engine = getattr(self, "engine", None)
        if engine is None:
            return None, None
        return tuple(engine.get_tensor_shape(self.input_name)), tuple(engine.get_tensor_shape(self._outputs[0]))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        side = getattr(self, "sidecar", None) or {}
        info.update(
            {
                "device": (side.get("gpu") or {}).get("name"),
                "precision": side.get("precision"),
                "tensorrt": side.get("tensorrt"),
                "dla_core": side.get("dla_core"),
            }
        )
        if self.loaded:
            info.update(
                {
                    "batch_range": [self.min_batch, self.max_batch],
                    "outputs": list(self._outputs),
                    "cuda_graph": self.use_graph,
                    "cuda_binding": "polygraphy",
                }
            )
        return info
