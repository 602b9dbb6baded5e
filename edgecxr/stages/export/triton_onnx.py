"""Triton Python-backend model: the bundle's gated ONNX file through ONNX Runtime on the server's CPU.

`edgecxr export triton --flavour python` copies this file as `<model>/1/model.py` beside the
gated `model.onnx`. It is what a CPU-only Triton without the onnxruntime backend (the
`nvidia-pytriton` wheel's server, a build without it) deploys, and how `make triton-check` runs
NVIDIA's real server here. It needs numpy and onnxruntime in Triton's Python environment, not
edgecxr (the Python the stub embeds, which ignores PYTHONPATH: docs/SERVING.md "The models' Python
environment"), and it runs the file as `edgecxr infer` does on the CPU: full graph optimisation, and
ONNX Runtime's exact int8 sums on a CPU without an integer dot-product instruction (the switch
edgecxr.runtime.onnxrt sets there; without it a Q/DQ INT8 model's answers are not the gated ones).

All requests Triton hands over at once (dynamic batching) run as one ONNX Runtime batch; a batch
that fails answers each of its requests with the one-line reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

try:  # inside Triton
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported by edgecxr itself or its tests
    pb_utils = None

#: the model file beside this one
MODEL_FILE = "model.onnx"

#: same as edgecxr.runtime.sysinfo.INT8_DOT_FLAGS and edgecxr.runtime.onnxrt.EXACT_INT8 (a test keeps them equal)
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
EXACT_INT8 = ("session.x64quantprecision", "1")


def cpu_int8_fast() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return any(flag in flags for flag in INT8_DOT_FLAGS)


def make_session(path: str | Path) -> Any:
    """An ONNX Runtime CPU session built as edgecxr.runtime.onnxrt.session_options builds it."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not cpu_int8_fast():
        so.add_session_config_entry(*EXACT_INT8)
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run_batch(session: Any, arrays: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The requests' arrays as one batch; each request's rows of every output back, by output name."""
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    values = session.run(outputs, {name: np.concatenate(arrays).astype(np.float32, copy=False)})
    answers, start = [], 0
    for a in arrays:
        answers.append({o: v[start:start + len(a)] for o, v in zip(outputs, values, strict=True)})
        start += len(a)
    return answers


class TritonPythonModel:
    """Triton's entry points (initialize / execute / finalize)."""

    def initialize(self, args: dict[str, Any]) -> None:
        folder = Path(args["model_repository"]) / str(args["model_version"])
        self.session = make_session(folder / MODEL_FILE)
        self.input = self.session.get_inputs()[0].name

    def execute(self, requests: list[Any]) -> list[Any]:
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        try:
            answers = run_batch(self.session, arrays)
        except Exception as exc:  # noqa: BLE001 - every request gets the reason, the model keeps serving
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return [pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(why)) for _ in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in a.items()])
                for a in answers]

    def finalize(self) -> None:
        self.session = None
