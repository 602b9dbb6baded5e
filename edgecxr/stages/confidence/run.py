"""`edgecxr confidence`: fit the probability calibrator and the OOD score of a bundle, and measure them.

What is chosen where (nothing on `test`):
- the model's `features` output is added to every ONNX artifact that lacks it (probabilities
  checked unchanged on `val` images, new sha256 recorded);
- the probability calibrator (none, temperature, vector or Dirichlet; stages/confidence/calibrate.py)
  is fitted on `val` + `calib` by NLL, the kind chosen by 5-fold cross-validated ECE on that pool
  (`calib`'s labels are free to use: INT8 calibration reads only its pixels, for activation ranges);
- the OOD score's statistics come from `train` (class means, covariance); the method
  (Mahalanobis, energy, max-softmax) is the one with the highest AUROC of `val` against the
  built-in OOD set (stages/confidence/ood_set.py, inverted/rotated kinds made from `val`);
- the threshold is set per precision on `val` so that about 99% of its images pass.
`test` is read only with `report_split="test"`, after everything is fixed, for the report.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError
from edgecxr.core.fileutil import atomic_write_bytes, sha256_file
from edgecxr.core.spec import preprocess
from edgecxr.data.dataset import load_arrays
from edgecxr.data.manifest import read_manifest, select
from edgecxr.runtime.base import FEATURES, PROBABILITIES
from edgecxr.runtime.confidence import FILE, SECTION, Calibrator, OodScore, save_arrays
from edgecxr.runtime.input_checks import DEFAULT_RULES
from edgecxr.runtime.onnxrt import session_options
from edgecxr.stages.confidence import fit, ood_set

log = logging.getLogger(__name__)

#: ONNX artifacts the fit serves, reference first (the one the statistics come from)
ONNX_KEYS = ("onnx_fp32", "onnx_fp16", "onnx_int8")
PRECISION = {"onnx_fp32": "fp32", "onnx_fp16": "fp16", "onnx_int8": "int8"}


def outputs_of(path: Path, x: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, features) of an ONNX file on preprocessed images, in batches."""
    from edgecxr.runtime.backends import create_runner

    probs, feats = [], []
    with create_runner("onnxruntime", path) as runner:
        for i in range(0, len(x), batch_size):
            out = runner.infer_outputs(x[i : i + batch_size])
            if FEATURES not in out:
                raise BundleError(f"{path}: no '{FEATURES}' output (add_features_output first)")
            probs.append(out[PROBABILITIES])
            feats.append(out[FEATURES])
    return np.concatenate(probs), np.concatenate(feats)


def ensure_features(bundle: Bundle, check: np.ndarray) -> dict[str, Any]:
    """Add the `features` output to each ONNX artifact lacking it; probabilities must not move.

    `check` is a few preprocessed `val` images: the new file's probabilities must equal the old
    file's (max |diff| <= 1e-5), or nothing is replaced. Returns what was done per artifact.
    """
    import onnx

    from edgecxr.stages.export.features import add_features_output, has_features

    done: dict[str, Any] = {}
    for key in ONNX_KEYS:
        path = bundle.artifact(key, must_exist=False)
        if path is None:
            continue
        model = onnx.load(str(path))
        if has_features(model):
            continue
        old_sha = sha256_file(path)
        before = _probs(path.read_bytes(), check)
        model, info = add_features_output(model)
        data = model.SerializeToString()
        diff = float(np.abs(_probs(data, check) - before).max())
        if diff > 1e-5:
            raise BundleError(f"{path}: adding the features output changed the probabilities (max |diff| {diff:.2g})")
        atomic_write_bytes(path, data)
        bundle.set_artifact(key, path)
        done[key] = {**info, "previous_sha256": old_sha, "sha256": sha256_file(path), "images_checked": len(check),
                     "probs_max_abs_diff": diff}
    return done


def _probs(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, sess_options=session_options(), providers=["CPUExecutionProvider"])
    return session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: x})[0]


#: the labelled splits the probability calibrator is fitted on (those present in the manifest)
CALIBRATOR_POOL = ("val", "calib")


