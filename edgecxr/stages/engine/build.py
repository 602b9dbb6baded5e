"""TensorRT engine builds through Polygraphy: the engine sidecar, the compatibility decision, the build.

An engine is a compiled plan for one GPU model and one TensorRT version; loaded anywhere else it
fails (or, worse, runs slowly). So every engine gets a `<engine>.json` sidecar recording what built
it, and the runtime refuses an engine whose sidecar does not match the machine, naming both sides
and the command that rebuilds it (`check_compatibility` / `ensure_compatible`).

Why Polygraphy: this project's machines have no GPU, so the build cannot be run before it ships;
NVIDIA's maintained loaders do the TensorRT calls and follow the API from 8.6 to 11:
NetworkFromOnnxPath (parser errors listed) -> CreateConfig (optimization profile, workspace pool,
timing cache, DLA) -> EngineFromNetwork -> SaveEngine. What differs by TensorRT line (strongly typed
10/11 with precision from the FP16 or Q/DQ ONNX; FP16/INT8 builder flags on 8.6 only) is data in
trt_lines.py, which `build --dry-run` prints and the contract tests check against each version's
real bindings. Profiles (build_engines/*.toml) are parsed in profile.py. Everything that
decides something (profiles, names, sidecar content, compatibility) is a pure function tested on CPU.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.core.artifacts import onnx_key
from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BackendUnavailableError, BundleError, GateFailedError
from edgecxr.core.fileutil import sha256_file, write_json
from edgecxr.core.lazy import require
from edgecxr.core.metadata import make_sidecar, sidecar_path
from edgecxr.core.publish import Candidate
from edgecxr.runtime.sysinfo import current_platform
from edgecxr.stages.engine import trt_lines
from edgecxr.stages.engine.profile import (
    BuildError,
    BuildProfile,
    check_precision_support,
    check_profile_target,
)
from edgecxr.stages.gate.report import record_verdicts


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
    platform = current_platform()  # exit 2 without TensorRT, Polygraphy or GPU, before any work
    gpu = platform["gpu"]
    check_precision_support(precision, gpu["compute_capability"], gpu["name"])
    problems = check_profile_target(profile, platform["tensorrt"], gpu["compute_capability"])
    if problems:
        raise BuildError("; ".join(problems) + " (pick a matching profile (build_engines/) or pass none)")

    spec = bundle.spec
    engine_path = Path(out) if out else bundle.dir / "engines" / engine_filename(
        bundle.model, precision, gpu["name"], platform["tensorrt"], profile.dla_core
    )
    log(f"building {precision} engine for {gpu['name']} (sm {gpu['compute_capability']}), TensorRT {platform['tensorrt']}")
    log(f"  from {onnx_path}; batch {profile.min_batch}/{profile.opt_batch}/{profile.max_batch}; "
        f"workspace {profile.workspace_mb} MB" + (f"; DLA core {profile.dla_core}" if profile.dla_core is not None else ""))

    try:
        line = trt_lines.line_for(platform["tensorrt"])
    except ValueError as exc:  # e.g. TensorRT 9.x or 12.x: no tested code path
        raise BackendUnavailableError(f"{exc}; install a supported TensorRT or use ONNX Runtime") from None
    cache_file = timing_cache_path(profile.timing_cache, bundle.dir, gpu["name"], platform["tensorrt"])
    log(f"  TensorRT line {line.key}: " + ("strongly typed, precision from the ONNX" if line.strongly_typed
        else f"builder flags {', '.join(line.builder_flags.get(precision, ()))}"))
    # Candidate -> gate -> publish or reject (core.publish): a failing engine never takes the final path.
    with Candidate(engine_path, companions=(".json", ".verify.json")) as candidate:
        io, build_seconds = _polygraphy_build(onnx_path, candidate.path, line, profile, spec.input_shape, cache_file)
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
            strongly_typed=line.strongly_typed,
        )
        return _check_and_publish(bundle, candidate, sidecar, verify=verify, manifest=manifest, split=split, log=log)


def _polygraphy_build(
    onnx_path: Path, out: Path, line: trt_lines.TrtLine, profile: BuildProfile,
    input_shape: tuple[int, ...], cache_file: Path | None,
) -> tuple[dict[str, Any], float]:
    """Parse, configure, build and save one engine with Polygraphy's loaders; (io, seconds).

    Raises BuildError (one line) for a parser failure, a network that does not fit the bundle, or a
    failed build; BackendUnavailableError for a DLA core the device lacks.
    """
    trt = require("tensorrt", "building TensorRT engines")
    require("polygraphy", "building TensorRT engines")
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        PostprocessConfig,
        Profile,
        SaveEngine,
    )
    from polygraphy.exception import PolygraphyException

    from edgecxr.runtime.gpu import quiet_polygraphy

    quiet_polygraphy()
    t0 = time.perf_counter()
    try:
        builder, network, parser = NetworkFromOnnxPath(str(onnx_path), strongly_typed=line.strongly_typed)()
    except PolygraphyException as exc:
        raise BuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {_first_line(exc)}") from None
    inp = _check_network(network, onnx_path, input_shape, profile)
    h, w, c = input_shape
    shapes = Profile().add(inp.name, min=(profile.min_batch, h, w, c), opt=(profile.opt_batch, h, w, c),
                           max=(profile.max_batch, h, w, c))
    flags = line.builder_flags.get(profile.precision, ())
    dla = profile.dla_core is not None
    if dla and profile.dla_core >= builder.num_DLA_cores:
        raise BackendUnavailableError(f"DLA core {profile.dla_core} requested but this device has {builder.num_DLA_cores} DLA core(s)")
    config = CreateConfig(
        # TF32 off (Polygraphy clears TensorRT's default): the few FP32 layers left (I/O casts, nodes
        # calibration kept in float) stay exact, and no flag but the 8.6 precision flags is set
        tf32=False,
        fp16="FP16" in flags,
        int8="INT8" in flags,
        profiles=[shapes],
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: profile.workspace_mb << 20},
        load_timing_cache=str(cache_file) if cache_file is not None else None,
        use_dla=dla,
        allow_gpu_fallback=profile.gpu_fallback if dla else None,
    )
    if dla:  # CreateConfig always picks DLA core 0
        config = PostprocessConfig(config, lambda _b, _n, cfg: setattr(cfg, "DLA_core", int(profile.dla_core)))
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = EngineFromNetwork((builder, network, parser), config=config,
                                   save_timing_cache=str(cache_file) if cache_file is not None else None)
        SaveEngine(engine, str(out))()
    except PolygraphyException as exc:
        raise BuildError(f"TensorRT failed to build {out.name}: {_first_line(exc)}") from None
    io = {
        key: [{"name": t.name, "shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
              for t in (get(i) for i in range(count))]
        for key, get, count in (("inputs", network.get_input, network.num_inputs),
                                ("outputs", network.get_output, network.num_outputs))
    }
    return io, time.perf_counter() - t0


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def _check_network(network: Any, onnx_path: Path, input_shape: tuple[int, ...], profile: BuildProfile) -> Any:
    """The parsed network's one input, checked against the bundle's preprocessing and the profile."""
    if network.num_inputs != 1:
        raise BuildError(f"{onnx_path}: expected one input, found {network.num_inputs}")
    inp = network.get_input(0)
    shape = tuple(inp.shape)
    if len(shape) != 4 or tuple(shape[1:]) != tuple(input_shape):
        raise BuildError(f"{onnx_path}: input {inp.name!r} has shape {shape}, bundle expects (N, {input_shape})")
    if shape[0] != -1 and not profile.min_batch == profile.max_batch == shape[0]:
        raise BuildError(
            f"{onnx_path}: the ONNX has a fixed batch of {shape[0]}; build for batch {shape[0]} only, or re-export "
            "with a dynamic batch (`edgecxr export`)",
            params=("batch",),
        )
    return inp


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
