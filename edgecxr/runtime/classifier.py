"""The workstation API: `Classifier.load(model).predict(paths)` -> one `Prediction` per input.

A model is a bundle directory, a TensorRT engine (with its sidecar) or an ONNX file. With
`backend="auto"` the choice is, in order:

1. a TensorRT engine recorded in the bundle whose sidecar matches this GPU and TensorRT version
   (and that did not fail the accuracy gate): INT8 if it passed the gate, else FP16;
2. ONNX Runtime: on CPU the INT8 ONNX if it passed the accuracy gate (`edgecxr verify` /
   `calibrate` record this in bundle.json), else the FP32 ONNX. FP16 is never chosen on CPU
   (ONNX Runtime's CPU kernels run it through casts, slower than FP32); with the CUDA execution
   provider (onnxruntime-gpu) the FP16 ONNX is chosen if it passed the gate.
3. Keras is never chosen automatically (it needs TensorFlow; it is the reference, not a runtime).

The choice and why are in `Classifier.backend_info` (the CLI prints it to stderr), so nobody has
to guess what ran. Every input goes through `edgecxr.preprocess.preprocess` with the spec stored
next to the model, and a file that cannot be read becomes a Prediction with `error` set instead of
an exception, so a batch from the scanner always completes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.errors import (
    BackendUnavailableError,
    BundleError,
    EdgeCXRError,
    EngineMismatchError,
    ImageLoadError,
)
from edgecxr.preprocess import PreprocessSpec, preprocess

BACKENDS = ("auto", "tensorrt", "onnxruntime", "keras")
ONNX_PRECISIONS = {"fp32": "onnx_fp32", "fp16": "onnx_fp16", "int8": "onnx_int8"}
ENGINE_SUFFIXES = (".engine", ".plan")


@dataclass
class Prediction:
    """The result for one input.

    Attributes:
        source: the input path (as given) or, for arrays, its index in the input list.
        label: top-1 class, None when the input failed.
        probabilities: class -> probability (empty when the input failed).
        top1: probability of `label`.
        preprocess_ms: decode + preprocessing of this input.
        inference_ms: this input's share of its batch's inference (batch time / batch size).
        error: why the input failed (file unreadable, not an image...), else None.
    """

    source: str | int
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    top1: float | None = None
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def path(self) -> str | None:
        return self.source if isinstance(self.source, str) else None

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[: max(0, k)]

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "source": self.source,
            "label": self.label,
            "top1": None if self.top1 is None else round(self.top1, 6),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "preprocess_ms": round(self.preprocess_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "error": self.error,
        }
        if top_k:
            data["top_k"] = [[c, round(p, 6)] for c, p in self.top_k(top_k)]
        return data


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
def gate_status(meta: dict[str, Any], artifact: str) -> bool | None:
    """Whether `artifact` (e.g. 'onnx_int8') passed the accuracy gate per bundle.json; None if never gated.

    Two places record a verdict: bundle.meta['verify'] (`edgecxr verify`) and, for the INT8 file,
    bundle.meta['calibration']['gate'] (`edgecxr calibrate` gates before publishing). Both hold
    {'time': ..., 'artifacts': {key: {'passed': bool}}}; the most recent verdict wins, so a later
    failing `verify` run withdraws an INT8 model and a re-calibration supersedes an old verify.
    """
    verdicts: list[tuple[str, bool]] = []
    for section in (meta.get("verify"), (meta.get("calibration") or {}).get("gate")):
        if not isinstance(section, dict):
            continue
        entries = section.get("artifacts", section)
        entry = entries.get(artifact) if isinstance(entries, dict) else None
        if isinstance(entry, dict) and isinstance(entry.get("passed"), bool):
            verdicts.append((str(section.get("time", "")), entry["passed"]))
        elif isinstance(entry, bool):
            verdicts.append((str(section.get("time", "")), entry))
    if not verdicts:
        return None
    return max(verdicts, key=lambda v: v[0])[1]


def _engine_candidates(bundle_dir: Path, meta: dict[str, Any]) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for key, entry in (meta.get("engines") or {}).items():
        path = Path(key) if Path(key).is_absolute() else bundle_dir / key
        out.append((path, entry if isinstance(entry, dict) else {}))
    return out


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
    from edgecxr.engine import check_compatibility, read_sidecar

    rejected: list[str] = []
    usable: list[tuple[tuple[bool, bool, str], Path]] = []
    for path, entry in _engine_candidates(bundle_dir, meta):
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
        verified = entry.get("verified")
        if verified is False:
            rejected.append(f"{path.name}: failed the accuracy gate")
            continue
        rank = (verified is True, side.get("precision") == "int8", str(side.get("built_at", "")))
        usable.append((rank, path))
    if not usable:
        return None, rejected
    usable.sort(key=lambda item: item[0], reverse=True)
    return usable[0][1], rejected


def choose_onnx(bundle: Any, precision: str | None, cuda: bool = False) -> ArtifactChoice:
    """The bundle's ONNX for ONNX Runtime: `precision` if given, else by the rule in the module docstring."""
    if precision is not None:
        if precision not in ONNX_PRECISIONS:
            raise BundleError(f"precision {precision!r} for ONNX Runtime must be one of {sorted(ONNX_PRECISIONS)}")
        path = bundle.artifact(ONNX_PRECISIONS[precision])
        return ArtifactChoice("onnxruntime", path, precision, f"{precision} ONNX (asked for)")
    preferred, other = (("onnx_fp16", "fp16"), ("onnx_int8", "int8"))
    if not cuda:
        preferred, other = other, preferred
    path = bundle.artifact(preferred[0], must_exist=False)
    status = gate_status(bundle.meta, preferred[0]) if path is not None else None
    if status:
        return ArtifactChoice("onnxruntime", path, preferred[1], f"{preferred[1]} ONNX (passed the accuracy gate)")
    why = "absent" if path is None else ("failed the accuracy gate" if status is False else "not verified yet (`edgecxr verify`)")
    fp32 = bundle.artifact("onnx_fp32", must_exist=False)
    if fp32 is not None:
        return ArtifactChoice("onnxruntime", fp32, "fp32", f"fp32 ONNX ({preferred[1]} ONNX {why})")
    # no FP32 file (the shipped reference models): the other reduced precision, if it passed the gate
    path = bundle.artifact(other[0], must_exist=False)
    if path is not None and gate_status(bundle.meta, other[0]):
        return ArtifactChoice("onnxruntime", path, other[1],
                              f"{other[1]} ONNX (passed the accuracy gate; no fp32 shipped; {preferred[1]} ONNX {why})")
    raise BundleError(f"{bundle.dir}: bundle has no ONNX model; run `edgecxr export`")


