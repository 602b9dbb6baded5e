"""What this machine can run: backends, ONNX Runtime providers, TensorRT, GPU, CPU.

Shared by `edgecxr info`, the engine sidecar (which GPU and TensorRT built an engine) and the
runtime's compatibility check (which GPU and TensorRT would run it). Every probe is optional and
reports why it failed instead of raising, because `info` is what a person runs when something is
missing.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
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
#: Arm flag of FP16 vector arithmetic (ARMv8.2 FEAT_FP16: Carmel, Cortex-A55/A75/A76/A78AE, not A53/A72):
#: where present, ONNX Runtime's CPU kernels compute an FP16 model in FP16 instead of casting to FP32
#: (docs/ARCHITECTURE.md "Which arithmetic a gate verdict holds for").
ARM_FP16_FLAG = "asimdhp"

#: Linux arm64 AT_HWCAP / AT_HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h) by the name /proc/cpuinfo
#: prints; only the ones a runtime decision or a record reads.
ARM_HWCAP = {"fp": 0, "asimd": 1, "aes": 3, "atomics": 8, "fphp": 9, "asimdhp": 10, "asimdrdm": 12,
             "lrcpc": 15, "dcpop": 16, "asimddp": 20, "sve": 22, "asimdfhm": 23}
ARM_HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14}
AT_HWCAP, AT_HWCAP2 = 16, 26
#: the CPU classes a gate verdict names (which arithmetic ONNX Runtime's CPU kernels use there)
CPU_CLASSES = ("x86-vnni", "x86", "arm-fp16", "arm", "other")


@dataclass(frozen=True)
class CpuFeatures:
    """What this CPU offers the runtime: its architecture, its feature flags, and where they were read."""

    arch: str  #: "x86_64", "aarch64" or platform.machine() of anything else
    flags: frozenset[str]
    source: str  #: "/proc/cpuinfo", "getauxval(AT_HWCAP)", or "none" (nothing readable: no fast paths)

    @property
    def int8_fast(self) -> bool:
        return any(flag in self.flags for flag in INT8_DOT_FLAGS)

    @property
    def cpu_class(self) -> str:
        """x86-vnni / x86 / arm-fp16 / arm / other: the classes a gate verdict distinguishes."""
        if self.arch == "x86_64":
            return "x86-vnni" if self.int8_fast else "x86"
        if self.arch == "aarch64":
            return "arm-fp16" if ARM_FP16_FLAG in self.flags else "arm"
        return "other"


def _arch(machine: str) -> str:
    m = machine.lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


def parse_cpuinfo(text: str, arch: str) -> frozenset[str]:
    """The flags every core of /proc/cpuinfo `text` has: x86 "flags" lines, Arm "Features" lines.

    Only the lines of `arch` count: under QEMU user-mode emulation an aarch64 process that reads
    /proc/cpuinfo sees the x86 host's, whose "flags" say nothing about the emulated CPU. A feature
    counts only where every core lists it (a thread can move to any core of a big.LITTLE part).
    """
    key = "features" if arch == "aarch64" else "flags"
    per_core = [frozenset(line.split(":", 1)[1].split()) for line in text.splitlines()
                if ":" in line and line.split(":", 1)[0].strip().lower() == key]
    return frozenset.intersection(*per_core) if per_core else frozenset()


def hwcap_flags(hwcap: int, hwcap2: int = 0) -> frozenset[str]:
    """The arm64 feature names set in AT_HWCAP / AT_HWCAP2 (ARM_HWCAP, ARM_HWCAP2)."""
    return frozenset([*(n for n, bit in ARM_HWCAP.items() if hwcap >> bit & 1),
                      *(n for n, bit in ARM_HWCAP2.items() if hwcap2 >> bit & 1)])


def _getauxval() -> tuple[int, int] | None:
    """AT_HWCAP and AT_HWCAP2 of this process from the C library (glibc/musl getauxval), or None."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        getauxval = libc.getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    hwcap = int(getauxval(AT_HWCAP))
    return (hwcap, int(getauxval(AT_HWCAP2))) if hwcap else None


def read_cpu_features(machine: str | None = None, cpuinfo: str | None = None,
                      auxv: tuple[int, int] | None = None) -> CpuFeatures:
    """This CPU's features; `machine`, `cpuinfo` (the text of /proc/cpuinfo) and `auxv` (AT_HWCAP,
    AT_HWCAP2) replace what would be read, for tests and recorded fixtures.

    On aarch64 the auxiliary vector comes first: it is what the kernel (or QEMU, for the CPU it
    emulates) grants this process, and it needs no /proc (a container or chroot may lack it). Its
    fallback is the "Features" line of /proc/cpuinfo. x86 has no auxv bit for VNNI, so it reads
    /proc/cpuinfo "flags". Where nothing can be read the CPU has no known fast path (FP32, not INT8).
    """
    arch = _arch(machine or platform.machine())
    if arch == "aarch64":
        if auxv is None and cpuinfo is None:
            auxv = _getauxval()
        if auxv is not None and auxv[0]:
            return CpuFeatures(arch, hwcap_flags(*auxv), "getauxval(AT_HWCAP)")
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            cpuinfo = ""
    flags = parse_cpuinfo(cpuinfo, arch)
    return CpuFeatures(arch, flags, "/proc/cpuinfo" if flags else "none")


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CpuFeatures, read once per process."""
    return read_cpu_features()


def cpu_int8_fast() -> bool:
    """Whether this CPU has an integer dot-product instruction (x86 VNNI/AMX, Arm asimddp/i8mm)."""
    return cpu_features().int8_fast


def cpu_class() -> str:
    """This CPU's class for gate verdicts (CpuFeatures.cpu_class)."""
    return cpu_features().cpu_class
