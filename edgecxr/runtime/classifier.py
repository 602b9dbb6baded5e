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

Model files are not trusted blindly: before a runtime reads the chosen file its sha256 is
compared with the one bundle.json (or an engine's sidecar) recorded, and right after the load the
model's own metadata (class order, preprocessing, precision) and input/output shapes are compared
with the bundle's; any difference is a one-line BundleError naming the file. A model output row
holding NaN or Inf fails that input (`Prediction.error`), never becomes a label.

The choice and why are in `Classifier.backend_info` (the CLI prints it to stderr), so nobody has
to guess what ran. Every input goes through `edgecxr.preprocess.preprocess` with the spec stored
next to the model, and a file that cannot be read becomes a Prediction with `error` set instead of
an exception, so a batch from the scanner always completes. An input that decodes but is plainly
not a frontal chest X-ray (a CT DICOM, a lateral view, noise, a blank or colored image; see
`edgecxr.runtime.input_checks`) is never sent to the model: its Prediction has status "rejected"
and a reason, and no label.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecxr.core.artifacts import KINDS, backend_for
from edgecxr.core.errors import (
    BackendUnavailableError,
    BundleError,
)
from edgecxr.core.spec import PreprocessSpec
from edgecxr.runtime.base import FEATURES
from edgecxr.runtime.confidence import Confidence
from edgecxr.runtime.cxr_score import describe as describe_cxr_score
from edgecxr.runtime.input_checks import DEFAULT_RULES, InputRules
from edgecxr.runtime.inputs import file_sha256, prepare
from edgecxr.runtime.load_checks import (
    FILE_MODELS,
    check_loaded,
    is_rejected,
    owning_bundle,
    verify_before_load,
)
from edgecxr.runtime.orientation import describe as describe_orientation
from edgecxr.runtime.prediction import Prediction
from edgecxr.runtime.select import BACKENDS, _ort_has_cuda, choose_artifact, runs_file

__all__ = ["Classifier", "Prediction"]

if TYPE_CHECKING:  # pragma: no cover
    from edgecxr.core.bundle import Bundle

#: Prediction.error of an input whose model output row holds NaN or Inf
NOT_FINITE = "model output is not finite (NaN/Inf)"


# ------------------------------------------------------------------------------------------------
# Classifier
# ------------------------------------------------------------------------------------------------
class Classifier:
    """A loaded model plus its classes and preprocessing spec; use as a context manager or call close()."""

    def __init__(self, runner: Any, classes: Sequence[str], spec: PreprocessSpec, info: dict[str, Any],
                 input_rules: InputRules | None = DEFAULT_RULES, model: str | None = None,
                 confidence: Confidence | None = None):
        self.runner = runner
        self.confidence = confidence or Confidence.none()
        self.classes = list(classes)
        self.spec = spec
        self.backend_info = info
        self.input_rules = InputRules.off() if input_rules is None else input_rules
        self.orientation = describe_orientation(self.input_rules)  # loads the gate: fails here, not per film
        self.cxr_score = describe_cxr_score(self.input_rules)  # the same for the CXR score's parameters
        self.model_name = model or Path(str(info.get("artifact", "model"))).stem

    @property
    def audit(self) -> dict[str, Any]:
        """What produced this classifier's answers, for every output's audit trail (`runtime.results`)."""
        from edgecxr.core.version import __version__

        info = self.backend_info
        return {
            "model": self.model_name,
            "artifact": info.get("artifact"),
            "artifact_sha256": info.get("sha256"),
            "precision": info.get("precision"),
            "backend": info.get("backend"),
            "preprocess": self.spec.id,
            "temperature": self.confidence.temperature,
            "calibrator": self.confidence.calibrator.describe(),
            "ood_method": None if self.confidence.ood is None else self.confidence.ood.method,
            "ood_threshold": self._ood_threshold(),
            "input_checks": "on" if self.input_rules.enabled else "off",
            "orientation_gate": self.orientation,
            "cxr_score": self.cxr_score,
            "edgecxr_version": __version__,
        }

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        backend: str = "auto",
        precision: str | None = None,
        allow_rejected: bool = False,
        input_rules: InputRules | None = DEFAULT_RULES,
        **options: Any,
    ) -> Classifier:
        """Load a model by name, or a bundle directory, an .engine (with its sidecar) or an .onnx file.

        Args:
            path: a model name ("coronet", "cnn-lstm" or a registered one; see `edgecxr models`),
                bundle directory, engine file or ONNX file (or a .keras file inside a bundle);
                None: the default reference model (coronet).
            backend: "auto", "tensorrt", "onnxruntime", "openvino" or "keras".
            precision: restrict to "fp32" / "fp16" / "int8" artifacts (bundles only).
            allow_rejected: run a file the accuracy gate rejected (`*.rejected.*`, kept for
                inspection); without it such a file is refused. `backend_info["warning"]` says so.
            input_rules: what an input must look like to reach the model (the defaults reject
                non-radiograph DICOMs, lateral views, noise, blank and colored images); None or
                `InputRules.off()` sends every decodable input to the model.
            options: passed to the runner (e.g. cuda_graph=True for TensorRT, threads=2 for ORT).
        """
        from edgecxr.core.bundle import Bundle
        from edgecxr.runtime import store
        from edgecxr.runtime.backends import create_runner

        if backend not in BACKENDS:
            raise BackendUnavailableError(f"unknown backend {backend!r}; choose from {BACKENDS}")
        path = store.resolve(path)
        bundle: Bundle | None
        if path.is_dir():
            bundle = Bundle.load(path)
            choice = choose_artifact(bundle, backend, precision)
            classes, spec = bundle.classes, bundle.spec
        else:
            try:
                runs_on = backend_for(path)
            except BundleError:
                known = ", ".join(s for k in KINDS for s in k.suffixes)
                raise BundleError(f"{path}: expected a bundle directory or a model file ({known})") from None
            if not runs_file(backend, runs_on):
                raise BackendUnavailableError(f"{path}: this file runs only on the {runs_on} backend, not {backend}")
            if is_rejected(path) and not allow_rejected:
                raise BundleError(f"{path}: this file failed the accuracy gate and is kept only for inspection "
                                  f"(why: {path.with_suffix('.json').name}); refusing to run it unless allowed",
                                  params=("allow_rejected",))
            classes, spec, choice = FILE_MODELS[runs_on](path)
            if backend != "auto":  # an ONNX file asked on openvino
                choice = replace(choice, backend=backend)
            bundle = owning_bundle(path)
        if precision is not None and not path.is_dir() and precision != choice.precision:
            # never run another precision than the one asked for without saying so
            raise BundleError(
                f"{path} is a {choice.precision} model but precision {precision} was asked for; "
                "give the bundle directory to pick by precision, or drop the precision"
            )
        # Nothing is handed to a runtime before its bytes and its own description are checked.
        integrity, verified = verify_before_load(bundle, choice)
        if choice.backend == "tensorrt" and verified:
            options.setdefault("verified_sha256", verified)  # the runner need not hash the engine again

        if choice.backend == "onnxruntime" and "device" not in options and _ort_has_cuda():
            options["device"] = "cuda"  # onnxruntime-gpu: run on the GPU (the FP16 choice above assumed it)
        runner = create_runner(choice.backend, choice.path, **options)
        runner.load()
        try:
            check_loaded(runner, bundle, choice, classes, spec)
        except BaseException:
            runner.close()
            raise
        info = {
            "backend": choice.backend,
            "requested": backend,
            "artifact": str(choice.path),
            "precision": choice.precision,
            "reason": choice.reason,
            "preprocess": spec.id,
            "integrity": integrity,
            "sha256": verified or file_sha256(choice.path),
        }
        if is_rejected(choice.path):
            info["warning"] = f"{choice.path.name} FAILED the accuracy gate; its answers are not validated"
        info.update({k: v for k, v in runner.describe().items() if k not in ("backend", "path")})
        confidence = Confidence.from_bundle(bundle) if bundle is not None else Confidence.none()
        info["confidence"] = _describe_confidence(confidence, runner, choice.precision)
        if info["confidence"].startswith("OOD not applied"):
            info.setdefault("warning", info["confidence"])
        name = bundle.meta.get("model") if bundle is not None else None
        return cls(runner, classes, spec, info, input_rules, model=str(name) if name else None, confidence=confidence)

    def describe(self) -> str:
        """One line for logs: 'onnxruntime, int8 ONNX runs/x/model.int8.onnx (why...)'."""
        i = self.backend_info
        return f"backend {i['backend']} ({i['precision']}): {i['artifact']} - {i['reason']}"

    def _ood_threshold(self) -> float | None:
        ood = self.confidence.ood
        return None if ood is None else ood.threshold(str(self.backend_info.get("precision")))

    # -- prediction -----------------------------------------------------------------------------
    def predict(self, inputs: Any, batch_size: int = 8, workers: int | None = None,
                prefetch: int | None = None) -> list[Prediction]:
        """Classify paths (PNG/JPEG/DICOM), their bytes, pydicom Datasets or arrays; one Prediction per input, in order.

        `inputs` is one input or a list of them; an array is one image (HxW, or HxWxC with C 1, 3
        or 4) or a stack (NxHxW, NxHxWxC). A 0-D, 1-D or 5-D array, or a list of plain numbers, is
        refused with a ValueError (`ArgumentError`). Before a path is opened or hashed it must be a
        regular file within the decode limits: a FIFO, a device, a folder, an empty or too large
        file is that input's failure (status "failed", its reason in `error`), never a blocking read.

        `workers` threads decode ahead of the model (None: one per CPU, see `runtime.pipeline`;
        0 or 1: decode and run one batch after the other); `prefetch` bounds the inputs decoded ahead.
        """
        out: list[Prediction] = []
        for chunk in self.predict_iter(inputs, batch_size=batch_size, workers=workers, prefetch=prefetch):
            out.extend(chunk)
        return out

    def predict_iter(self, inputs: Any, batch_size: int = 8, workers: int | None = None,
                     prefetch: int | None = None) -> Iterator[list[Prediction]]:
        """Like predict, yielding each batch's predictions as soon as it is done (for progress bars)."""
        from edgecxr.runtime import pipeline

        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        items = _as_items(inputs)
        workers = pipeline.resolve_workers(workers, len(items))
        if workers == 0:
            for start in range(0, len(items), batch_size):
                yield self._predict_batch(items[start : start + batch_size], start)
            return
        batches = pipeline.prepared_batches(items, self.spec, self.input_rules, batch_size, workers, prefetch)
        try:
            for prepared in batches:
                yield self._run_model(prepared)
        finally:
            batches.close()  # now, not at garbage collection: cancels the decodes ahead, joins the pool

    def _predict_batch(self, items: list[Any], offset: int) -> list[Prediction]:
        prepared = [prepare(item, offset + i, self.spec, self.input_rules) for i, item in enumerate(items)]
        return self._run_model(prepared)

    def _run_model(self, prepared: list[tuple[Prediction, np.ndarray | None]]) -> list[Prediction]:
        """Run the model once on the inputs that passed decoding and the input checks; fill their Predictions."""
        preds = [p for p, _ in prepared]
        good = [i for i, (_, t) in enumerate(prepared) if t is not None]
        tensors = [prepared[i][1] for i in good]
        if not good:
            return preds
        t0 = time.perf_counter()
        outputs = self.runner.infer_outputs(np.stack(tensors))
        per_image = (time.perf_counter() - t0) * 1e3 / len(good)
        probs, scores, threshold = self.confidence.apply(outputs, str(self.backend_info.get("precision")))
        picked = probs.argmax(axis=1)  # the calibrated argmax: a label never disagrees with its probabilities
        if probs.ndim != 2 or probs.shape != (len(good), len(self.classes)):
            raise BundleError(
                f"model returned shape {probs.shape}, expected ({len(good)}, {len(self.classes)}) for classes {self.classes}"
            )
        for row, i, k in zip(probs, good, picked, strict=True):
            p = preds[i]
            p.inference_ms = per_image
            if not np.isfinite(row).all():
                # a NaN row has no argmax worth reporting (np.argmax says "the first class"): this
                # input fails, the batch goes on, and the CLI counts it as failed (exit code 1)
                p.error = NOT_FINITE
                continue
            k = int(k)
            p.label = self.classes[k]
            p.top1 = float(row[k])
            p.probabilities = {c: float(v) for c, v in zip(self.classes, row, strict=True)}
        if scores is not None:
            for score, i in zip(scores, good, strict=True):
                p = preds[i]
                p.ood_score = float(score)
                if p.error is None and threshold is not None and not score <= threshold:  # NaN abstains too
                    p.status = "abstained"
                    p.reason = (f"unlike the X-rays the model was trained on (OOD score {score:.3g} > "
                                f"threshold {threshold:.3g})")
        return preds

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe_confidence(confidence: Confidence, runner: Any, precision: str) -> str:
    """One line for backend_info: what happens to the model's outputs after it ran."""
    parts = []
    if confidence.calibrator.kind != "none":
        parts.append(confidence.calibrator.describe())
    ood = confidence.ood
    if ood is not None:
        names = runner.output_names()
        if ood.needs_features and names is not None and FEATURES not in names:
            return (f"OOD not applied: the {ood.method} score needs the model's '{FEATURES}' output and "
                    f"{Path(str(runner.path)).name} has none (run `edgecxr confidence` on its bundle)")
        parts.append(f"OOD {ood.method} <= {ood.threshold(precision):.4g}")
    return ", ".join(parts) or "no temperature or OOD fit"


