"""Calibrated probabilities and out-of-distribution abstention, applied the same way by every backend.

Why here, after the model and not in it: the two fits (`edgecxr confidence`, stages/confidence)
are made after training, on held-out data, and must not change the model file the accuracy gate
verified. Every backend returns the same two outputs (probabilities, and the penultimate
`features` that stages/export/features.py exposes in the ONNX graph and therefore in every
TensorRT engine built from it); this module turns them into the answer:

1. **A probability calibrator** (`Calibrator`): q = softmax(W log p + b), fitted on held-out
   labelled images by negative log-likelihood, one of four kinds chosen by cross-validated ECE
   (stages/confidence/calibrate.py): `none` (q = p), `temperature` (W = I / T, b = 0; Guo et al.
   2017), `vector` (W diagonal, b free) and `dirichlet` (W full, b free; Kull et al. 2019). The
   label is always the argmax of the model's own probabilities, the one the accuracy gate verified:
   a calibrator changes how sure the answer says it is, never which answer it is (temperature
   cannot move the argmax; vector and Dirichlet can, so the label is taken before them and the
   reported probability is the calibrated probability of that label). A bundle written before
   the calibrator section, with only `confidence.temperature`, still loads as a temperature one.
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
#: the calibrator kinds, from fewest to most parameters
KINDS = ("none", "temperature", "vector", "dirichlet")
#: the range a temperature (and 1 / a vector scale) may take: beyond it a fit has gone wrong
T_RANGE = (0.05, 20.0)
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


def log_probs(probs: np.ndarray) -> np.ndarray:
    """log p with the floor every calibrator uses (an FP16/INT8 softmax can round a probability to 0)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), _TINY, None))


@dataclass(frozen=True)
class Calibrator:
    """q = softmax(log p @ weights.T + bias), in the form its kind fixes; `none` leaves p as it is."""

    kind: str = "none"
    temperature: float | None = None  # temperature
    scale: np.ndarray | None = None  # (C,) vector
    weights: np.ndarray | None = None  # (C, C) dirichlet
    bias: np.ndarray | None = None  # (C,) vector, dirichlet

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, row-wise; `none` returns `probs` itself."""
        if self.kind == "none":
            return probs
        if self.kind == "temperature":
            return apply_temperature(probs, self.temperature)
        z = log_probs(probs)
        z = z * self.scale if self.kind == "vector" else z @ self.weights.T
        z = z + self.bias
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    def params(self) -> dict[str, Any]:
        """The parameters as bundle.json stores them (what `from_section` reads back)."""
        if self.kind == "temperature":
            return {"kind": self.kind, "temperature": round(float(self.temperature), 6)}
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "vector":
            out["scale"] = [round(float(v), 6) for v in self.scale]
        if self.kind == "dirichlet":
            out["weights"] = [[round(float(v), 6) for v in row] for row in self.weights]
        if self.bias is not None:
            out["bias"] = [round(float(v), 6) for v in self.bias]
        return out

    def describe(self) -> str:
        """One line for backend_info and the audit trail."""
        if self.kind == "temperature":
            return f"temperature {self.temperature:.3f}"
        return "no calibrator" if self.kind == "none" else f"{self.kind} calibrator"

    @classmethod
    def from_section(cls, spec: Any, n_classes: int | None, where: str) -> Calibrator:
        """Check and read bundle.json's confidence.calibrator; one-line BundleError on anything malformed."""
        if not isinstance(spec, dict):
            raise BundleError(f"{where}: calibrator must be a table, not {type(spec).__name__}")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise BundleError(f"{where}: unknown calibrator kind {kind!r}; known: {', '.join(KINDS)}")
        if kind == "none":
            return cls()
        if kind == "temperature":
            return cls(kind, temperature=_temperature(spec.get("temperature"), where))
        need = {"vector": ("scale", "bias"), "dirichlet": ("weights", "bias")}[kind]
        arrays = {name: _numbers(spec.get(name), f"{where}: {kind} calibrator {name}") for name in need}
        c = len(arrays["bias"])
        shapes = {"scale": (c,), "weights": (c, c), "bias": (c,)}
        for name, arr in arrays.items():
            if arr.shape != shapes[name] or (n_classes is not None and c != n_classes):
                want = shapes[name] if n_classes is None else tuple(n_classes for _ in shapes[name])
                raise BundleError(f"{where}: {kind} calibrator {name} has shape {arr.shape}, expected {want}")
        if kind == "vector" and not np.all((arrays["scale"] >= 1 / T_RANGE[1]) & (arrays["scale"] <= 1 / T_RANGE[0])):
            raise BundleError(f"{where}: vector calibrator scale outside [{1 / T_RANGE[1]:g}, {1 / T_RANGE[0]:g}]")
        return cls(kind, **arrays)


def _temperature(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not T_RANGE[0] <= float(value) <= T_RANGE[1]:
        raise BundleError(f"{where}: temperature {value!r} is not a number in [{T_RANGE[0]:g}, {T_RANGE[1]:g}]")
    return float(value)


def _numbers(value: Any, what: str) -> np.ndarray:
    """A JSON list (of lists) of finite numbers as an array; one-line BundleError otherwise."""
    try:
        if isinstance(value, (str, bytes, dict)) or value is None:
            raise TypeError
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise BundleError(f"{what}: expected a list of numbers, got {str(value)[:40]!r}") from None
    if arr.ndim == 0 or arr.size == 0 or not np.isfinite(arr).all():
        raise BundleError(f"{what}: expected a non-empty list of finite numbers, got {str(value)[:40]!r}")
    return arr


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

    calibrator: Calibrator = field(default_factory=Calibrator)
    ood: OodScore | None = None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def temperature(self) -> float | None:
        """T when the calibrator is a temperature (the audit trail's field), else None."""
        return self.calibrator.temperature if self.calibrator.kind == "temperature" else None

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
        calibrator = _calibrator(section, bundle, where)
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
        return cls(calibrator, ood, dict(section))

    def apply(self, outputs: dict[str, np.ndarray], precision: str) -> tuple[np.ndarray, np.ndarray | None, float | None]:
        """(calibrated probabilities, OOD score per row or None, threshold or None) for one batch.

        The label is the argmax of the calibrated probabilities (stages/confidence/calibrate.py says
        why), so a label and its probabilities never disagree.
        """
        from edgecxr.runtime.base import FEATURES, PROBABILITIES

        raw = outputs[PROBABILITIES]
        probs = self.calibrator.apply(raw)
        if self.ood is None:
            return probs, None, None
        features = outputs.get(FEATURES)
        if self.ood.needs_features and features is None:
            return probs, None, None
        return probs, self.ood.score(raw, features), self.ood.threshold(precision)


def _calibrator(section: dict[str, Any], bundle: Any, where: str) -> Calibrator:
    """confidence.calibrator, or a bundle from before it: confidence.temperature.value; both is ambiguous."""
    spec, old = section.get("calibrator"), section.get("temperature")
    classes = getattr(bundle, "classes", None)
    n_classes = len(classes) if isinstance(classes, (list, tuple)) and classes else None
    if spec is not None:
        if old is not None:
            raise BundleError(f"{where}: both 'calibrator' and the older 'temperature' are set; keep one")
        return Calibrator.from_section(spec, n_classes, where)
    if old is None:
        return Calibrator()
    if not isinstance(old, dict):
        raise BundleError(f"{where}: temperature must be a table with a 'value'")
    if old.get("value") is None:
        return Calibrator()
    return Calibrator("temperature", temperature=_temperature(old.get("value"), where))


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
