"""`edgecxr confidence`: fit temperature scaling and the OOD score of a bundle, and measure them.

What is chosen where (nothing on `test`):
- the model's `features` output is added to every ONNX artifact that lacks it (probabilities
  checked unchanged on `val` images, new sha256 recorded);
- the temperature is fitted on `val` (NLL), with ECE before and after on `val`;
- the OOD score's statistics come from `train` (class means, covariance); the method
  (Mahalanobis, energy, max-softmax) is the one with the highest AUROC of `val` against the
  built-in OOD set (stages/confidence/ood_set.py, inverted/rotated kinds made from `val`);
- the threshold is set per precision on `val` so that about 99% of its images pass.
`test` is read only with `report_split="test"`, after everything is fixed, for the report.
"""

from __future__ import annotations

import datetime as _dt
import logging
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
from edgecxr.runtime.confidence import FILE, SECTION, OodScore, save_arrays
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


def fit_confidence(bundle_dir: str | Path, manifest: str | Path, train_manifest: str | Path | None = None,
                   batch_size: int = 16, per_kind: int = 8, progress: bool = True) -> dict[str, Any]:
    """Fit and record the temperature and the OOD score in bundle.json["confidence"]; returns the report."""
    bundle = Bundle.load(bundle_dir)
    spec, classes = bundle.spec, bundle.classes
    val_recs = select(read_manifest(manifest), "val")
    train_recs = select(read_manifest(train_manifest or manifest), "train")
    if not val_recs or not train_recs:
        raise BundleError(f"{manifest}: the fit needs a train and a val split")
    x_val, y_val = load_arrays(val_recs, spec, classes, progress="loading val" if progress else False)
    added = ensure_features(bundle, x_val[:16])
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

    # 1. temperature on val
    p_val, f_val = val_out[ref]
    temperature = fit.fit_temperature(p_val, y_val)
    from edgecxr.runtime.confidence import apply_temperature

    cal_before = fit.reliability(p_val, y_val)
    cal_after = fit.reliability(apply_temperature(p_val, temperature), y_val)

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
        "temperature": {"value": round(temperature, 6), "fitted_on": "val", "n": len(y_val), "artifact": ref,
                        "nll_before": fit.nll(p_val, y_val),
                        "nll_after": fit.nll(apply_temperature(p_val, temperature), y_val),
                        "ece_before": cal_before["ece"], "ece_after": cal_after["ece"]},
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
