"""TensorRT backend: runs an engine built by `edgecxr build` on this machine's GPU.

Follows NVIDIA's samples (samples/python/common_runtime.py and efficientnet/infer.py) with the
name-based I/O API of TensorRT 8.5+/10/11: trt.Runtime -> deserialize_cuda_engine ->
create_execution_context; tensors found by engine.num_io_tensors / get_tensor_name /
get_tensor_mode; pinned host + device buffers preallocated for the profile's largest batch and
bound once with set_tensor_address; per call set_input_shape, async H2D copy, execute_async_v3 on
one stream, async D2H copy, synchronize. CUDA events around each step give the h2d / compute / d2h
split that `edgecxr bench` reports.

Optional CUDA graphs (`cuda_graph=True`): per batch size, after set_input_shape, one ordinary
enqueue flushes TensorRT's deferred shape work (as the TensorRT developer guide asks), then one
execute_async_v3 is captured on the stream and replayed with a single graph launch afterwards.
Buffers never move, so the captured addresses stay valid.

Before deserializing, the engine's sidecar is compared with this machine's TensorRT version and
GPU (edgecxr.core.metadata.ensure_compatible); a mismatch raises EngineMismatchError naming both sides and
the rebuild command, instead of TensorRT's opaque deserialization failure.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgecxr.core.errors import BackendUnavailableError, BundleError
from edgecxr.core.lazy import available, require
from edgecxr.runtime.base import Runner

log = logging.getLogger("edgecxr.runtime.tensorrt")


class TensorRTRunner(Runner):
    """One TensorRT engine on one GPU.

    Options:
        cuda_graph: capture and replay a CUDA graph per batch size (cuda-python only; default False).
        cuda_binding: "cuda-python" or "pycuda" to force one (default: cuda-python, else pycuda).
    """

    name = "tensorrt"
    kind = "engine"
    _timed_by_base = False  # _infer records h2d / compute / d2h from CUDA events

    @classmethod
    def availability(cls) -> str | None:
        if not available("tensorrt"):
            return "tensorrt is not installed (JetPack, NVIDIA's pip index or an NGC container)"
        from edgecxr.runtime import cuda_mem

        return cuda_mem.gpu_availability()

    def _load(self) -> None:
        from edgecxr.core.metadata import ensure_compatible, read_sidecar, verify_engine
        from edgecxr.runtime import cuda_mem
        from edgecxr.runtime.sysinfo import current_platform

        self.sidecar = read_sidecar(self.path)
        self.platform = current_platform()
        ensure_compatible(self.path, self.sidecar, self.platform)
        # every caller (Classifier, the gate, evaluate, bench) gets an engine that is the sidecar's;
        # Classifier.load hashed it already and passes what it verified (`verified_sha256`)
        if self.options.get("verified_sha256") != self.sidecar["engine"]["sha256"]:
            verify_engine(self.path, self.sidecar)

        trt = require("tensorrt", "TensorRT engines")
        self._trt = trt
        self.api = cuda_mem.cuda_api(self.options.get("cuda_binding"))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if self.sidecar.get("dla_core") is not None:
            self.runtime.DLA_core = int(self.sidecar["dla_core"])
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{self.path}: TensorRT could not deserialize the engine (corrupt file?)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BackendUnavailableError(f"{self.path}: could not create an execution context (GPU memory?)")

        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(f"{self.path}: expected 1 input and 1 output tensor, got {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]

        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if -1 in shape:
            # (min, opt, max) of optimization profile 0; allocate for max (common_runtime.allocate_buffers)
            lo, _opt, hi = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
        else:
            lo = hi = shape
        self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        self.sample_shape = tuple(int(d) for d in hi[1:])
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))

        if not self.context.set_input_shape(self.input_name, hi):
            raise BundleError(f"{self.path}: engine rejects its own maximum input shape {hi}")
        out_max = tuple(self.context.get_tensor_shape(self.output_name))
        self.in_buf = self.api.alloc(trt.volume(hi), self.input_dtype)
        self.out_buf = self.api.alloc(trt.volume(out_max), self.output_dtype)
        self.context.set_tensor_address(self.input_name, self.in_buf.device)
        self.context.set_tensor_address(self.output_name, self.out_buf.device)
        self.stream = self.api.stream()
        self.events = [self.api.event() for _ in range(4)]

        self.use_graph = bool(self.options.get("cuda_graph", False))
        if self.use_graph and not self.api.supports_graphs:
            log.warning("CUDA graphs need cuda-python; %s in use, running without graphs", self.api.name)
            self.use_graph = False
        self.graphs: dict[int, Any] = {}
        self._last = {}

    # -- inference ------------------------------------------------------------------------------
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.sample_shape:
            raise ValueError(f"expected a batch of shape (N, {self.sample_shape}), got {batch.shape}")
        totals = {"h2d_ms": 0.0, "compute_ms": 0.0, "d2h_ms": 0.0}
        results = []
        for start in range(0, batch.shape[0], self.max_batch):
            chunk = batch[start : start + self.max_batch]
            n = chunk.shape[0]
            if n < self.min_batch:  # profile built with min_batch > 1: pad, then drop the padding's outputs
                pad = np.zeros((self.min_batch - n, *self.sample_shape), dtype=self.input_dtype)
                chunk = np.concatenate([chunk, pad])
            out, times = self._run(chunk)
            results.append(out[:n])
            for key, value in times.items():
                totals[key] += value
        self._last = totals
        if not results:
            return np.zeros((0, self.out_classes), dtype=np.float32)
        return np.concatenate(results).astype(np.float32, copy=False)

    @property
    def max_batch_size(self) -> int:
        """Largest batch of the engine's optimization profile (callers may batch up to it; larger is split)."""
        return int(getattr(self, "max_batch", 0))

    @property
    def out_classes(self) -> int:
        return len(self.sidecar.get("classes", [])) if hasattr(self, "sidecar") else 0

    def _run(self, chunk: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        n = chunk.shape[0]
        if not self.context.set_input_shape(self.input_name, chunk.shape):
            raise ValueError(f"engine does not accept batch {n} (profile {self.min_batch}..{self.max_batch})")
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out_count = int(np.prod(out_shape))
        api, stream, ev = self.api, self.stream, self.events
        np.copyto(self.in_buf.host[: chunk.size], chunk.reshape(-1))

        api.record(ev[0], stream)
        api.htod(self.in_buf, chunk.nbytes, stream)
        api.record(ev[1], stream)
        if self.use_graph:
            graph = self.graphs.get(n) or self._capture(n)
        else:
            graph = None
        if graph is not None:
            api.launch_graph(graph, stream)
        elif not self.context.execute_async_v3(stream.handle):
            raise BackendUnavailableError(f"{self.path}: TensorRT execute_async_v3 failed")
        api.record(ev[2], stream)
        api.dtoh(self.out_buf, out_count * self.output_dtype.itemsize, stream)
        api.record(ev[3], stream)
        stream.synchronize()

        times = {
            "h2d_ms": api.elapsed_ms(ev[0], ev[1]),
            "compute_ms": api.elapsed_ms(ev[1], ev[2]),
            "d2h_ms": api.elapsed_ms(ev[2], ev[3]),
        }
        return self.out_buf.host[:out_count].reshape(out_shape).copy(), times

    def _capture(self, n: int) -> Any:
        """Capture one enqueue for batch n (input shape already set); None (and graphs off) if it fails."""
        stream = self.stream
        try:
            # One ordinary enqueue first: the first enqueue after a shape change may do work that must
            # not be captured (TensorRT developer guide, "CUDA Graphs").
            if not self.context.execute_async_v3(stream.handle):
                raise BackendUnavailableError("execute_async_v3 failed before capture")
            stream.synchronize()
            self.api.begin_capture(stream)
            try:
                ok = self.context.execute_async_v3(stream.handle)
            finally:
                graph = self.api.end_capture(stream)
            if not ok:
                self.api.free_graph(graph)
                raise BackendUnavailableError("execute_async_v3 failed during capture")
        except Exception as exc:  # some engines cannot be captured: fall back to plain enqueues
            log.warning("CUDA graph capture failed for batch %d (%s); running without graphs", n, exc)
            self.use_graph = False
            return None
        self.graphs[n] = graph
        return graph

    def _close(self) -> None:
        if getattr(self, "api", None) is not None:
            for graph in getattr(self, "graphs", {}).values():
                self.api.free_graph(graph)
            self.graphs = {}
            for ev in getattr(self, "events", []):
                self.api.free_event(ev)
            self.events = []
            for name in ("in_buf", "out_buf", "stream"):
                obj = getattr(self, name, None)
                if obj is not None:
                    obj.free()
                    setattr(self, name, None)
        # Destroy in reverse order of creation: context, engine, runtime.
        for name in ("context", "engine", "runtime"):
            if hasattr(self, name):
                setattr(self, name, None)

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
                    "cuda_graph": self.use_graph,
                    "cuda_binding": self.api.name,
                }
            )
        return info
