"""Evaluate one artifact of a bundle on one manifest split, and record the result in the bundle.

The images go through `edgecxr.data.dataset.load_arrays` with the bundle's own preprocessing
spec, and the model through the runner registry, so an evaluation of `model.keras` and one of
`model.int8.onnx` differ only in the artifact. TensorFlow is imported only when the Keras runner
loads (never by importing this module).

Writes into the bundle:
  evaluation-<split>.json            (keras artifact) full metrics, per-image probabilities, provenance
  evaluation-<split>-<artifact>.json (any other artifact), so an INT8 run never overwrites the reference
  confusion-<split>[-<artifact>].png confusion matrix figure (skipped with a warning without matplotlib)
  reliability-<tag>.png, roc-<tag>.png reliability diagram (raw and temperature-scaled probabilities)
                                     and per-class ROC curves; ECE before/after under "calibration"
  bundle.json: evaluations[<split> or <split>-<artifact>] = short summary
"""

from __future__ import annotations

import datetime as _dt
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.artifacts import backend_for
from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError, DataError, MissingDependencyError
from edgecxr.core.fileutil import sha256_file, write_json
from edgecxr.core.version import __version__
from edgecxr.data.dataset import load_arrays
from edgecxr.data.manifest import SPLITS, manifest_sha256, read_manifest, select
from edgecxr.runtime.base import infer_in_batches
from edgecxr.stages.metrics import evaluate_predictions

log = logging.getLogger(__name__)


def resolve_backend(backend: str, artifact_path: Path) -> str:
    """The runner for an artifact file; "auto" picks by file suffix.

    An explicit backend that cannot read the file is an error rather than a silent switch
    (STYLE.md: never downgrade silently).
    """
    by_suffix = backend_for(artifact_path)
    if backend not in ("auto", by_suffix):
        raise BundleError(f"backend {backend!r} cannot read {artifact_path.name}; {by_suffix} reads it (or use auto)")
    return by_suffix


