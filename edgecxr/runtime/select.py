"""Which artifact of a bundle runs on this machine, and why.

With `backend="auto"` the choice is, in order:

1. a TensorRT engine recorded in the bundle whose sidecar matches this GPU and TensorRT version
   (and that did not fail the accuracy gate): INT8 if it passed the gate, else FP16;
2. ONNX Runtime: on CPU the INT8 ONNX if it passed the accuracy gate, else the FP32 ONNX. FP16 is
   never chosen on CPU (ONNX Runtime's CPU kernels run it through casts, slower than FP32); with
   the CUDA execution provider (onnxruntime-gpu) the FP16 ONNX is chosen if it passed the gate.
   On CPU, where OpenVINO is installed, that same file runs on whichever of ONNX Runtime and
   OpenVINO measured faster for it on this CPU (`edgecxr.runtime.openvino_pick`: timed once, cached
   per file sha256, CPU model and runtime versions); $EDGECXR_CPU_RUNTIME=onnxruntime|openvino pins it.
   A gate verdict counts only for the arithmetic it was measured with (`runtime/arithmetic.py`): an
   FP16 file gated with FP32 arithmetic is passed over where it would run on native FP16 kernels.
3. Keras is never chosen automatically (it needs TensorFlow; it is the reference, not a runtime).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.core.artifacts import DEPLOYABLE, KINDS, PRECISIONS, kind, onnx_key
from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import (
    BackendUnavailableError,
    BundleError,
    EdgeCXRError,
    EngineMismatchError,
)
from edgecxr.core.metadata import check_compatibility, read_sidecar
from edgecxr.runtime.arithmetic import FP16_ARITHMETIC_ENV, onnx_arithmetic, verdict_arithmetic
from edgecxr.runtime.sysinfo import cpu_class, cpu_int8_fast

#: runtimes that run the bundle's ONNX files besides the one the artifact table names (onnxruntime)
ONNX_ALSO = ("openvino",)
#: what `backend=` accepts: auto, then the artifact table's backends fastest first (tensorrt, onnxruntime,
#: keras), OpenVINO beside ONNX Runtime
BACKENDS = ("auto", *(b for kb in reversed(dict.fromkeys(k.backend for k in KINDS))
                      for b in ((kb, *ONNX_ALSO) if kb == "onnxruntime" else (kb,))))
#: why OpenVINO never runs an INT8 file on a CPU without an integer dot-product instruction: there its
#: INT8 answers failed the gate (CoroNet 98.41% top-1 agreement with the gated ONNX Runtime answers on
#: `test`, scripts/openvino_gate.py, docs/BENCHMARKS.md), as ONNX Runtime's own fast u8s8 kernels do
OPENVINO_INT8_NO_DOT = ("OpenVINO's INT8 kernels failed the accuracy gate on a CPU without an integer dot-product "
                        "instruction (VNNI)")
#: pins `auto`'s CPU runtime for ONNX files instead of measuring (deployments that must not vary; tests)
CPU_RUNTIME_ENV = "EDGECXR_CPU_RUNTIME"


@dataclass(frozen=True)
class ArtifactChoice:
    """Which file runs on which backend, and why (shown to the user)."""

    backend: str
    path: Path
    precision: str
    reason: str


# ------------------------------------------------------------------------------------------------
# Choosing an artifact
# ------------------------------------------------------------------------------------------------
def _engine_candidates(bundle_dir: Path, meta: dict[str, Any]) -> tuple[list[Path], list[str]]:
    """The engines bundle.json lists, and why others were refused: a path leading outside the bundle
    (absolute, '..', a symlink) is never loaded by `auto`; give such an engine file directly instead."""
    bundle = Bundle(bundle_dir, meta)
    paths, refused = [], []
    for key in meta.get("engines") or {}:
        try:
            paths.append(bundle.inside(key, f"engines.{key}"))
        except BundleError as exc:
            refused.append(str(exc))
    return paths, refused


def choose_engine(
    bundle_dir: Path,
    meta: dict[str, Any],
    platform: dict[str, Any],
    precision: str | None = None,
) -> tuple[Path | None, list[str]]:
    """The bundle's best engine for `platform`, or None with the reason each engine was passed over.

    Engines that failed the gate are skipped; among the rest an INT8 engine that passed the gate
    wins over FP16, then the most recently built.
    """

    verdicts = Bundle(bundle_dir, meta).gate_verdicts()
    candidates, rejected = _engine_candidates(bundle_dir, meta)
    usable: list[tuple[tuple[bool, bool, str], Path]] = []
    for path in candidates:
        if not path.is_file():
            rejected.append(f"{path.name}: file missing")
            continue
        try:
            side = read_sidecar(path)
        except BundleError as exc:
            rejected.append(str(exc))
            continue
        if precision and side.get("precision") != precision:
            rejected.append(f"{path.name}: {side.get('precision')}, not {precision}")
            continue
        reasons = check_compatibility(side, platform)
        if reasons:
            rejected.append(f"{path.name}: " + "; ".join(reasons))
            continue
        verified = verdicts.get(f"engine:{path.name}", {}).get("passed")
        if verified is False:
            rejected.append(f"{path.name}: failed the accuracy gate")
            continue
        rank = (verified is True, side.get("precision") == "int8", str(side.get("built_at", "")))
        usable.append((rank, path))
    if not usable:
        return None, rejected
    usable.sort(key=lambda item: item[0], reverse=True)
    return usable[0][1], rejected


def choose_onnx(bundle: Any, precision: str | None, cuda: bool = False, int8_fast: bool | None = None) -> ArtifactChoice:
    """The bundle's ONNX for ONNX Runtime: `precision` if given, else the fastest one allowed here.

    Order of preference: with CUDA FP16, FP32, INT8; on a CPU with an integer dot-product
    instruction (`int8_fast`, default: sysinfo.cpu_int8_fast()) INT8, FP32, FP16; on other CPUs
    FP32, FP16, INT8 (there INT8 runs slower than FP32). FP32 is the reference; FP16 and INT8 are
    taken only if they passed the accuracy gate.
    """
    _refuse_missing(bundle)
    if precision is not None:
        path = bundle.artifact(onnx_key(precision))
        other = None if cuda else _arithmetic_not_gated(bundle, precision)
        return ArtifactChoice("onnxruntime", path, precision,
                              f"{precision} ONNX (asked for" + (f"; not verified for this CPU: {other})" if other else ")"))
    if int8_fast is None:
        int8_fast = cpu_int8_fast()
    order = ("fp16", "fp32", "int8") if cuda else ("int8", "fp32", "fp16") if int8_fast else ("fp32", "fp16", "int8")
    passed_over: list[str] = []
    if not cuda and not int8_fast and bundle.artifact(onnx_key("int8"), must_exist=False) is not None:
        passed_over.append("int8 ONNX last: this CPU has no integer dot-product instruction (VNNI, dotprod)")
    for prec in order:
        path = bundle.artifact(onnx_key(prec), must_exist=False)
        if prec == "fp32":
            if path is not None:
                return ArtifactChoice("onnxruntime", path, "fp32", _why("fp32 ONNX", passed_over))
            passed_over.append("fp32 ONNX absent")
            continue
        status = bundle.gate_verdict(onnx_key(prec)) if path is not None else None
        other = _arithmetic_not_gated(bundle, prec) if status and not cuda else None
        if other:
            passed_over.append(f"{prec} ONNX not verified for this CPU: {other}")
            continue
        if status:
            return ArtifactChoice("onnxruntime", path, prec, _why(f"{prec} ONNX (passed the accuracy gate)", passed_over))
        why = "absent" if path is None else ("failed the accuracy gate" if status is False
                                             else "not verified yet (`edgecxr verify`)")
        passed_over.append(f"{prec} ONNX {why}")
    raise BundleError(f"{bundle.dir}: bundle has no usable ONNX model ({'; '.join(passed_over)}); run `edgecxr export`")


def _arithmetic_not_gated(bundle: Any, precision: str) -> str | None:
    """Why `precision`'s gate verdict does not hold for this CPU's arithmetic, or None when it does (or
    there is no verdict). A verdict holds for the arithmetic it was measured with (runtime/arithmetic.py):
    FP16 measured with FP32 arithmetic (x86, or Arm up-cast at load) does not cover native FP16 kernels."""
    entry = (bundle.gate_verdicts() if hasattr(bundle, "gate_verdicts") else {}).get(onnx_key(precision)) or {}
    if not entry:
        return None
    measured, here = verdict_arithmetic(entry, precision), onnx_arithmetic(precision)
    if measured == here:
        return None
    where = (entry.get("platform") or {}).get("cpu_class", "x86") if isinstance(entry.get("platform"), dict) else "x86"
    return (f"gated with {measured} arithmetic ({where}), this CPU ({cpu_class()}) runs it with {here} arithmetic "
            f"(${FP16_ARITHMETIC_ENV}; unset it to run the gated arithmetic)")


def _refuse_missing(bundle: Any) -> None:
    """A bundle whose bundle.json lists an ONNX file that is gone is damaged: say so, rather than
    quietly treating a gated INT8 as "absent" and running something else in its place."""
    listed = bundle.meta.get("artifacts") or {}
    for key in DEPLOYABLE:
        if listed.get(key) and bundle.artifact(key, must_exist=False) is None:
            stage = kind(key).made_by
            raise BundleError(f"{bundle.dir / listed[key]}: {bundle.path.name} lists it as {key} but the file is missing; "
                              f"restore it, re-run `edgecxr {stage}`, or remove it from {bundle.path}")


def runs_file(backend: str, runs_on: str) -> bool:
    """Whether `backend` may run a model file the artifact table gives to `runs_on` (OpenVINO runs ONNX files)."""
    return backend in ("auto", runs_on) or (runs_on == "onnxruntime" and backend in ONNX_ALSO)


def _why(choice: str, passed_over: list[str]) -> str:
    return f"{choice} ({'; '.join(passed_over)})" if passed_over else choice


def choose_artifact(bundle: Any, backend: str = "auto", precision: str | None = None) -> ArtifactChoice:
    """Pick what runs a bundle on this machine (see the module docstring for the rule)."""
    from edgecxr.runtime.backends import backends

    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "keras":
        if precision not in (None, "fp32"):
            raise BundleError(f"the Keras reference model is fp32; precision {precision} needs another backend",
                              params=("precision", "backend"))
        return ArtifactChoice("keras", bundle.artifact("keras"), "fp32", "Keras reference model (asked for)")
    notes: list[str] = []
    if backend in ("auto", "tensorrt"):
        trt_cls = backends()["tensorrt"]
        reason = trt_cls.availability()
        if reason is None:
            from edgecxr.runtime.sysinfo import current_platform

            try:
                platform = current_platform()
            except EdgeCXRError as exc:
                reason = str(exc)
        if reason is None:
            engine, rejected = choose_engine(bundle.dir, bundle.meta, platform, precision)
            if engine is not None:
                from edgecxr.core.metadata import read_sidecar

                prec = read_sidecar(engine)["precision"]
                return ArtifactChoice("tensorrt", engine, prec, f"TensorRT engine matching {platform['gpu']['name']}")
            if backend == "tensorrt":
                detail = "; ".join(rejected) if rejected else "the bundle has no engine"
                raise EngineMismatchError(
                    f"{bundle.dir}: no usable TensorRT engine for {platform['gpu']['name']} with TensorRT "
                    f"{platform['tensorrt']} ({detail}). Build one here with: "
                    f"edgecxr build -m {bundle.dir} --precision {precision or 'fp16'}"
                )
            notes.append("no matching TensorRT engine" + (f" ({'; '.join(rejected)})" if rejected else ""))
        elif backend == "tensorrt":
            raise BackendUnavailableError(f"TensorRT backend not available here: {reason}")
        else:
            notes.append(f"TensorRT unavailable: {reason}")
    if precision not in PRECISIONS and precision is not None:
        raise BundleError(f"unknown precision {precision!r}")
    if backend in ONNX_ALSO:
        reason = backends()[backend].availability()
        if reason:
            raise BackendUnavailableError(f"{backend} backend not available here: {reason}")
        choice = choose_onnx(bundle, precision, cuda=False)
        if choice.precision == "int8" and not cpu_int8_fast():
            raise BundleError(f"{choice.path}: {OPENVINO_INT8_NO_DOT}; run it on onnxruntime, or another precision "
                              "on openvino", params=("precision", "backend"))
        return ArtifactChoice(backend, choice.path, choice.precision, choice.reason)
    cuda = _ort_has_cuda()
    choice = choose_onnx(bundle, precision, cuda=cuda)
    runtime, why = (choice.backend, None) if cuda or backend != "auto" else _cpu_runtime(bundle, choice)
    reason = "; ".join([*notes, choice.reason, *([why] if why else [])])
    return ArtifactChoice(runtime, choice.path, choice.precision, reason)


def _cpu_runtime(bundle: Any, choice: ArtifactChoice) -> tuple[str, str | None]:
    """Which CPU runtime runs `choice`'s ONNX file under `auto`: pinned by $EDGECXR_CPU_RUNTIME, else
    ONNX Runtime where OpenVINO is absent, else the one measured faster (openvino_pick)."""
    import os

    from edgecxr.runtime.backends import backends

    pinned = os.environ.get(CPU_RUNTIME_ENV, "").strip().lower()
    if pinned and pinned != "measure":
        if pinned not in (choice.backend, *ONNX_ALSO):
            raise BackendUnavailableError(f"${CPU_RUNTIME_ENV}={pinned!r}: expected one of "
                                          f"{', '.join((choice.backend, *ONNX_ALSO, 'measure'))}")
        reason = backends()[pinned].availability()
        if reason:
            raise BackendUnavailableError(f"${CPU_RUNTIME_ENV}={pinned}: {reason}")
        return pinned, f"{pinned} (${CPU_RUNTIME_ENV})"
    if any(backends()[name].availability() for name in ONNX_ALSO):
        return choice.backend, None
    if choice.precision == "int8" and not cpu_int8_fast():
        return choice.backend, f"onnxruntime (openvino not timed: {OPENVINO_INT8_NO_DOT})"
    from edgecxr.runtime import store
    from edgecxr.runtime.openvino_pick import pick_runtime

    sha = store.verify_artifact(bundle, choice.path)  # nothing runs a file before its sha256 is checked
    return pick_runtime(choice.path, tuple(bundle.spec.input_shape), sha256=sha)


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()
