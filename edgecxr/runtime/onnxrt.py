"""ONNX Runtime backend: the embedded default on CPU-only workstations, and CUDA EP where present."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecxr.core.errors import BackendUnavailableError, BundleError
from edgecxr.runtime.base import Runner


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file (FP32, FP16 with FP32 I/O, or Q/DQ INT8) with onnxruntime.

    Options:
        device: "cpu" (default) or "cuda" (needs onnxruntime-gpu).
        threads: intra-op threads (default: onnxruntime's choice, all physical cores).
    """

    name = "onnxruntime"
    kind = "ONNX model"

    @classmethod
    def availability(cls) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def _load(self) -> None:
        import onnxruntime as ort

        device = self.options.get("device", "cpu")
        available = ort.get_available_providers()
        if device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise BackendUnavailableError(
                    "onnxruntime CUDA execution provider not available (install onnxruntime-gpu and CUDA); "
                    f"providers here: {available}"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if self.options.get("threads"):
            so.intra_op_num_threads = int(self.options["threads"])
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise BundleError(f"{self.path}: onnxruntime cannot load this model: {exc}") from exc
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(f"{self.path}: expected 1 input and 1 output, got {len(inputs)} and {len(outputs)}")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.input_shape = tuple(inputs[0].shape)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        (probs,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return probs

    def _close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.loaded:
            info["providers"] = self.session.get_providers()
        info["device"] = self.options.get("device", "cpu")
        return info