def calibrator_section(probs: np.ndarray, y: np.ndarray, kind: str = "auto", splits: Sequence[str] = ("val",),
                       artifact: str = "", seed: int = 0) -> dict[str, Any]:
    """bundle.json's confidence.calibrator: the fitted parameters plus how they were chosen.

    `kind` "auto" picks by cross-validated ECE on (probs, y) (calibrate.cross_validate; the table is
    recorded either way, so a forced kind shows what auto would have said).
    """
    from edgecxr.stages.confidence import calibrate

    choice = calibrate.cross_validate(probs, y, seed=seed)
    chosen = choice.kind if kind == "auto" else kind
    cal, inner = calibrate.fit_calibrator(chosen, probs, y, seed=seed)
    try:  # what load will check: refuse to record a fit the runtime would refuse
        Calibrator.from_section(cal.params(), probs.shape[1], "fit")
    except BundleError as exc:
        raise BundleError(f"the {chosen} calibrator fitted on {len(y)} images is out of range ({exc}); "
                          "use more images or --calibrator temperature / none") from None
    after = cal.apply(probs)
    return {
        **cal.params(),
        "label": "argmax of the calibrated probabilities",
        "fitted_on": list(splits), "n": int(len(y)), "artifact": artifact,
        "chosen_by": "cross-validated ECE" if kind == "auto" else "--calibrator option",
        "cv": {"folds": calibrate.CV_FOLDS, "repeats": calibrate.CV_REPEATS, "rule": choice.rule,
               "choice": choice.kind,
               "table": {k: {m: round(v, 5) for m, v in row.items()} for k, row in choice.table.items()}},
        **({"fit": inner} if inner else {}),
        "ece_before": calibrate.ece(probs, probs, y), "ece_after": calibrate.ece(probs, after, y),
        "nll_before": fit.nll(probs, y), "nll_after": fit.nll(after, y),
    }


