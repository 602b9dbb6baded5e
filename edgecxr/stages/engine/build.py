"""TensorRT engine builds: the engine sidecar, the compatibility decision, the build.

An engine is a compiled plan for one GPU model and one TensorRT version; loaded anywhere else it
fails (or, worse, runs slowly). So every engine gets a `<engine>.json` sidecar recording what built
it, and the runtime refuses an engine whose sidecar does not match the machine, naming both sides
and the command that rebuilds it (`check_compatibility` / `ensure_compatible`).

Precision lives in the ONNX (FP16 ONNX with FP32 I/O, or Q/DQ INT8 ONNX). TensorRT 10/11 build it
as a strongly typed network (no FP16/INT8 builder flags; TensorRT 10.1 deprecated and 11 removed
them together with the INT8 calibrators); TensorRT 8.x gets explicit batch plus the weak FP16 /
INT8 flags, and the Q/DQ network needs no calibrator there either.

Build profiles (edgecxr/profiles/*.toml) are parsed in `edgecxr.build_profile`. The build follows
NVIDIA's Python samples (samples/python/efficientnet/build_engine.py,
samples/python/strongly_type_autocast/sample.py) and the Python API docs: Logger -> Builder ->
create_network(flags) -> OnnxParser.parse (errors listed) -> builder config (workspace pool,
optimization profile, timing cache, DLA) -> build_serialized_network. Everything that decides
something (profiles, names, sidecar content, compatibility) is a pure function tested on CPU.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.core.artifacts import onnx_key
from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BackendUnavailableError, BundleError, GateFailedError
from edgecxr.core.fileutil import atomic_write_bytes, sha256_file, write_json
from edgecxr.core.lazy import require
from edgecxr.core.metadata import make_sidecar, sidecar_path
from edgecxr.core.publish import Candidate
from edgecxr.runtime.sysinfo import current_platform
from edgecxr.stages.engine.profile import (
    BuildError,
    BuildProfile,
    check_precision_support,
    check_profile_target,
)
from edgecxr.stages.gate.report import record_verdicts

#: bundle artifact each engine precision is built from


# ------------------------------------------------------------------------------------------------
# Names, network flags, timing cache
# ------------------------------------------------------------------------------------------------
def gpu_slug(name: str) -> str:
    """'NVIDIA GeForce GTX 1660 SUPER' -> 'geforce-gtx-1660-super' (for file names)."""
    words = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    words = [w for w in words if w != "nvidia"]
    return "-".join(words) or "gpu"


def engine_filename(model: str, precision: str, gpu_name: str, trt_version: str, dla_core: int | None = None) -> str:
    """engines/<model>-<precision>-<gpu-slug>-trt<ver>[-dlaN].engine: what and where, readable in `ls`."""
    dla = f"-dla{dla_core}" if dla_core is not None else ""
    return f"{model}-{precision}-{gpu_slug(gpu_name)}-trt{trt_version}{dla}.engine"


def choose_network_flags(flag_names: Iterable[str]) -> list[str]:
    """NetworkDefinitionCreationFlag members to set, given those this TensorRT has.

    STRONGLY_TYPED where it exists (10.x/11.x: precision comes from the ONNX types); else
    EXPLICIT_BATCH (8.x, where implicit batch was still the default). EXPLICIT_BATCH is
    deprecated and ignored from 10.0, so it is not set there.
    """
    names = set(flag_names)
    if "STRONGLY_TYPED" in names:
        return ["STRONGLY_TYPED"]
    if "EXPLICIT_BATCH" in names:
        return ["EXPLICIT_BATCH"]
    return []


def weak_precision_flags(strongly_typed: bool, precision: str) -> list[str]:
    """BuilderFlag members for weakly typed (8.x) networks: FP16, or INT8 for the Q/DQ network."""
    if strongly_typed:
        return []
    return ["FP16"] if precision == "fp16" else ["INT8"]


def timing_cache_path(template: str | None, bundle_dir: Path, gpu_name: str, trt_version: str) -> Path | None:
    if not template:
        return None
    path = Path(template.replace("{gpu}", gpu_slug(gpu_name)).replace("{trt}", trt_version)).expanduser()
    return path if path.is_absolute() else bundle_dir / path


# ------------------------------------------------------------------------------------------------
# The build
# ------------------------------------------------------------------------------------------------
@dataclass
class BuildResult:
    engine: Path
    sidecar: Path
    sidecar_data: dict[str, Any]
    gate: Any = None


def _dtype_name(dt: Any) -> str:
    return str(getattr(dt, "name", dt)).split(".")[-1].lower()


def build_engine(
    bundle_dir: str | Path,
    profile: BuildProfile,
    *,
    out: str | Path | None = None,
    verify: bool = True,
    manifest: str | Path | None = None,
    split: str = "test",
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Build a TensorRT engine from the bundle's FP16 or INT8 ONNX for this GPU, write it with its sidecar.

    Raises:
        BundleError: no bundle / no ONNX of that precision (the message names the command making it).
        MissingDependencyError / BackendUnavailableError: no TensorRT, no GPU, no fast path for the precision.
        BuildError: the ONNX does not parse or TensorRT cannot build it.
    """
    bundle = Bundle.load(bundle_dir)
    precision = profile.precision
    onnx_path = bundle.artifact(onnx_key(precision))  # BundleError naming export/calibrate if absent
    if onnx_path is None:  # pragma: no cover - artifact(must_exist=True) raises instead
        raise BundleError(f"{bundle.dir}: no {precision} ONNX")
    platform = current_platform()  # exit 2 without TensorRT or GPU, before any work
    trt = require("tensorrt", "building TensorRT engines")
    gpu = platform["gpu"]
    check_precision_support(precision, gpu["compute_capability"], gpu["name"])
    problems = check_profile_target(profile, platform["tensorrt"], gpu["compute_capability"])
    if problems:
        raise BuildError("; ".join(problems) + " (pick a matching profile (edgecxr/profiles/) or pass none)")

    spec = bundle.spec
    engine_path = Path(out) if out else bundle.dir / "engines" / engine_filename(
        bundle.model, precision, gpu["name"], platform["tensorrt"], profile.dla_core
    )
    log(f"building {precision} engine for {gpu['name']} (sm {gpu['compute_capability']}), TensorRT {platform['tensorrt']}")
    log(f"  from {onnx_path}; batch {profile.min_batch}/{profile.opt_batch}/{profile.max_batch}; "
        f"workspace {profile.workspace_mb} MB" + (f"; DLA core {profile.dla_core}" if profile.dla_core is not None else ""))

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    flag_names = choose_network_flags(n for n in dir(trt.NetworkDefinitionCreationFlag) if n.isupper())
    strongly_typed = "STRONGLY_TYPED" in flag_names
    flags = 0
    for name in flag_names:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"{onnx_path}: TensorRT's ONNX parser failed:\n  " + "\n  ".join(errors))
    if network.num_inputs != 1:
        raise BuildError(f"{onnx_path}: expected one input, found {network.num_inputs}")
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if len(shape) != 4 or tuple(shape[1:]) != spec.input_shape:
        raise BuildError(f"{onnx_path}: input {inp.name!r} has shape {shape}, bundle expects (N, {spec.input_shape})")
    if shape[0] != -1 and not profile.min_batch == profile.max_batch == shape[0]:
        raise BuildError(
            f"{onnx_path}: the ONNX has a fixed batch of {shape[0]}; build for batch {shape[0]} only, or re-export "
            "with a dynamic batch (`edgecxr export`)",
            params=("batch",),
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, profile.workspace_mb << 20)
    for name in weak_precision_flags(strongly_typed, precision):
        config.set_flag(getattr(trt.BuilderFlag, name))
    opt_profile = builder.create_optimization_profile()
    h, w, c = spec.input_shape
    opt_profile.set_shape(inp.name, (profile.min_batch, h, w, c), (profile.opt_batch, h, w, c), (profile.max_batch, h, w, c))
    config.add_optimization_profile(opt_profile)
    if profile.dla_core is not None:
        if profile.dla_core >= builder.num_DLA_cores:
            raise BackendUnavailableError(
                f"DLA core {profile.dla_core} requested but this device has {builder.num_DLA_cores} DLA core(s)"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = profile.dla_core
        if profile.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_file = timing_cache_path(profile.timing_cache, bundle.dir, gpu["name"], platform["tensorrt"])
    if cache_file is not None:
        cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        config.set_timing_cache(cache, False)  # ignore_mismatch=False: caches are per GPU + TRT

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT failed to build {engine_path.name} (see the TensorRT messages above)")
    build_seconds = time.perf_counter() - t0
    if cache_file is not None:
        atomic_write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))

    io = {
        "inputs": [
            {"name": t.name, "shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
            for t in (network.get_input(i) for i in range(network.num_inputs))
        ],
        "outputs": [
            {"name": t.name, "shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
            for t in (network.get_output(i) for i in range(network.num_outputs))
        ],
    }
    # Candidate -> gate -> publish or reject (core.publish): a failing engine never takes the final path.
    with Candidate(engine_path, companions=(".json", ".verify.json")) as candidate:
        candidate.path.write_bytes(bytes(serialized))
        sidecar = make_sidecar(
            bundle_meta=bundle.meta,
            engine_file=engine_path.name,
            engine_sha256=sha256_file(candidate.path),
            precision=precision,
            onnx_file=onnx_path.name,
            onnx_sha256=sha256_file(onnx_path),
            platform=platform,
            io=io,
            profile=profile,
            build_seconds=build_seconds,
            strongly_typed=strongly_typed,
        )
        return _check_and_publish(bundle, candidate, sidecar, verify=verify, manifest=manifest, split=split, log=log)


def _check_and_publish(
    bundle: Any, candidate: Candidate, sidecar: dict[str, Any], *, verify: bool,
    manifest: str | Path | None, split: str, log: Callable[[str], None],
) -> BuildResult:
    """Write the candidate's sidecar, run the accuracy gate on it, then publish (or reject) both."""
    write_json(sidecar_path(candidate.path), sidecar)
    size_mb = candidate.path.stat().st_size / 1e6
    gate = None
    candidate_key = f"engine:{candidate.path.name}"  # the gate's key for the file it ran
    if verify:
        try:
            gate = _verify_engine(bundle, candidate.path, manifest, split, log)
        except GateFailedError as exc:
            kept = candidate.reject()
            raise GateFailedError(f"{exc}; engine not published (kept as {kept.name})") from None
    engine = candidate.publish()
    side = sidecar_path(engine)
    log(f"wrote {engine} ({size_mb:.1f} MB, {sidecar['build_seconds']:.0f} s) and {side.name}")
    record_engine(bundle, engine, sidecar)
    if gate is not None:
        record_verdicts(Bundle.load(bundle.dir), gate, by="build", rename={candidate_key: f"engine:{engine.name}"},
                        paths={f"engine:{engine.name}": engine})
    result = BuildResult(engine, side, sidecar)
    result.gate = gate
    return result


def engine_key(bundle_dir: Path, engine: Path) -> str:
    """Key of an engine in bundle.json: its path relative to the bundle, or absolute when outside."""
    try:
        return engine.resolve().relative_to(bundle_dir.resolve()).as_posix()
    except ValueError:
        return str(engine.resolve())


def record_engine(bundle: Any, engine: Path, sidecar: dict[str, Any]) -> None:
    """Add the engine's build facts to bundle.meta['engines'] (keyed by its path) and save bundle.json.

    Its accuracy-gate verdict is recorded apart, with every other verdict, in bundle.json["gate"]
    under "engine:<file name>" (Bundle.record_gate); the runtime's `auto` skips engines that failed.
    """
    bundle = Bundle.load(bundle.dir)  # re-read: the gate may have written its own section meanwhile
    engines = dict(bundle.meta.get("engines") or {})
    engines[engine_key(bundle.dir, engine)] = {
        "precision": sidecar["precision"],
        "tensorrt": sidecar["tensorrt"],
        "gpu": sidecar["gpu"],
        "dla_core": sidecar.get("dla_core"),
        "sha256": sidecar["engine"]["sha256"],
        "built_at": sidecar["built_at"],
    }
    bundle.update(engines=engines)


def _verify_engine(bundle: Any, engine: Path, manifest: str | Path | None, split: str, log: Callable[[str], None]) -> Any:
    """Accuracy gate on the fresh engine (edgecxr.verify.run_gate); GateFailedError propagates (exit 3).

    The full report goes to `<engine>.verify.json`; bundle.json's "verify" section (the gate run on
    the ONNX artifacts, which `auto` reads) is left as it is.
    """
    from edgecxr.stages.gate.report import format_text
    from edgecxr.stages.gate.run import run_gate

    manifest = manifest or (bundle.meta.get("dataset") or {}).get("manifest")
    if not manifest or not Path(manifest).is_file():
        raise BundleError(
            f"the accuracy gate needs the data manifest ({manifest or 'none recorded in bundle.json'} not found); "
            "give the manifest, or build without the gate",
            params=("manifest", "verify"),
        )
    log(f"verifying {engine.name} on split {split!r} of {manifest} (accuracy regression gate)")
    result = run_gate(bundle, manifest, split, artifacts=[str(engine)], write=False, raise_on_fail=False)
    write_json(engine.with_name(engine.name + ".verify.json"), result.to_dict())
    log(format_text(result))
    if not result.passed:
        result.raise_for_failures()
    return result
