"""Calibrated probabilities and out-of-distribution abstention, applied the same way by every backend.

Why here, after the model and not in it: the two fits (`edgecxr confidence`, stages/confidence)
are made after training, on held-out data, and must not change the model file the accuracy gate
verified. Every backend returns the same two outputs (probabilities, and the penultimate
`features` that stages/export/features.py exposes in the ONNX graph and therefore in every
TensorRT engine built from it); this module turns them into the answer:

1. **Temperature scaling** (Guo et al. 2017): p_T = softmax(log p / T), one scalar T fitted on
   `val` by negative log-likelihood. The argmax, hence the label and the accuracy, never changes;
   only how sure the answer says it is.
2. **OOD score**: the Mahalanobis distance of the features to the nearest class mean under one
   shared covariance fitted on `train` (Lee et al. 2018), or the energy score -logsumexp(logits)
   (Liu et al. 2020), or 1 - max softmax, whichever separated the out-of-distribution set best
   (the fit records the comparison). Higher means less like the training X-rays. An input whose
   score exceeds the threshold (the split-conformal rank of the `val` scores, so at least 99% of
   in-distribution images pass; one per precision, since INT8 features differ slightly) gets
   status "abstained".

The fitted arrays live in the bundle's `confidence.npz`, whose sha256 bundle.json records and
`load` checks, like every model file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.errors import BundleError

#: bundle.json section and file
SECTION = "confidence"
FILE = "confidence.npz"
METHODS = ("mahalanobis", "energy", "msp")
#: smallest probability taken to the log (FP16/INT8 softmax can round a tiny probability to 0)
_TINY = 1e-30


def apply_temperature(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """softmax(log p / T) row-wise; T None or 1 returns `probs` unchanged."""
    if temperature is None or temperature == 1.0:
        return probs
    z = np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, None)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class OodScore:
    """One fitted OOD score: how to compute it from an inference's outputs, and where to cut."""

    method: str
    thresholds: dict[str, float]
    means: np.ndarray | None = None  # (C, D) class means of the train features (mahalanobis)
    whiten: np.ndarray | None = None  # (D, D): d^2 = ||(f - mu) @ whiten||^2
    weight: np.ndarray | None = None  # (D, C) logits layer (energy)
    bias: np.ndarray | None = None  # (C,)

    @property
    def needs_features(self) -> bool:
        return self.method in ("mahalanobis", "energy")

    def score(self, probs: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """Score per row; higher = less like the training data."""
        if self.method == "msp":
            return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)
        if features is None:
            raise BundleError(f"the {self.method} OOD score needs the model's 'features' output")
        f = np.asarray(features, dtype=np.float64)
        if self.method == "energy":
            logits = f @ self.weight + self.bias
            top = logits.max(axis=1, keepdims=True)
            return -(top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))
        d2 = np.stack([(((f - mu) @ self.whiten) ** 2).sum(axis=1) for mu in self.means], axis=1)
        return np.sqrt(d2.min(axis=1))

    def threshold(self, precision: str) -> float | None:
        """The cut for this precision's features; the FP32/FP16 one where a precision has none."""
        for key in (precision, "fp32", "fp16"):
            if key in self.thresholds:
                return float(self.thresholds[key])
        return None

    def arrays(self) -> dict[str, np.ndarray]:
        names = ("means", "whiten", "weight", "bias")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True)
class Confidence:
    """What a bundle's `confidence` section says to do with the model's outputs."""

    temperature: float | None = None
    ood: OodScore | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def none(cls) -> Confidence:
        return cls()

    @classmethod
    def from_bundle(cls, bundle: Any) -> Confidence:
        """Read and check the bundle's section and file; `none()` for a bundle without a fit."""
        section = bundle.meta.get(SECTION)
        if not section:
            return cls.none()
        where = f"{bundle.path} ({SECTION})"
        if not isinstance(section, dict):
            raise BundleError(f"{where}: expected a table")
        temp = (section.get("temperature") or {}).get("value")
        if temp is not None and (not isinstance(temp, (int, float)) or not 0.05 <= float(temp) <= 20):
            raise BundleError(f"{where}: temperature {temp!r} is not a number in [0.05, 20]")
        ood = None
        spec = section.get("ood")
        if spec:
            method = spec.get("method")
            if method not in METHODS:
                raise BundleError(f"{where}: unknown OOD method {method!r}; known: {', '.join(METHODS)}")
            thresholds = spec.get("thresholds") or {}
            if not thresholds or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in thresholds.values()):
                raise BundleError(f"{where}: OOD thresholds missing or not finite")
            arrays = _read_arrays(bundle, spec, where) if method != "msp" else {}
            ood = OodScore(method, {str(k): float(v) for k, v in thresholds.items()}, **arrays)
            _check_shapes(ood, where)
        return cls(None if temp is None else float(temp), ood, dict(section))

    def apply(self, outputs: dict[str, np.ndarray], precision: str) -> tuple[np.ndarray, np.ndarray | None, float | None]:
        """(calibrated probabilities, OOD score per row or None, threshold or None) for one batch."""
        from edgecxr.runtime.base import FEATURES, PROBABILITIES

        raw = outputs[PROBABILITIES]
        probs = apply_temperature(raw, self.temperature)
        if self.ood is None:
            return probs, None, None
        features = outputs.get(FEATURES)
        if self.ood.needs_features and features is None:
            return probs, None, None
        return probs, self.ood.score(raw, features), self.ood.threshold(precision)


def save_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of confidence.npz (no pickle: np.load reads it with allow_pickle=False)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
    return buf.getvalue()


def _read_arrays(bundle: Any, spec: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    from edgecxr.core.fileutil import sha256_file

    rel = spec.get("file") or FILE
    path: Path = bundle.inside(rel, f"{SECTION}.ood.file")
    if not path.is_file():
        raise BundleError(f"{where}: {path.name} is missing")
    want = spec.get("sha256")
    if want and sha256_file(path) != want:
        raise BundleError(f"{path}: sha256 differs from the one bundle.json records; refusing to use it")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k], dtype=np.float64) for k in data.files}
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot read the OOD fit: {exc}") from exc


def _check_shapes(ood: OodScore, where: str) -> None:
    if ood.method == "mahalanobis":
        if ood.means is None or ood.whiten is None or ood.means.ndim != 2 or ood.whiten.shape != (ood.means.shape[1],) * 2:
            raise BundleError(f"{where}: the Mahalanobis fit needs means (C, D) and whiten (D, D)")
    if ood.method == "energy":
        if ood.weight is None or ood.bias is None or ood.weight.ndim != 2 or ood.bias.shape != (ood.weight.shape[1],):
            raise BundleError(f"{where}: the energy fit needs weight (D, C) and bias (C,)")