def evaluate_bundle(
    bundle_dir: str | Path,
    manifest: str | Path,
    split: str = "test",
    *,
    backend: str = "keras",
    artifact: str | None = None,
    batch_size: int = 16,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a bundle artifact on a manifest split; write the JSON + figure and a bundle.json summary.

    Args:
        bundle_dir: the bundle directory (or its bundle.json).
        manifest: manifest CSV; labels are mapped into the bundle's classes (3-class merges pneumonia).
        split: one of train/val/calib/test. "train" is allowed but warns: training accuracy says
            nothing about generalisation.
        backend: runner name ("keras", "onnxruntime", ...), or "auto" to choose from the artifact's
            file suffix.
        artifact: bundle artifact key (keras, onnx_fp32, onnx_fp16, onnx_int8); default "keras" for
            the keras backend, else onnx_fp32.
        batch_size: inference batch size.
        bootstrap, seed: see `edgecxr.metrics.evaluate_predictions`.
        progress: show progress bars.

    Returns:
        The `evaluate_predictions` dict plus "provenance" and "predictions" (per image).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if split == "train":
        warnings.warn(
            "evaluating on the training split: these numbers measure fit, not generalisation",
            UserWarning,
            stacklevel=2,
        )
    bundle = Bundle.load(bundle_dir)
    if artifact is None:
        artifact = "keras" if backend in ("keras", "auto") else "onnx_fp32"
    model_path = bundle.artifact(artifact)
    if model_path is None:  # pragma: no cover - artifact(must_exist=True) raises first
        raise BundleError(f"{bundle.dir}: no {artifact} artifact")
    backend = resolve_backend(backend, model_path)

    manifest = Path(manifest)
    records = select(read_manifest(manifest), split)
    classes = bundle.classes
    spec = bundle.spec
    x, y = load_arrays(
        records, spec, classes, progress=f"loading {split} ({len(records)} images)" if progress else False
    )

    from edgecxr.runtime.backends import create_runner

    with create_runner(backend, model_path) as runner:
        probs = infer_in_batches(runner.infer, x, batch_size=batch_size, progress=progress)
        described = runner.describe()
    if probs.shape != (len(records), len(classes)):
        raise BundleError(
            f"{model_path}: model returned shape {probs.shape}, expected ({len(records)}, {len(classes)}) "
            f"for classes {classes}"
        )

    result = evaluate_predictions(y, probs, classes, bootstrap=bootstrap, seed=seed)
    tag = split if artifact == "keras" else f"{split}-{artifact}"
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    result["provenance"] = {
        "bundle": str(bundle.dir),
        "model": bundle.model,
        "artifact": artifact,
        "artifact_path": str(model_path),
        "artifact_sha256": sha256_file(model_path),
        "backend": described,
        "split": split,
        "manifest": str(manifest),
        "manifest_sha256": manifest_sha256(manifest),
        "preprocess": spec.to_dict(),
        "preprocess_id": spec.id,
        "batch_size": batch_size,
        "edgecxr_version": __version__,
        "created": created,
    }
    pred = np.argmax(probs, axis=1)
    result["predictions"] = [
        {
            "path": rec.relative_path,
            "label": classes[int(t)],
            "predicted": classes[int(p)],
            "probs": [round(float(v), 6) for v in row],
        }
        for rec, t, p, row in zip(records, y, pred, probs, strict=True)
    ]

    from edgecxr.runtime.confidence import Confidence
    from edgecxr.stages.confidence.report import calibration_report

    calibration = calibration_report(probs, y, classes, Confidence.from_bundle(bundle).calibrator, bundle.dir, tag,
                                     f"{bundle.model} {artifact}, {split}")
    if "figure_error" in calibration:
        warnings.warn(f"calibration figures skipped: {calibration['figure_error']}", UserWarning, stacklevel=2)
    result["calibration"] = calibration
    json_path = write_json(bundle.dir / f"evaluation-{tag}.json", result)
    figure = _confusion_figure(result, bundle, tag, split, artifact)
    summary = {
        "n": result["n"],
        "accuracy": result["accuracy"],
        "accuracy_ci95": result["accuracy_ci95"],
        "macro_f1": result["macro_f1"],
        "macro_auc": result["macro_auc"],
        "macro_auc_ci95": result["macro_auc_ci95"],
        "artifact": artifact,
        "backend": described.get("backend", backend),
        "manifest_sha256": result["provenance"]["manifest_sha256"],
        "file": json_path.name,
        "figure": figure.name if figure else None,
        "ece": calibration["ece_before"],
        "ece_calibrated": calibration.get("ece_after"),
        "created": created,
    }
    if "covid_vs_rest" in result:
        cv = result["covid_vs_rest"]
        summary["covid_sensitivity"] = cv["sensitivity"]
        summary["covid_specificity"] = cv["specificity"]
    if "non_covid_only" in result:
        summary["non_covid_accuracy"] = result["non_covid_only"]["accuracy"]
    evaluations = dict(bundle.meta.get("evaluations", {}))
    evaluations[tag] = summary
    bundle.update(evaluations=evaluations)
    result["files"] = {"json": str(json_path), "figure": str(figure) if figure else None,
                       **{k: calibration[f"{k}_figure"] for k in ("reliability", "roc") if f"{k}_figure" in calibration}}
    log.info("evaluation written to %s", json_path)
    return result


def _confusion_figure(
    result: dict[str, Any], bundle: Bundle, tag: str, split: str, artifact: str
) -> Path | None:
    """Draw the confusion matrix; a missing matplotlib costs the figure, not the evaluation."""
    from edgecxr.stages.plots import plot_confusion

    title = f"{bundle.model} {artifact}, {split} split"
    try:
        return plot_confusion(
            result["confusion_matrix"], result["classes"], bundle.dir / f"confusion-{tag}.png", title
        )
    except MissingDependencyError as exc:
        warnings.warn(f"confusion matrix figure skipped: {exc}", UserWarning, stacklevel=3)
        return None