def choose_artifact(bundle: Any, backend: str = "auto", precision: str | None = None) -> ArtifactChoice:
    """Pick what runs a bundle on this machine (see the module docstring for the rule)."""
    from edgecxr.runtime.base import backends

    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "keras":
        if precision not in (None, "fp32"):
            raise BundleError(f"the Keras reference model is fp32; --precision {precision} needs another backend")
        return ArtifactChoice("keras", bundle.artifact("keras"), "fp32", "Keras reference model (asked for)")
    notes: list[str] = []
    if backend in ("auto", "tensorrt"):
        trt_cls = backends()["tensorrt"]
        reason = trt_cls.availability()
        if reason is None:
            from edgecxr.engine import current_platform

            try:
                platform = current_platform()
            except EdgeCXRError as exc:
                reason = str(exc)
        if reason is None:
            engine, rejected = choose_engine(bundle.dir, bundle.meta, platform, precision)
            if engine is not None:
                from edgecxr.engine import read_sidecar

                prec = read_sidecar(engine)["precision"]
                return ArtifactChoice("tensorrt", engine, prec, f"TensorRT engine matching {platform['gpu']['name']}")
            if backend == "tensorrt":
                detail = "; ".join(rejected) if rejected else "the bundle has no engine"
                raise EngineMismatchError(
                    f"{bundle.dir}: no usable TensorRT engine for {platform['gpu']['name']} with TensorRT "
                    f"{platform['tensorrt']} ({detail}). Build one here with: "
                    f"edgecxr build {bundle.dir} --precision {precision or 'fp16'}"
                )
            notes.append("no matching TensorRT engine" + (f" ({'; '.join(rejected)})" if rejected else ""))
        elif backend == "tensorrt":
            raise BackendUnavailableError(f"TensorRT backend not available here: {reason}")
        else:
            notes.append(f"TensorRT unavailable: {reason}")
    if precision in ("fp16", "int8", "fp32") or precision is None:
        cuda = _ort_has_cuda()
        choice = choose_onnx(bundle, precision, cuda=cuda)
        reason = "; ".join([*notes, choice.reason])
        return ArtifactChoice(choice.backend, choice.path, choice.precision, reason)
    raise BundleError(f"unknown precision {precision!r}")


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """classes / preprocess / model / precision from an ONNX file's metadata_props (written by `edgecxr export`)."""
    from edgecxr.export.onnx import META_CLASSES, META_MODEL, META_PRECISION, META_PREPROCESS, read_metadata

    try:
        props = read_metadata(path)
    except Exception as exc:  # onnx raises DecodeError and friends for non-ONNX files
        raise BundleError(f"{path}: not a readable ONNX model ({exc})") from exc
    names = {META_CLASSES: "classes", META_PREPROCESS: "preprocess", META_MODEL: "model", META_PRECISION: "precision"}
    return {name: props[key] for key, name in names.items() if key in props}