def _as_items(inputs: Any) -> list[Any]:
    """A single input -> [it]; a list of inputs or an (N, H, W[, C]) stack -> list.

    bytes and a pydicom Dataset are one input each, though both are iterable. An array is one
    image when it is HxW or HxWxC (C <= 4), a stack of images when it is NxHxW or NxHxWxC.

    Raises:
        ArgumentError (a ValueError): an array with fewer than 2 or more than 4 dimensions, or a
            list of plain numbers: iterating them would give one "prediction" per value.
        TypeError: not an input at all.
    """
    import numbers

    from edgecxr.core.errors import ArgumentError
    from edgecxr.runtime.inputs import kind_of

    if kind_of(inputs) in ("path", "bytes", "dataset"):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        if not 2 <= inputs.ndim <= 4:
            raise ArgumentError(f"an array of shape {inputs.shape} is no image: give one HxW or HxWxC (C = 1, 3 "
                                "or 4) array, an NxHxW[xC] stack, or a list of inputs")
        return [inputs] if inputs.ndim in (2, 3) and not (inputs.ndim == 3 and inputs.shape[2] > 4) else list(inputs)
    if isinstance(inputs, Iterable):
        items = list(inputs)
        if items and all(isinstance(i, (numbers.Number, np.generic)) for i in items):
            raise ArgumentError(f"a list of {len(items)} numbers is no image: give paths, bytes, pydicom Datasets "
                                "or HxW / HxWxC arrays (np.asarray a nested list first)")
        return items
    raise TypeError(f"expected paths, bytes, pydicom Datasets or arrays, got {type(inputs).__name__}")
