"""OpenVINO backend: the bundle's gated ONNX files (FP32, FP16, Q/DQ INT8) on x86 CPUs without ONNX Runtime.

Why a second CPU runtime: scanner-side workstations rarely have an NVIDIA GPU, and on some models
OpenVINO's CPU plugin runs the very same ONNX file faster than ONNX Runtime (CoroNet), on others
slower (the CNN-LSTM). It reads the same files the accuracy gate measured, so no new artifact kind
is needed; which runtime `auto` uses is measured per model and CPU (`edgecxr.runtime.openvino_pick`).

Inference precision is pinned to f32: on a CPU with bf16 support OpenVINO would otherwise run an
FP32 or FP16 file in bf16 by default, a precision no gate has measured.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from edgecxr.core.errors import BundleError, MissingDependencyError
from edgecxr.runtime.base import FEATURES, OnnxFileIO, Runner

#: what `pip install` gives this backend (the one line users see when it is missing)
INSTALL_HINT = "pip install 'edgecxr[openvino]'"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def openvino_version() -> str | None:
    """The installed OpenVINO version ('2026.4.1-...'), None when absent or broken."""
    try:
        import openvino as ov
    except Exception:  # a broken install (missing shared library) counts as absent
        return None
    return str(ov.__version__)


def require_openvino() -> Any:
    """`import openvino`, or MissingDependencyError naming the `openvino` extra."""
    try:
        import openvino as ov
    except ImportError as exc:
        raise MissingDependencyError("openvino", "openvino", "the OpenVINO backend") from exc
    return ov


class OpenVINORunner(OnnxFileIO, Runner):
    """Runs an ONNX file on OpenVINO's CPU plugin.

    Options:
        threads: inference threads (default: OpenVINO's choice, the physical cores).
        device: "cpu" only (the gate measured nothing else).
    """

    name = "openvino"
    kind = "ONNX model"
    runs_files_of = "onnxruntime"

    @classmethod
    def availability(cls) -> str | None:
        if openvino_version() is None:
            return f"openvino is not installed ({INSTALL_HINT})"
        return None

    def _load(self) -> None:
        ov = require_openvino()
        device = str(self.options.get("device", "cpu")).lower()
        if device != "cpu":
            raise BundleError(f"{self.path}: the openvino backend runs on the CPU only, not {device!r}")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if self.options.get("threads"):
            config["INFERENCE_NUM_THREADS"] = int(self.options["threads"])
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with a multi-line C++ trace
            raise BundleError(f"{self.path}: openvino cannot load this model: {_first_line(exc)}") from exc
        inputs, outputs = self.compiled.inputs, self.compiled.outputs
        self._set_io(len(inputs), [FEATURES if FEATURES in o.get_names() else o.get_any_name() for o in outputs],
                     _shape(inputs[0].get_partial_shape()) if inputs else (),
                     _shape(outputs[0].get_partial_shape()) if outputs else ())
        self._props = _onnx_props(self.path)
        self._local = threading.local()  # an infer request is not thread-safe: one per calling thread

    def _request(self) -> Any:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        try:
            values = self._request().infer({0: x})
        except Exception as exc:
            raise BundleError(f"{self.path}: openvino could not run the model on a batch of {x.shape}: "
                              f"{_first_line(exc)}") from exc
        outs = list(values.values())  # in the compiled model's output order
        return {name: np.array(v, dtype=np.float32, copy=True) for name, v in zip(self._outputs, outs, strict=True)}

    def embedded_metadata(self) -> dict[str, str]:
        return dict(self._props) if self.loaded else {}

    def _close(self) -> None:
        self.compiled = None
        self._local = threading.local()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["device"] = "cpu"
        info["openvino"] = openvino_version()
        return info


def _shape(partial: Any) -> tuple[Any, ...]:
    """An OpenVINO PartialShape as a tuple: fixed dims as int, dynamic ones as None (like onnxruntime's names)."""
    return tuple(d.get_length() if d.is_static else None for d in partial)


def _onnx_props(path: Any) -> dict[str, str]:
    """The file's ONNX metadata_props (classes, preprocessing, precision), for the same after-load check
    as ONNX Runtime's; OpenVINO's IR does not carry them through."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # read_model accepted it, so this is unlikely; say which file
        raise BundleError(f"{path}: cannot read its ONNX metadata: {_first_line(exc)}") from exc
    return {p.key: p.value for p in model.metadata_props}
