"""ONNX Runtime backend: the embedded default on CPU-only workstations, and CUDA EP where present."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgecxr.core.errors import BackendUnavailableError, BundleError
from edgecxr.runtime.base import OnnxFileIO, Runner

#: ONNX Runtime's switch to exact int8 products on x86 CPUs without an integer dot-product instruction
#: (AVX2, AVX-512 without VNNI). Its default u8s8 kernels add pairs of products in saturating 16-bit
#: sums there: on the CNN-LSTM's fully quantized model that changed 23% of the `val` decisions (76.74%
#: agreement with FP32 without VNNI, 98.45% on a VNNI CPU). It is set only where the CPU lacks such an
#: instruction: on a VNNI CPU (exact 32-bit sums already) it made the INT8 models 1.61x (CoroNet) and
#: 2.41x (CNN-LSTM) slower at batch 1 (scripts/int8_exact_sums_cost.py, 2026-12-04). So a gated INT8
#: model gives its gated answers on every x86 CPU, at full speed where the CPU has VNNI.
EXACT_INT8 = ("session.x64quantprecision", "1")


def session_options(optimize: bool = True) -> Any:
    """The one recipe for a CPU ONNX Runtime session: quiet, exact int8 products, and either full
    optimisation (Q/DQ fused into integer kernels, as a deployed INT8 model runs) or none (the graph
    run as written, Q/DQ as float ops)."""
    import onnxruntime as ort

    from edgecxr.runtime.sysinfo import cpu_int8_fast

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if not cpu_int8_fast():
        so.add_session_config_entry(*EXACT_INT8)
    return so


class OnnxRuntimeRunner(OnnxFileIO, Runner):
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
        so = session_options()
        if self.options.get("threads"):
            so.intra_op_num_threads = int(self.options["threads"])
        source = self._cpu_model(device)
        try:
            self.session = ort.InferenceSession(source, sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError(f"{self.path}: onnxruntime cannot load this model: {why}") from exc
        inputs = self.session.get_inputs()
        outputs = self.session.get_outputs()
        self._set_io(len(inputs), [o.name for o in outputs], tuple(inputs[0].shape) if inputs else (),
                     tuple(outputs[0].shape) if outputs else ())
        self.input_name = inputs[0].name

    def _cpu_model(self, device: str) -> str | bytes:
        """The model ONNX Runtime loads: the file, or on a CPU with FP16 arithmetic an FP16 file up-cast to
        FP32 (runtime/arithmetic.py: the arithmetic its gate verdict measured on x86)."""
        from edgecxr.runtime.arithmetic import has_fp16, upcast_fp16, upcasts_fp16

        self.arithmetic: str | None = None
        if device != "cpu" or not upcasts_fp16():
            return str(self.path)
        import onnx

        try:
            model = onnx.load(str(self.path))
        except Exception:  # not readable as ONNX: let onnxruntime say why, in its words
            return str(self.path)
        if not has_fp16(model):
            return str(self.path)
        start = time.perf_counter()
        data = upcast_fp16(model).SerializeToString()
        self.arithmetic = (f"fp32: fp16 weights up-cast at load ({1000 * (time.perf_counter() - start):.0f} ms), "
                           "this CPU's FP16 arithmetic is not what the gate measured")
        return data

    def _infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self._outputs, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        except Exception as exc:  # onnxruntime's untyped Fail / InvalidArgument: one line, not a C++ backtrace
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError(f"{self.path}: onnxruntime could not run the model on a batch of {batch.shape}: {why}") from exc
        return dict(zip(self._outputs, values, strict=True))

    def embedded_metadata(self) -> dict[str, str]:
        if not self.loaded:
            return {}
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def _close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.loaded:
            info["providers"] = self.session.get_providers()
        info["device"] = self.options.get("device", "cpu")
        if getattr(self, "arithmetic", None):
            info["arithmetic"] = self.arithmetic
        return info
