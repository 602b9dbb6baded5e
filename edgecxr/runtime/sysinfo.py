"""What this machine can run: backends, ONNX Runtime providers, TensorRT, GPU, CPU.

Shared by `edgecxr info`, the engine sidecar (which GPU and TensorRT built an engine) and the
runtime's compatibility check (which GPU and TensorRT would run it). Every probe is optional and
reports why it failed instead of raising, because `info` is what a person runs when something is
missing.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import Any

from edgecxr.core.errors import BackendUnavailableError
from edgecxr.core.lazy import available, require


def current_platform() -> dict[str, Any]:
    """TensorRT version and GPU of this machine; MissingDependencyError (no TensorRT / Polygraphy) or
    BackendUnavailableError (no usable GPU) if absent."""
    from edgecxr.runtime import gpu

    version = tensorrt_version() if available("tensorrt") else None
    if version is None:
        require("tensorrt", "TensorRT engines")  # raises MissingDependencyError with the install hint
    if not available("polygraphy"):
        require("polygraphy", "TensorRT engines")  # MissingDependencyError naming the `gpu` extra
    reason = gpu.gpu_availability()
    if reason:
        raise BackendUnavailableError(f"TensorRT engines need an NVIDIA GPU: {reason}")
    return {"tensorrt": version, "gpu": gpu.device_properties(0)}


def tensorrt_version() -> str | None:
    """Installed TensorRT Python package version ('10.3.0'), or None (imports tensorrt if present)."""
    if not available("tensorrt"):
        return None
    try:
        import tensorrt as trt
    except Exception:  # a broken install (missing libnvinfer) is "not available", with the reason in info()
        return None
    return str(trt.__version__)


def gpu_info(index: int = 0) -> dict[str, Any] | None:
    """Name, compute capability and CUDA versions of GPU `index`; None when no GPU can be queried.

    Uses libcudart through Polygraphy, as the TensorRT runner does (so the sidecar names the GPU
    exactly as the runtime will see it); falls back to nvidia-smi for `info` without Polygraphy.
    """
    from edgecxr.runtime import gpu

    if gpu.gpu_availability() is None:
        info = gpu.device_properties(index)
        info["source"] = "polygraphy (libcudart)"
        return info
    return _nvidia_smi(index)


def _nvidia_smi(index: int) -> dict[str, Any] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,compute_cap,driver_version,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [r for r in out.splitlines() if r.strip()]
    if len(rows) <= index:
        return None
    parts = [p.strip() for p in rows[index].split(",")]
    if len(parts) < 4:
        return None
    return {
        "name": parts[0],
        "compute_capability": parts[1],
        "driver": parts[2],
        "total_memory_mb": int(float(parts[3])) if parts[3].replace(".", "", 1).isdigit() else None,
        "source": "nvidia-smi",
    }


def cpu_info() -> dict[str, Any]:
    """CPU model and core count (for benchmark records)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware")):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"model": model, "machine": platform.machine(), "logical_cores": os.cpu_count(), "usable_cores": usable}


def onnxruntime_info() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"version": None, "providers": [], "error": str(exc)}
    return {"version": ort.__version__, "providers": ort.get_available_providers()}


#: CPU flags of an integer dot-product instruction (x86 VNNI / AMX, Arm dotprod / i8mm): without one,
#: ONNX Runtime runs a Q/DQ INT8 model slower than FP32 (0.8x measured on this project's VNNI-less CPU).
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def cpu_int8_fast() -> bool:
    """Whether this CPU has an integer dot-product instruction (read from /proc/cpuinfo; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = set(fh.read().split())
    except OSError:
        return False
    return any(flag in flags for flag in INT8_DOT_FLAGS)