# ------------------------------------------------------------------------------------------------
# Classifier
# ------------------------------------------------------------------------------------------------
class Classifier:
    """A loaded model plus its classes and preprocessing spec; use as a context manager or call close()."""

    def __init__(self, runner: Any, classes: Sequence[str], spec: PreprocessSpec, info: dict[str, Any]):
        self.runner = runner
        self.classes = list(classes)
        self.spec = spec
        self.backend_info = info

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        backend: str = "auto",
        precision: str | None = None,
        **options: Any,
    ) -> Classifier:
        """Load a model by name, or a bundle directory, an .engine (with its sidecar) or an .onnx file.

        Args:
            path: a model name ("coronet", "cnn-lstm" or a registered one; see `edgecxr models`),
                bundle directory, engine file or ONNX file (or a .keras file inside a bundle);
                None: the default reference model (coronet).
            backend: "auto", "tensorrt", "onnxruntime" or "keras".
            precision: restrict to "fp32" / "fp16" / "int8" artifacts (bundles only).
            options: passed to the runner (e.g. cuda_graph=True for TensorRT, threads=2 for ORT).
        """
        from edgecxr import registry
        from edgecxr.bundle import Bundle
        from edgecxr.runtime.base import create_runner

        if backend not in BACKENDS:
            raise BackendUnavailableError(f"unknown backend {backend!r}; choose from {BACKENDS}")
        path = registry.resolve(path)
        if path.is_dir():
            bundle = Bundle.load(path)
            choice = choose_artifact(bundle, backend, precision)
            registry.verify_artifact(bundle, choice.path)
            classes, spec = bundle.classes, bundle.spec
        elif path.suffix.lower() in ENGINE_SUFFIXES:
            if backend not in ("auto", "tensorrt"):
                raise BackendUnavailableError(f"{path}: a TensorRT engine runs only on the tensorrt backend")
            from edgecxr.engine import read_sidecar

            side = read_sidecar(path)
            classes, spec = side["classes"], PreprocessSpec.from_dict(side["preprocess"])
            choice = ArtifactChoice("tensorrt", path, side["precision"], "TensorRT engine given")
        elif path.suffix.lower() == ".onnx":
            if backend not in ("auto", "onnxruntime"):
                raise BackendUnavailableError(f"{path}: an ONNX file runs on the onnxruntime backend")
            meta = read_onnx_metadata(path)
            if "classes" not in meta or "preprocess" not in meta:
                sibling = path.parent / "bundle.json"
                if not sibling.is_file():
                    raise BundleError(
                        f"{path}: ONNX has no edgecxr metadata (classes, preprocessing) and no bundle.json beside it"
                    )
                bmeta = Bundle.load(path.parent).meta
                meta.setdefault("classes", bmeta["classes"])
                meta.setdefault("preprocess", bmeta["preprocess"])
            classes, spec = meta["classes"], PreprocessSpec.from_dict(meta["preprocess"])
            prec = str(meta.get("precision") or "fp32")
            choice = ArtifactChoice("onnxruntime", path, prec, "ONNX file given")
        elif path.suffix.lower() == ".keras":
            if backend not in ("auto", "keras"):
                raise BackendUnavailableError(f"{path}: a Keras model runs only on the keras backend")
            bundle = Bundle.load(path.parent)
            classes, spec = bundle.classes, bundle.spec
            choice = ArtifactChoice("keras", path, "fp32", "Keras model given")
        else:
            raise BundleError(f"{path}: expected a bundle directory, .engine/.plan, .onnx or .keras file")
        if precision is not None and not path.is_dir() and precision != choice.precision:
            # never run another precision than the one asked for without saying so
            raise BundleError(
                f"{path} is a {choice.precision} model but precision {precision} was asked for; "
                "give the bundle directory to pick by precision, or drop the precision"
            )

        if choice.backend == "onnxruntime" and "device" not in options and _ort_has_cuda():
            options["device"] = "cuda"  # onnxruntime-gpu: run on the GPU (the FP16 choice above assumed it)
        runner = create_runner(choice.backend, choice.path, **options)
        runner.__enter__()
        info = {
            "backend": choice.backend,
            "requested": backend,
            "artifact": str(choice.path),
            "precision": choice.precision,
            "reason": choice.reason,
            "preprocess": spec.id,
        }
        info.update({k: v for k, v in runner.describe().items() if k not in ("backend", "path")})
        return cls(runner, classes, spec, info)

    def describe(self) -> str:
        """One line for logs: 'onnxruntime, int8 ONNX runs/x/model.int8.onnx (why...)'."""
        i = self.backend_info
        return f"backend {i['backend']} ({i['precision']}): {i['artifact']} - {i['reason']}"

    # -- prediction -----------------------------------------------------------------------------
    def predict(self, inputs: Any, batch_size: int = 8) -> list[Prediction]:
        """Classify paths (PNG/JPEG/DICOM) or decoded arrays; one Prediction per input, in order."""
        out: list[Prediction] = []
        for chunk in self.predict_iter(inputs, batch_size=batch_size):
            out.extend(chunk)
        return out

    def predict_iter(self, inputs: Any, batch_size: int = 8) -> Iterator[list[Prediction]]:
        """Like predict, yielding each batch's predictions as soon as it is done (for progress bars)."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        items = _as_items(inputs)
        for start in range(0, len(items), batch_size):
            yield self._predict_batch(items[start : start + batch_size], start)

    def _predict_batch(self, items: list[Any], offset: int) -> list[Prediction]:
        from edgecxr.data.io import load_image

        preds: list[Prediction] = []
        tensors: list[np.ndarray] = []
        good: list[int] = []
        for i, item in enumerate(items):
            source: str | int = str(item) if isinstance(item, (str, Path)) else offset + i
            t0 = time.perf_counter()
            try:
                if isinstance(item, (str, Path)):
                    image = load_image(item, (self.spec.height, self.spec.width))
                else:
                    image = np.asarray(item)
                tensors.append(preprocess(image, self.spec))
            except ImageLoadError as exc:
                preds.append(Prediction(source, error=exc.reason))
                continue
            except ValueError as exc:  # preprocess: wrong dtype / range / shape of a given array or DICOM
                preds.append(Prediction(source, error=str(exc)))
                continue
            preds.append(Prediction(source, preprocess_ms=(time.perf_counter() - t0) * 1e3))
            good.append(i)
        if not good:
            return preds
        t0 = time.perf_counter()
        probs = self.runner.infer(np.stack(tensors))
        per_image = (time.perf_counter() - t0) * 1e3 / len(good)
        if probs.ndim != 2 or probs.shape != (len(good), len(self.classes)):
            raise BundleError(
                f"model returned shape {probs.shape}, expected ({len(good)}, {len(self.classes)}) for classes {self.classes}"
            )
        for row, i in zip(probs, good, strict=True):
            p = preds[i]
            k = int(np.argmax(row))
            p.label = self.classes[k]
            p.top1 = float(row[k])
            p.probabilities = {c: float(v) for c, v in zip(self.classes, row, strict=True)}
            p.inference_ms = per_image
        return preds

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_items(inputs: Any) -> list[Any]:
    """A single path or array -> [it]; a list of paths/arrays or an (N, H, W[, C]) stack -> list."""
    if isinstance(inputs, (str, Path)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return [inputs] if inputs.ndim in (2, 3) and not (inputs.ndim == 3 and inputs.shape[2] > 4) else list(inputs)
    if isinstance(inputs, Iterable):
        return list(inputs)
    raise TypeError(f"expected paths or arrays, got {type(inputs).__name__}")
