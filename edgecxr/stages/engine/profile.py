"""Engine build profiles (build_engines/*.toml, shipped in the package as edgecxr/profiles/) and the GPU facts that decide what a build may do.

A profile says how to build for one class of target machine: default precision, the optimization
profile's batch range, workspace, DLA core, timing cache, and which GPUs / TensorRT versions it
was written for. It is a frozen dataclass parsed from TOML with unknown keys refused (a typo such
as `max_bacth` must not silently build something else), overridden by command-line options in
`resolve_profile`, and recorded in every engine sidecar.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.core.artifacts import MAX_BATCH
from edgecxr.core.errors import ArgumentError, BackendUnavailableError, BundleError
from edgecxr.core.lazy import require

try:  # Python 3.11+; on 3.10 the API-identical backport (pip install tomli)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = None  # type: ignore[assignment]

PRECISIONS = ("fp16", "int8")
_PACKAGE = Path(__file__).resolve().parents[2]


def _shipped_profiles() -> Path:
    """The device build profiles' one home is build_engines/ at the top of the checkout; the wheel
    ships that folder as edgecxr/profiles/ (setup.py maps it), so an installed package looks there."""
    installed = _PACKAGE / "profiles"
    return installed if installed.is_dir() else _PACKAGE.parent / "build_engines"


#: where `--profile NAME` is looked up when NAME is not a path
PROFILE_DIRS = (_shipped_profiles(),)


class BuildError(BundleError):
    """A build could not be set up or TensorRT rejected the network (exit code 1)."""


# ------------------------------------------------------------------------------------------------
# Build profiles
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildProfile:
    """How to build an engine for one class of target machine (see build_engines/*.toml).

    Attributes:
        name: profile name (the TOML file stem unless given).
        precision: default precision, "fp16" or "int8" (`--precision` overrides).
        min_batch, opt_batch, max_batch: the optimization profile's batch range; TensorRT tunes
            kernels for `opt_batch` and accepts any batch in [min, max].
        workspace_mb: builder workspace memory pool limit.
        dla_core: DLA core to build for (Jetson), None for the GPU.
        gpu_fallback: with DLA, let layers DLA cannot run fall back to the GPU.
        timing_cache: timing cache file; relative paths are relative to the bundle; `{gpu}` and
            `{trt}` are replaced by the GPU slug and TensorRT version (caches are per GPU + TRT).
        device_memory_mb: memory of the smallest GPU the profile targets (shared with the CPU on
            Jetson); `build --dry-run` checks the workspace against it. None = not stated.
        compute_capabilities: GPUs the profile is meant for (e.g. ["7.5"]); empty = any.
        tensorrt: TensorRT major versions the profile was written for (e.g. [10]); empty = any.
        description, notes: free text shown by `edgecxr build`.
    """

    name: str = "default"
    precision: str = "fp16"
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 8
    workspace_mb: int = 1024
    dla_core: int | None = None
    gpu_fallback: bool = True
    timing_cache: str | None = "engines/timing-{gpu}-trt{trt}.cache"
    device_memory_mb: int | None = None
    compute_capabilities: tuple[str, ...] = ()
    tensorrt: tuple[int, ...] = ()
    description: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BuildError(f"profile {self.name!r}: precision must be one of {PRECISIONS}, got {self.precision!r}")
        for key in ("min_batch", "opt_batch", "max_batch", "workspace_mb"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise BuildError(f"profile {self.name!r}: {key} must be an integer, got {value!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch <= MAX_BATCH:
            raise BuildError(
                f"profile {self.name!r}: need 1 <= min_batch <= opt_batch <= max_batch <= {MAX_BATCH}, "
                f"got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if not 16 <= self.workspace_mb <= 1 << 20:
            raise BuildError(f"profile {self.name!r}: workspace_mb {self.workspace_mb} outside 16..1048576")
        if self.dla_core is not None and (
            not isinstance(self.dla_core, int) or isinstance(self.dla_core, bool) or not 0 <= self.dla_core <= 7
        ):
            raise BuildError(f"profile {self.name!r}: dla_core must be a small non-negative integer, got {self.dla_core!r}")
        if self.device_memory_mb is not None and (
            not isinstance(self.device_memory_mb, int) or isinstance(self.device_memory_mb, bool)
            or not 256 <= self.device_memory_mb <= 1 << 22
        ):
            raise BuildError(f"profile {self.name!r}: device_memory_mb must be an integer in 256..4194304, "
                             f"got {self.device_memory_mb!r}")
        if not isinstance(self.gpu_fallback, bool):
            raise BuildError(f"profile {self.name!r}: gpu_fallback must be true or false")
        for cc in self.compute_capabilities:
            if not re.fullmatch(r"\d+\.\d+", str(cc)):
                raise BuildError(f"profile {self.name!r}: compute capability {cc!r} is not like '7.5'")

    @property
    def batch(self) -> tuple[int, int, int]:
        return (self.min_batch, self.opt_batch, self.max_batch)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["compute_capabilities"] = list(self.compute_capabilities)
        data["tensorrt"] = list(self.tensorrt)
        return data


_PROFILE_KEYS = {f.name for f in dataclasses.fields(BuildProfile)}


def parse_profile(text: str, name: str = "profile") -> BuildProfile:
    """Parse a build profile TOML; unknown keys are an error (a typo must not silently do nothing)."""
    toml = tomllib or require("tomli", "build profiles on Python 3.10")
    try:
        data = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise BuildError(f"{name}: invalid TOML: {exc}") from exc
    unknown = sorted(set(data) - _PROFILE_KEYS)
    if unknown:
        raise BuildError(f"{name}: unknown key(s) {unknown}; known: {sorted(_PROFILE_KEYS)}")
    data.setdefault("name", name)
    for key in ("compute_capabilities", "tensorrt"):
        if key in data:
            if not isinstance(data[key], list):
                raise BuildError(f"{name}: {key} must be a list")
            data[key] = tuple(str(v) if key == "compute_capabilities" else int(v) for v in data[key])
    try:
        return BuildProfile(**data)
    except TypeError as exc:
        raise BuildError(f"{name}: {exc}") from exc


def load_profile(ref: str | Path) -> BuildProfile:
    """Load a profile from a path, or by name from the profiles shipped with the package (build_engines/)."""
    path = Path(ref)
    candidates = [path] if path.suffix == ".toml" or path.exists() else []
    candidates += [d / f"{ref}.toml" for d in PROFILE_DIRS]
    for cand in candidates:
        if cand.is_file():
            try:
                text = cand.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise BuildError(f"{cand}: not a TOML build profile (not a UTF-8 text file)") from None
            return parse_profile(text, name=cand.stem)
    raise BuildError(f"build profile {str(ref)!r} not found (looked in {[str(c) for c in candidates]})")


def parse_batch(text: str) -> tuple[int, int, int]:
    """'8' -> (8, 8, 8); '1-8' -> (1, 8, 8) (tuned for full batches); '1-4-8' -> (1, 4, 8)."""
    parts = str(text).strip().split("-")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise BuildError(f"batch {text!r}: expected N, MIN-MAX or MIN-OPT-MAX") from None
    if len(values) == 1:
        return (values[0],) * 3
    if len(values) == 2:
        return (values[0], values[1], values[1])
    if len(values) == 3:
        return (values[0], values[1], values[2])
    raise BuildError(f"batch {text!r}: expected N, MIN-MAX or MIN-OPT-MAX")


def resolve_profile(
    profile: BuildProfile | None = None,
    *,
    precision: str | None = None,
    batch: str | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_mb: int | None = None,
    timing_cache: str | None = None,
    dla_core: int | None = None,
) -> BuildProfile:
    """Command-line overrides on top of a profile (or the defaults); the result is validated."""
    base = profile or BuildProfile()
    changes: dict[str, Any] = {}
    if precision is not None:
        changes["precision"] = precision
    if batch is not None:
        if any(v is not None for v in (min_batch, opt_batch, max_batch)):
            raise ArgumentError("give either a batch range or single min/opt/max batch sizes, not both",
                                params=("batch", "min_batch", "opt_batch", "max_batch"))
        changes["min_batch"], changes["opt_batch"], changes["max_batch"] = parse_batch(batch)
    else:
        lo = min_batch if min_batch is not None else base.min_batch
        hi = max_batch if max_batch is not None else max(base.max_batch, lo)
        opt = opt_batch if opt_batch is not None else min(max(base.opt_batch, lo), hi)
        changes.update(min_batch=lo, opt_batch=opt, max_batch=hi)
    if workspace_mb is not None:
        changes["workspace_mb"] = workspace_mb
    if timing_cache is not None:
        changes["timing_cache"] = timing_cache or None
    if dla_core is not None:
        changes["dla_core"] = dla_core if dla_core >= 0 else None
    return dataclasses.replace(base, **changes)


# ------------------------------------------------------------------------------------------------
# GPU facts
# ------------------------------------------------------------------------------------------------
def _cc(value: str) -> tuple[int, int]:
    major, _, minor = str(value).partition(".")
    return int(major), int(minor or 0)


def has_fast_fp16(compute_capability: str) -> bool:
    """Whether FP16 runs at (at least) the FP32 rate: sm53/60/62 and sm70+; not sm61 (GTX 10xx: 1/64)."""
    major, minor = _cc(compute_capability)
    return (major, minor) in {(5, 3), (6, 0), (6, 2)} or major >= 7


def has_int8(compute_capability: str) -> bool:
    """INT8 kernels need DP4A (sm61+) or tensor cores (sm72/75+)."""
    return _cc(compute_capability) >= (6, 1)


def check_profile_target(profile: BuildProfile, trt_version: str, compute_capability: str) -> list[str]:
    """Reasons the profile does not fit this machine (wrong GPU class or TensorRT major); [] if it fits."""
    problems = []
    if profile.compute_capabilities and compute_capability not in profile.compute_capabilities:
        problems.append(
            f"profile {profile.name!r} targets compute capability {list(profile.compute_capabilities)}, "
            f"this GPU is {compute_capability}"
        )
    major = int(str(trt_version).split(".")[0])
    if profile.tensorrt and major not in profile.tensorrt:
        problems.append(f"profile {profile.name!r} was written for TensorRT {list(profile.tensorrt)}.x, this is {trt_version}")
    return problems


def check_precision_support(precision: str, compute_capability: str, gpu_name: str) -> None:
    """Refuse, instead of silently building a slow engine, a precision the GPU has no fast path for."""
    if precision == "fp16" and not has_fast_fp16(compute_capability):
        raise BackendUnavailableError(
            f"{gpu_name} (sm {compute_capability}) has no fast FP16 (e.g. Pascal GTX 10xx runs FP16 at 1/64 rate); "
            "build an INT8 engine, or use ONNX Runtime"
        )
    if precision == "int8" and not has_int8(compute_capability):
        raise BackendUnavailableError(f"{gpu_name} (sm {compute_capability}) has no INT8 support (needs sm61+)")
