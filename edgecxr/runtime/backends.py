"""The backends `auto` chooses from: one table of runner classes, and the checks before creating one.

The runner modules import no framework at import time, so importing this table is cheap; each
class's `availability()` says whether its framework and device are present here.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from edgecxr.core.errors import BackendUnavailableError
from edgecxr.core.lazy import available
from edgecxr.core.version import __version__
from edgecxr.runtime.base import Runner
from edgecxr.runtime.keras_runner import KerasRunner
from edgecxr.runtime.onnxrt import OnnxRuntimeRunner
from edgecxr.runtime.openvino import OpenVINORunner
from edgecxr.runtime.tensorrt import TensorRTRunner

RUNNERS: dict[str, type[Runner]] = {cls.name: cls for cls in (KerasRunner, OnnxRuntimeRunner, OpenVINORunner, TensorRTRunner)}


def backends() -> dict[str, type[Runner]]:
    return dict(RUNNERS)


def availability() -> dict[str, str | None]:
    """Backend name -> None if usable here, else the reason it is not."""
    return {name: cls.availability() for name, cls in RUNNERS.items()}


def create_runner(name: str, path: str | Path, **options: Any) -> Runner:
    """Instantiate a backend (not yet loaded: use it as a context manager or call load())."""
    if name not in RUNNERS:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {sorted(RUNNERS)}")
    cls = RUNNERS[name]
    reason = cls.availability()
    if reason:
        raise BackendUnavailableError(f"backend {name!r} is not available here: {reason}")
    return cls(path, **options)


def system_info() -> dict[str, Any]:
    """Everything `edgecxr info` prints: backends with reasons, providers, TensorRT, GPU, CPU."""
    from edgecxr.runtime import gpu as gpu_facts
    from edgecxr.runtime.sysinfo import cpu_info, gpu_info, onnxruntime_info, tensorrt_version

    trt_version = tensorrt_version()
    trt_reason = None
    if trt_version is None:
        trt_reason = "tensorrt Python package not installed" if not available("tensorrt") else "tensorrt fails to import"
    try:
        gpu = gpu_info()
    except Exception as exc:  # never let a driver problem crash `info`
        gpu = {"error": str(exc)}
    return {
        "edgecxr": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": {name: {"available": reason is None, "reason": reason} for name, reason in availability().items()},
        "onnxruntime": onnxruntime_info(),
        "tensorrt": {"version": trt_version, "reason": trt_reason},
        "cuda_binding": "polygraphy" if available("polygraphy") else None,
        "gpu": gpu,
        "gpu_reason": gpu_facts.gpu_availability(),
        "cpu": cpu_info(),
    }