def pool_outputs(bundle: Bundle, manifest: str | Path, artifact: str, batch_size: int = 16,
                 progress: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(probabilities, labels, splits) of `artifact` on the calibrator's pool (CALIBRATOR_POOL)."""
    records = read_manifest(manifest)
    probs, ys, used = [], [], []
    for split in CALIBRATOR_POOL:
        recs = select(records, split)
        if not recs:
            continue
        x, y = load_arrays(recs, bundle.spec, bundle.classes, progress=f"loading {split}" if progress else False)
        probs.append(outputs_of(bundle.artifact(artifact), x, batch_size)[0])
        ys.append(y)
        used.append(split)
    if not used:
        raise BundleError(f"{manifest}: no {' or '.join(CALIBRATOR_POOL)} split to fit the calibrator on")
    return np.concatenate(probs), np.concatenate(ys), used


def record_calibrator(bundle_dir: str | Path, manifest: str | Path, kind: str = "auto", artifact: str | None = None,
                      batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """Refit only confidence.calibrator of a bundle whose confidence fit exists; nothing else moves."""
    bundle = Bundle.load(bundle_dir)
    section = dict(bundle.meta.get(SECTION) or {})
    if not section:
        raise BundleError(f"{bundle.dir}: no confidence fit; run `edgecxr confidence` first")
    old = section.get("calibrator") or section.get("temperature") or {}
    artifact = artifact or old.get("artifact") or next(
        k for k in ONNX_KEYS if bundle.artifact(k, must_exist=False) is not None)
    probs, y, splits = pool_outputs(bundle, manifest, artifact, batch_size, progress)
    section.pop("temperature", None)
    section["calibrator"] = calibrator_section(probs, y, kind, splits, artifact)
    bundle.update(**{SECTION: section})
    return section["calibrator"]


def fit_confidence(bundle_dir: str | Path, manifest: str | Path, train_manifest: str | Path | None = None,
                   batch_size: int = 16, per_kind: int = 8, progress: bool = True,
                   calibrator: str = "auto") -> dict[str, Any]:
    """Fit and record the calibrator and the OOD score in bundle.json["confidence"]; returns the report."""
    bundle = Bundle.load(bundle_dir)
    spec, classes = bundle.spec, bundle.classes
    val_recs = select(read_manifest(manifest), "val")
    train_recs = select(read_manifest(train_manifest or manifest), "train")
    if not val_recs or not train_recs:
        raise BundleError(f"{manifest}: the fit needs a train and a val split")
    x_val, y_val = load_arrays(val_recs, spec, classes, progress="loading val" if progress else False)
    added = ensure_features(bundle, x_val[:16])
    if added:  # the new files' sha256 now, so a failure further on leaves a bundle that still loads
        bundle.save()
    keys = [k for k in ONNX_KEYS if bundle.artifact(k, must_exist=False) is not None]
    if not keys:
        raise BundleError(f"{bundle.dir}: no ONNX artifact to fit on (run `edgecxr export` first)")
    ref = keys[0]
    x_tr, y_tr = load_arrays(train_recs, spec, classes, progress="loading train" if progress else False)
    _, f_tr = outputs_of(bundle.artifact(ref), x_tr, batch_size)
    del x_tr
    val_out = {k: outputs_of(bundle.artifact(k), x_val, batch_size) for k in keys}
    items = ood_set.from_records(val_recs, per_kind=per_kind)
    x_ood = np.stack([preprocess(it.image, spec) for it in items])
    ood_out = {k: outputs_of(bundle.artifact(k), x_ood, batch_size) for k in keys}

    # 1. the probability calibrator on val (+ calib)
    p_val, f_val = val_out[ref]
    p_pool, y_pool, pool = pool_outputs(bundle, manifest, ref, batch_size, progress)
    calibrated = calibrator_section(p_pool, y_pool, calibrator, pool, ref)
    applied = Calibrator.from_section(calibrated, len(classes), SECTION).apply(p_val)
    cal_before = fit.reliability(p_val, y_val)
    cal_after = fit.reliability(applied, y_val, labels=p_val.argmax(axis=1))

    # 2. the OOD score: candidates fitted on train, compared on val vs the OOD set
    import onnx

    from edgecxr.stages.export.features import logits_weights

    w, b = logits_weights(onnx.load(str(bundle.artifact(ref))))
    candidates: dict[str, OodScore] = {
        "mahalanobis": fit.fit_mahalanobis(f_tr, y_tr, len(classes)),
        "energy": fit.energy_score(w, b),
        "msp": fit.msp_score(),
    }
    p_ood, f_ood = ood_out[ref]
    comparison = {name: fit.auroc(c.score(p_val, f_val), c.score(p_ood, f_ood)) for name, c in candidates.items()}
    method = max(comparison, key=lambda n: (comparison[n], n == "mahalanobis"))
    chosen = candidates[method]
    thresholds = {PRECISION[k]: fit.threshold_for(chosen.score(*val_out[k])) for k in keys}

    # 3. record
    arrays = chosen.arrays()
    npz = bundle.dir / FILE
    if arrays:
        atomic_write_bytes(npz, save_arrays(arrays))
    kinds = _per_kind(items, chosen, ood_out[ref], thresholds[PRECISION[ref]], chosen.score(p_val, f_val))
    section = {
        "calibrator": calibrated,
        "ood": {"method": method, "file": FILE if arrays else None, "sha256": sha256_file(npz) if arrays else None,
                "thresholds": {k: _round_up(v) for k, v in thresholds.items()}, "target_pass_rate": fit.TARGET_PASS,
                "statistics_from": {"split": "train", "n": len(y_tr), "artifact": ref,
                                    "manifest": Path(train_manifest or manifest).name},
                "threshold_on": {"split": "val", "n": len(y_val)},
                "auroc_val_vs_ood": {k: round(v, 4) for k, v in comparison.items()},
                "ood_set": {"n": len(items), "kinds": sorted({it.kind for it in items})}},
        "features_output": added or (bundle.meta.get(SECTION) or {}).get("features_output", {}),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    bundle.update(**{SECTION: section})
    val_pass = {PRECISION[k]: float(np.mean(chosen.score(*val_out[k]) <= thresholds[PRECISION[k]])) for k in keys}
    return {"bundle": str(bundle.dir), "section": section, "val_pass_rate": val_pass, "per_kind": kinds,
            "reliability_val": {"before": cal_before, "after": cal_after}}


def _per_kind(items: list[ood_set.OodItem], score: OodScore, outputs: tuple[np.ndarray, np.ndarray],
              threshold: float, val_scores: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per kind of OOD input: AUROC against `val` and abstained by the score alone, rejected by the
    input checks, caught by either (what the product does)."""
    scores = score.score(*outputs)
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(it.kind for it in items):
        idx = [i for i, it in enumerate(items) if it.kind == kind]
        abstain = [bool(scores[i] > threshold) for i in idx]
        rejected = [bool(_rejected(items[i])) for i in idx]
        out[kind] = {"n": len(idx), "auroc": fit.auroc(val_scores, scores[idx]), "abstained": float(np.mean(abstain)), "rejected_by_input_checks": float(np.mean(rejected)),
                     "caught": float(np.mean([a or r for a, r in zip(abstain, rejected, strict=True)]))}
    return out


def _rejected(item: ood_set.OodItem) -> str | None:
    if item.path is not None:
        reason = DEFAULT_RULES.check_file(item.path)
        if reason:
            return reason
    return DEFAULT_RULES.check_pixels(item.image)


def _round_up(value: float, places: int = 6) -> float:
    """Rounded for the record without moving below the image that set it (that image must still pass)."""
    return float(np.ceil(value * 10**places) / 10**places)
