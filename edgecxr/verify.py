"""Accuracy regression gate: every artifact of a bundle against the FP32 reference, same images.

An FP16 or INT8 file (or TensorRT engine) is only worth deploying if it classifies held-out X-rays
like the model that was trained and evaluated. So the gate loads one split once, through the
shared preprocessing (`edgecxr.data.dataset.load_arrays`), runs every artifact this machine can
run through the runner registry, scores all of them with the same metric code
(`edgecxr.metrics`), and compares each with the reference:

  * accuracy drop vs the reference  <= 1.0 percentage point   (max_acc_drop)
  * COVID sensitivity               not lower than the reference (covid_sensitivity_not_lower)
  * top-1 agreement with the reference >= 98%                  (min_agreement)
  * optionally, max |probability difference| <= a per-artifact tolerance (max_prob_diff), e.g.
    1e-4 for ONNX FP32 and 1e-2 for FP16: Polygraphy-style per-precision tolerances.

Reference choice: the Keras model when TensorFlow is installed and the bundle has it (it *is* the
trained and evaluated model, so agreement with it covers the whole export chain); otherwise the
ONNX FP32 file, which `edgecxr export` proved equal to Keras within 1e-4 on held-out images, so on
deployment machines without TensorFlow it stands in for Keras. `reference=` forces either.

Artifacts whose backend cannot run here (TensorRT on a CPU-only box, an engine built for another
GPU) are reported as skipped with the reason, never silently dropped; an artifact that is present
but fails to load or run is a failure. Gates come from defaults, a TOML file and flags, in that
order of precedence (see `Gates.from_toml`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr import __version__
from edgecxr.bundle import ARTIFACTS, Bundle
from edgecxr.data.manifest import Record, map_label
from edgecxr.errors import BackendUnavailableError, BundleError, EdgeCXRError, GateFailedError
from edgecxr.fileutil import atomic_write_text, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

#: What `edgecxr verify` runs by default ("engines" expands to bundle.meta["engines"]).
DEFAULT_ARTIFACTS = ("keras", "onnx_fp32", "onnx_fp16", "onnx_int8", "engines")
#: Backend per artifact file suffix.
SUFFIX_BACKEND = {".keras": "keras", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}
#: Class whose sensitivity must not drop (the papers' screening question).
POSITIVE_CLASS = "covid"
#: How many disagreeing image paths verify.json lists per artifact.
MAX_LISTED_DISAGREEMENTS = 20
_EPS = 1e-9


class GateConfigError(EdgeCXRError):
    """A gates TOML file or gate value is malformed."""


# -- gates ------------------------------------------------------------------------------------------


_GATE_FIELDS = ("max_acc_drop", "min_agreement", "covid_sensitivity_not_lower", "max_prob_diff")


@dataclass(frozen=True)
class Gates:
    """Thresholds of the regression gate.

    Attributes:
        max_acc_drop: largest allowed accuracy drop vs the reference, in percentage points.
        min_agreement: smallest allowed top-1 agreement with the reference (fraction, 0..1).
        covid_sensitivity_not_lower: COVID-vs-rest sensitivity must be >= the reference's.
        max_prob_diff: largest allowed |probability difference| vs the reference (None: not gated).
        overrides: per-artifact replacements, e.g. {"onnx_int8": {"min_agreement": 0.97}}; the key
            "engines" applies to every TensorRT engine ("engine:<name>").
    """

    max_acc_drop: float = 1.0
    min_agreement: float = 0.98
    covid_sensitivity_not_lower: bool = True
    max_prob_diff: float | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_gate_values(self.max_acc_drop, self.min_agreement, self.covid_sensitivity_not_lower, self.max_prob_diff)
        for key, values in self.overrides.items():
            unknown = set(values) - set(_GATE_FIELDS)
            if unknown:
                raise GateConfigError(f"gate overrides for {key!r} have unknown keys {sorted(unknown)}")
            dataclasses.replace(self, overrides={}, **values)  # validates the values

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "gates") -> Gates:
        """Build from a mapping: the gate keys, plus sub-tables of per-artifact overrides."""
        values: dict[str, Any] = {}
        overrides: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                overrides[key] = dict(value)
            elif key in _GATE_FIELDS:
                values[key] = value
            else:
                raise GateConfigError(f"{source}: unknown gate {key!r}; known: {list(_GATE_FIELDS)}")
        try:
            return cls(**values, overrides=overrides)
        except TypeError as exc:
            raise GateConfigError(f"{source}: {exc}") from exc
        except GateConfigError as exc:  # a bad value: name the file it came from
            raise GateConfigError(f"{source}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> Gates:
        """Read a [gates] table (or a file of bare gate keys) from TOML.

        Example::

            [gates]
            max_acc_drop = 1.0                  # percentage points
            min_agreement = 0.98
            covid_sensitivity_not_lower = true

            [gates.onnx_fp16]                   # per-artifact overrides
            max_prob_diff = 1e-2
        """
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            from edgecxr._lazy import require

            tomllib = require("tomli", "reading gates TOML files on Python 3.10")
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise GateConfigError(f"{path}: gates file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise GateConfigError(f"{path}: invalid TOML: {exc}") from exc
        except UnicodeDecodeError:
            raise GateConfigError(f"{path}: not a TOML text file (not UTF-8)") from None
        table = data.get("gates", data)
        if not isinstance(table, Mapping):
            raise GateConfigError(f"{path}: [gates] must be a table")
        return cls.from_mapping(table, str(path))

    def with_values(self, **values: Any) -> Gates:
        """A copy with the given gate values replaced; None values (flags not given) are ignored."""
        given = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **given)

    def for_artifact(self, key: str) -> Gates:
        """The gates that apply to one artifact (its overrides applied)."""
        values: dict[str, Any] = {}
        if key.startswith("engine:"):
            values.update(self.overrides.get("engines", {}))
        values.update(self.overrides.get(key, {}))
        return dataclasses.replace(self, overrides={}, **values) if values else self

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _GATE_FIELDS}
        if self.overrides:
            out["overrides"] = self.overrides
        return out


def _check_gate_values(max_acc_drop: Any, min_agreement: Any, covid: Any, max_prob_diff: Any) -> None:
    if not isinstance(max_acc_drop, int | float) or isinstance(max_acc_drop, bool) or not 0 <= max_acc_drop <= 100:
        raise GateConfigError(f"max_acc_drop must be a number of percentage points in [0, 100], got {max_acc_drop!r}")
    if not isinstance(min_agreement, int | float) or isinstance(min_agreement, bool) or not 0 <= min_agreement <= 1:
        raise GateConfigError(f"min_agreement must be a fraction in [0, 1], got {min_agreement!r}")
    if not isinstance(covid, bool):
        raise GateConfigError(f"covid_sensitivity_not_lower must be true or false, got {covid!r}")
    if max_prob_diff is not None and (
        not isinstance(max_prob_diff, int | float) or isinstance(max_prob_diff, bool) or not 0 <= max_prob_diff <= 1
    ):
        raise GateConfigError(f"max_prob_diff must be in [0, 1] or absent, got {max_prob_diff!r}")


# -- results ----------------------------------------------------------------------------------------


@dataclass
class GateCheck:
    """One gate applied to one artifact."""

    gate: str
    value: float
    threshold: float
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ArtifactResult:
    """How one artifact did: metrics, agreement with the reference and its gate checks."""

    key: str
    path: str | None
    backend: str | None
    status: str  # "ok" | "skipped" | "error"
    reason: str | None = None
    reference: bool = False
    required: bool = False
    metrics: dict[str, Any] | None = None
    agreement: dict[str, Any] | None = None
    checks: list[GateCheck] = field(default_factory=list)
    runner: dict[str, Any] | None = None
    seconds: float | None = None
    disagreements: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool | None:
        """False: failed a gate or could not run (or a required one was skipped); True: passed; None: not gated."""
        if self.status == "error" or (self.status == "skipped" and self.required):
            return False
        if self.status != "ok" or self.reference:
            return None
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        if self.status == "error" or (self.status == "skipped" and self.required):
            return [f"{self.key}: could not be run: {self.reason}"]
        return [f"{self.key}: {c.detail}" for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["checks"] = [c.to_dict() for c in self.checks]
        out["passed"] = self.passed
        return out


@dataclass
class VerifyResult:
    """Outcome of one gate run; `passed` is False when any artifact failed a gate or could not run."""

    bundle: str
    split: str
    manifest: str
    manifest_sha256: str
    n: int
    per_class: dict[str, int]
    reference: str
    gates: Gates
    artifacts: list[ArtifactResult]
    time: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(a.passed is not False for a in self.artifacts)

    @property
    def failures(self) -> list[str]:
        return [f for a in self.artifacts for f in a.failures]

    def get(self, key: str) -> ArtifactResult:
        for a in self.artifacts:
            if a.key == key:
                return a
        raise KeyError(key)

    def raise_for_failures(self, what: str = "") -> None:
        """Raise GateFailedError naming every failing gate (the result is its `.result`), if any failed."""
        if not self.passed:
            prefix = f"{what}: " if what else ""
            err = GateFailedError(f"{prefix}accuracy gate failed on {self.split} (n={self.n}): " + "; ".join(self.failures))
            err.result = self  # type: ignore[attr-defined]
            raise err

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "time": self.time,
            "seconds": self.seconds,
            "edgecxr_version": __version__,
            "data": {
                "manifest": self.manifest,
                "manifest_sha256": self.manifest_sha256,
                "split": self.split,
                "n": self.n,
                "per_class": self.per_class,
            },
            "reference": self.reference,
            "gates": self.gates.to_dict(),
            "passed": self.passed,
            "failures": self.failures,
            "notes": self.notes,
            "artifacts": {a.key: a.to_dict() for a in self.artifacts},
        }

    def summary(self) -> dict[str, Any]:
        """The short form kept in bundle.json["verify"] (verify.json has everything)."""
        arts = {}
        for a in self.artifacts:
            row: dict[str, Any] = {"status": a.status, "passed": a.passed}
            if a.reason:
                row["reason"] = a.reason
            if a.metrics:
                row["accuracy"] = a.metrics["accuracy"]
                cv = a.metrics.get("covid_vs_rest")
                if cv:
                    row["covid_sensitivity"] = cv["sensitivity"]
            if a.agreement:
                row["top1_agreement"] = a.agreement["top1_agreement"]
                row["max_abs_diff"] = a.agreement["max_abs_diff"]
            if a.path:
                row["path"] = a.path
            arts[a.key] = row
        return {
            "time": self.time,
            "split": self.split,
            "n": self.n,
            "manifest_sha256": self.manifest_sha256,
            "reference": self.reference,
            "gates": self.gates.to_dict(),
            "passed": self.passed,
            "failures": self.failures,
            "artifacts": arts,
        }

    def to_markdown(self) -> str:
        return format_markdown(self)


# -- data -------------------------------------------------------------------------------------------


def subset_records(records: Sequence[Record], classes: Sequence[str], limit: int | None) -> list[Record]:
    """`limit` records taken round-robin over classes in manifest order (all when limit is None).

    Deterministic and class-balanced, so a quick run (`--limit`) still sees every class; the
    manifest is sorted by label, so "the first N" would be one class only.
    """
    records = list(records)
    if limit is None or limit >= len(records):
        return records
    if limit < 1:
        raise BundleError(f"limit must be >= 1, got {limit}")
    by_class: dict[str, list[Record]] = {c: [] for c in classes}
    for rec in records:
        by_class[map_label(rec.label, classes)].append(rec)
    queues = [q for q in by_class.values() if q]
    out: list[Record] = []
    i = 0
    while len(out) < limit:
        for q in queues:
            if i < len(q) and len(out) < limit:
                out.append(q[i])
        i += 1
    order = {id(r): k for k, r in enumerate(records)}
    return sorted(out, key=lambda r: order[id(r)])


def load_split(
    bundle: Bundle, manifest: str | Path, split: str, limit: int | None = None, progress: bool = True
) -> tuple[list[Record], np.ndarray, np.ndarray]:
    """(records, X, y) of a split with the bundle's preprocessing and class order."""
    from edgecxr.data.dataset import load_arrays
    from edgecxr.data.manifest import read_manifest, select

    records = subset_records(select(read_manifest(manifest), split), bundle.classes, limit)
    x, y = load_arrays(records, bundle.spec, bundle.classes, progress=f"loading {split}" if progress else False)
    return records, x, y


# -- backends ---------------------------------------------------------------------------------------


def _registry() -> tuple[dict[str, Any], str | None]:
    """Runner classes by name, and why the registry is incomplete (a backend module failed to import)."""
    from edgecxr.runtime import base

    try:
        return base.backends(), None
    except ImportError as exc:  # e.g. edgecxr.runtime.tensorrt absent from this installation
        from edgecxr.runtime.keras_runner import KerasRunner
        from edgecxr.runtime.onnxrt import OnnxRuntimeRunner

        return {"keras": KerasRunner, "onnxruntime": OnnxRuntimeRunner}, f"backend module not importable: {exc}"


def backend_for(path: str | Path) -> str:
    """Runner name for an artifact file, by suffix."""
    suffix = Path(path).suffix.lower()
    try:
        return SUFFIX_BACKEND[suffix]
    except KeyError:
        raise BundleError(f"{path}: no backend runs '{suffix}' files (known: {sorted(SUFFIX_BACKEND)})") from None


def file_key(path: str | Path) -> str:
    """Result key of an artifact given as a file: "engine:<file name>" for TensorRT engines."""
    path = Path(path)
    kind = "engine" if path.suffix.lower() in (".engine", ".plan") else "file"
    return f"{kind}:{path.name}"


def _engine_entries(bundle: Bundle) -> dict[str, Path]:
    """TensorRT engines listed in bundle.meta["engines"] as {"engine:<file name>": path}.

    `edgecxr build` keys them by path relative to the bundle (absolute when outside) with a dict
    of build facts as value; a value that is itself a path, or a dict with "path", also works.
    """
    raw = bundle.meta.get("engines") or {}
    out: dict[str, Path] = {}
    if not isinstance(raw, Mapping):
        return out
    for name, entry in raw.items():
        rel = entry.get("path", name) if isinstance(entry, Mapping) else entry
        path = Path(str(rel))
        path = path if path.is_absolute() else bundle.dir / path
        out[file_key(path)] = path
    return out


def _artifact_paths(
    bundle: Bundle, artifacts: Sequence[str] | None, candidates: Mapping[str, str | Path] | None
) -> tuple[dict[str, Path | None], set[str]]:
    """(artifact key -> file or None when absent, in report order; keys that were asked for by name).

    Items of `artifacts` are bundle keys, "engines" (all engines in bundle.json), "engine:<file
    name>", or a path to an artifact file (absolute, relative to the working directory or to the
    bundle). Named items and candidates are *required*: not being able to run them fails the gate.
    """
    wanted = list(artifacts if artifacts is not None else DEFAULT_ARTIFACTS)
    out: dict[str, Path | None] = {}
    required: set[str] = set()
    engines = _engine_entries(bundle)
    for item in wanted:
        if item == "engines":
            out.update(engines)
            if artifacts is not None and not engines:
                raise BundleError(f"{bundle.dir}: asked to verify engines but bundle.json lists none; run `edgecxr build`")
            continue
        if item in ARTIFACTS:
            key, path = item, bundle.artifact(item, must_exist=False)
        elif item.startswith("engine:"):
            key, path = item, engines.get(item)
        else:
            found = [p for p in (Path(item), bundle.dir / item) if p.is_file()]
            if not found and Path(item).suffix.lower() not in SUFFIX_BACKEND:
                raise BundleError(f"unknown artifact {item!r}; known: {[*ARTIFACTS, 'engines']} or an artifact file")
            key, path = file_key(item), (found[0] if found else Path(item))
        out[key] = path
        if artifacts is not None:
            required.add(key)
    for key, path in (candidates or {}).items():
        out[key] = Path(path)
        required.add(key)
    missing = [k for k in required if out.get(k) is None or not out[k].exists()]  # type: ignore[union-attr]
    if missing:
        raise BundleError(f"{bundle.dir}: asked to verify {sorted(missing)} but there is no such file")
    return out, required


#: Bundle file with the FP32 reference's probabilities per image sha256 (`store_reference`), so a
#: shipped model that carries no FP32 file can still be gated against its trained model.
STORED_REFERENCE = "reference_probs.json"
STORED_KEY = "stored_fp32"


def _pick_reference(bundle: Bundle, reference: str, registry: Mapping[str, Any]) -> str:
    if reference not in ("auto", "keras", "onnx_fp32", STORED_KEY):
        raise BundleError(f"reference must be 'auto', 'keras', 'onnx_fp32' or '{STORED_KEY}', got {reference!r}")
    keras_ok = registry["keras"].availability() is None and bundle.artifact("keras", must_exist=False) is not None
    if reference == "keras" or (reference == "auto" and keras_ok):
        if not keras_ok:
            bundle.artifact("keras")  # BundleError when the file is missing
            raise BackendUnavailableError("the Keras reference needs TensorFlow (pip install 'edgecxr[train]')")
        return "keras"
    stored = (bundle.dir / STORED_REFERENCE).is_file()
    if reference == STORED_KEY or (reference == "auto" and stored and bundle.artifact("onnx_fp32", must_exist=False) is None):
        if not stored:
            raise BundleError(f"{bundle.dir}: no stored reference ({STORED_REFERENCE})")
        return STORED_KEY
    bundle.artifact("onnx_fp32")  # BundleError naming `edgecxr export` when missing
    return "onnx_fp32"


def store_reference(bundle: Bundle, records: Sequence[Record], probs: np.ndarray, source: str, split: str) -> Path:
    """Write the reference's probabilities on `records` keyed by image sha256 (the images' content)."""
    table = {}
    for rec, row in zip(records, probs, strict=True):
        table[rec.sha256 or sha256_file(rec.path)] = [round(float(v), 7) for v in row]
    doc = {"format": "edgecxr-reference-probs", "source": source, "split": split, "classes": bundle.classes,
           "preprocess": bundle.spec.id, "n": len(table), "probabilities": table}
    return write_json(bundle.dir / STORED_REFERENCE, doc)


def _stored_probs(bundle: Bundle, records: Sequence[Record]) -> np.ndarray:
    """The stored reference's probabilities for `records`, in order; every image must be covered."""
    path = bundle.dir / STORED_REFERENCE
    try:
        doc = read_json(path)
        table, classes = doc["probabilities"], doc["classes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: corrupt stored reference ({exc})") from None
    if classes != bundle.classes:
        raise BundleError(f"{path}: classes {classes} differ from the bundle's {bundle.classes}")
    rows = []
    for rec in records:
        key = rec.sha256 or sha256_file(rec.path)
        if key not in table:
            raise BundleError(f"{path}: no stored reference for {rec.relative_path} (it covers the "
                              f"{doc.get('split')!r} split it was stored for, {doc.get('n')} images)")
        rows.append(table[key])
    return np.asarray(rows, dtype=np.float32)


# -- the gate ---------------------------------------------------------------------------------------


def _run_artifact(
    key: str,
    path: Path,
    registry: Mapping[str, Any],
    registry_note: str | None,
    x: np.ndarray,
    batch_size: int,
) -> tuple[ArtifactResult, np.ndarray | None]:
    from edgecxr.runtime.base import infer_in_batches

    backend = backend_for(path)
    result = ArtifactResult(key=key, path=str(path), backend=backend, status="ok")
    cls = registry.get(backend)
    reason = cls.availability() if cls is not None else (registry_note or f"no '{backend}' runner registered")
    if reason:
        result.status, result.reason = "skipped", f"{backend} not available here: {reason}"
        return result, None
    t0 = time.perf_counter()
    try:
        with cls(path) as runner:
            bs = min(batch_size, int(getattr(runner, "max_batch_size", 0) or batch_size))
            probs = infer_in_batches(runner.infer, x, bs)
            result.runner = runner.describe()
    except BackendUnavailableError as exc:  # e.g. an engine built for another GPU / TensorRT version
        result.status, result.reason = "skipped", str(exc)
        return result, None
    except Exception as exc:  # a published artifact that cannot run is a gate failure, not a crash
        result.status, result.reason = "error", f"{type(exc).__name__}: {exc}"
        return result, None
    result.seconds = round(time.perf_counter() - t0, 3)
    if probs.shape != (len(x), probs.shape[1]) or not np.all(np.isfinite(probs)):
        result.status, result.reason = "error", f"output has shape {probs.shape} or non-finite values"
        return result, None
    return result, probs


def _checks(gates: Gates, ref: ArtifactResult, art: ArtifactResult) -> list[GateCheck]:
    if ref.metrics is None or art.metrics is None or art.agreement is None:  # pragma: no cover - caller ran both
        raise BundleError(f"internal: {art.key} has no metrics to gate")
    checks = []
    drop = (ref.metrics["accuracy"] - art.metrics["accuracy"]) * 100.0
    checks.append(
        GateCheck(
            "max_acc_drop",
            drop,
            gates.max_acc_drop,
            drop <= gates.max_acc_drop + _EPS,
            f"accuracy {art.metrics['accuracy']:.4f} vs reference {ref.metrics['accuracy']:.4f} "
            f"(drop {drop:.2f} pp, allowed {gates.max_acc_drop:g} pp)",
        )
    )
    ref_cv, cv = ref.metrics.get("covid_vs_rest"), art.metrics.get("covid_vs_rest")
    if gates.covid_sensitivity_not_lower and ref_cv and cv and (cv["tp"] + cv["fn"]) > 0:
        checks.append(
            GateCheck(
                "covid_sensitivity_not_lower",
                cv["sensitivity"],
                ref_cv["sensitivity"],
                cv["sensitivity"] >= ref_cv["sensitivity"] - _EPS,
                f"COVID sensitivity {cv['sensitivity']:.4f} vs reference {ref_cv['sensitivity']:.4f} "
                f"(must not be lower)",
            )
        )
    agree = art.agreement["top1_agreement"]
    checks.append(
        GateCheck(
            "min_agreement",
            agree,
            gates.min_agreement,
            agree >= gates.min_agreement - _EPS,
            f"top-1 agreement with {ref.key} {agree:.2%} (required {gates.min_agreement:.2%})",
        )
    )
    if gates.max_prob_diff is not None:
        diff = art.agreement["max_abs_diff"]
        checks.append(
            GateCheck(
                "max_prob_diff",
                diff,
                gates.max_prob_diff,
                diff <= gates.max_prob_diff,
                f"max |probability difference| vs {ref.key} {diff:.3g} (allowed {gates.max_prob_diff:g})",
            )
        )
    return checks


def run_gate(
    bundle: Bundle,
    manifest: str | Path,
    split: str = "test",
    artifacts: Sequence[str] | None = None,
    gates: Gates | None = None,
    *,
    candidates: Mapping[str, str | Path] | None = None,
    reference: str = "auto",
    limit: int | None = None,
    batch_size: int = 16,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
    write: bool = False,
    raise_on_fail: bool = True,
) -> VerifyResult:
    """Run artifacts of `bundle` on one split and check them against the FP32 reference.

    Args:
        bundle: the model bundle.
        manifest: data manifest; `split` of it is loaded once with the bundle's preprocessing.
        split: held-out split to score on ("test" for the release gate).
        artifacts: what to check: bundle keys ("keras", "onnx_fp32", "onnx_fp16", "onnx_int8"),
            "engines" (all in bundle.json), "engine:<file name>" or an artifact file path (e.g. a
            freshly built engine); None = everything present. Named ones must exist and must run
            here (a TensorRT engine on a machine without TensorRT fails, rather than passes
            unverified); unnamed ones that cannot run here are reported as skipped.
        gates: thresholds (default `Gates()`).
        candidates: extra or replacement files {key: path} not (yet) registered in the bundle,
            e.g. {"onnx_int8": "model.int8.candidate.onnx"} from `calibrate` or an engine from
            `build`, checked before they are published.
        reference: "auto" (Keras if TensorFlow is here, else ONNX FP32), "keras" or "onnx_fp32".
        limit: score a class-balanced subset of this many images (quick checks; None: all).
        batch_size: inference batch (capped by a runner's `max_batch_size` when it has one).
        bootstrap: resamples for the 95% CIs in the metrics (0: none; the gates do not use them).
        seed: bootstrap seed (the same for every artifact, so their CIs are comparable).
        progress: progress bars while loading images.
        write: write verify.json / verify.md into the bundle and bundle.json["verify"] (before
            raising, so a failed run leaves its report).
        raise_on_fail: raise GateFailedError (with the result as its `.result`) when a gate fails;
            False returns the failing result instead (`calibrate` keeps the rejected file first).

    Returns:
        The VerifyResult (`passed`, `failures`, per-artifact metrics and checks).

    Raises:
        GateFailedError: a gate failed and `raise_on_fail` is set.
        BundleError: no manifest, a named artifact missing, or the reference cannot run.
    """
    from edgecxr.data.manifest import manifest_sha256
    from edgecxr.metrics import agreement, evaluate_predictions

    if manifest is None:
        raise BundleError("the accuracy gate needs a data manifest (--data) to score held-out images")
    t0 = time.perf_counter()
    gates = gates or Gates()
    registry, registry_note = _registry()
    ref_key = _pick_reference(bundle, reference, registry)
    paths, required = _artifact_paths(bundle, artifacts, candidates)
    order = [ref_key] + [k for k in paths if k != ref_key]
    if ref_key == STORED_KEY:
        paths[STORED_KEY] = bundle.dir / STORED_REFERENCE
    elif ref_key not in paths:
        paths[ref_key] = bundle.artifact(ref_key)

    records, x, y = load_split(bundle, manifest, split, limit, progress)
    classes = bundle.classes
    notes = []
    calib = bundle.meta.get("calibration") or {}
    if split in ("train", calib.get("split")):
        notes.append(f"split {split!r} was used for training or calibration: the gate is optimistic on it")
    fp32 = bundle.artifact("onnx_fp32", must_exist=False)
    if "onnx_int8" in paths and "onnx_int8" not in (candidates or {}) and fp32 and calib.get("fp32_sha256"):
        if sha256_file(fp32) != calib["fp32_sha256"]:
            notes.append("onnx_int8 was calibrated from another model.onnx than the current one; re-run `edgecxr calibrate`")

    results: list[ArtifactResult] = []
    probs_by_key: dict[str, np.ndarray] = {}
    for key in order:
        path = paths.get(key)
        if path is None or not path.exists():
            results.append(ArtifactResult(key, None, None, "skipped", "not in the bundle"))
            continue
        if key == STORED_KEY:
            res, probs = ArtifactResult(key=key, path=str(path), backend="stored", status="ok"), _stored_probs(bundle, records)
        else:
            res, probs = _run_artifact(key, path, registry, registry_note, x, batch_size)
        res.reference = key == ref_key
        res.required = key in required and not res.reference
        if probs is not None:
            res.metrics = evaluate_predictions(y, probs, classes, bootstrap=bootstrap, seed=seed, positive=POSITIVE_CLASS)
            probs_by_key[key] = probs
        results.append(res)
    ref = results[0]
    if ref.status != "ok":
        raise BundleError(f"the reference {ref_key} could not be run: {ref.reason}")

    ref_probs = probs_by_key[ref_key]
    for res in results:
        probs = probs_by_key.get(res.key)
        if probs is None or res.reference:
            continue
        res.agreement = agreement(ref_probs, probs)
        differ = np.flatnonzero(np.argmax(probs, axis=1) != np.argmax(ref_probs, axis=1))
        res.disagreements = [records[i].relative_path for i in differ[:MAX_LISTED_DISAGREEMENTS]]
        res.checks = _checks(gates.for_artifact(res.key), ref, res)

    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    result = VerifyResult(
        bundle=str(bundle.dir),
        split=split,
        manifest=str(manifest),
        manifest_sha256=manifest_sha256(manifest),
        n=len(records),
        per_class=counts,
        reference=ref_key,
        gates=gates,
        artifacts=results,
        time=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - t0, 2),
        notes=notes,
    )
    if write:
        write_report(bundle, result)
    if raise_on_fail and not result.passed:
        result.raise_for_failures()
    return result


def write_report(bundle: Bundle, result: VerifyResult) -> tuple[Path, Path]:
    """verify.json + verify.md into the bundle and the summary into bundle.json["verify"]."""
    json_path = write_json(bundle.dir / "verify.json", result.to_dict())
    md_path = atomic_write_text(bundle.dir / "verify.md", result.to_markdown())
    summary = result.summary()
    summary["report_sha256"] = sha256_file(json_path)
    bundle.update(verify=summary)
    return json_path, md_path


# -- report -----------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def format_markdown(result: VerifyResult) -> str:
    """verify.md: one row per artifact, then per-class sensitivity/specificity, then failures."""
    ref = result.get(result.reference)
    ref_acc = ref.metrics["accuracy"] if ref.metrics else None
    lines = [
        f"# Accuracy gate: {Path(result.bundle).name}",
        "",
        f"- data: `{result.manifest}` split **{result.split}**, n={result.n} "
        f"({', '.join(f'{c} {k}' for c, k in result.per_class.items())}); manifest sha256 `{result.manifest_sha256[:16]}…`",
        f"- reference: **{result.reference}**",
        f"- gates: accuracy drop <= {result.gates.max_acc_drop:g} pp; top-1 agreement >= {result.gates.min_agreement:.0%}; "
        f"COVID sensitivity not lower: {'yes' if result.gates.covid_sensitivity_not_lower else 'no'}"
        + (f"; max abs Δp <= {result.gates.max_prob_diff:g}" if result.gates.max_prob_diff is not None else "")
        + (f"; overrides {json.dumps(result.gates.overrides)}" if result.gates.overrides else ""),
        f"- result: **{'PASSED' if result.passed else 'FAILED'}** ({result.time})",
        "",
        "| artifact | backend | status | accuracy | Δ acc vs ref (pp) | COVID sens. | macro AUC | top-1 agree | max abs Δp | gates |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for a in result.artifacts:
        m = a.metrics or {}
        acc = m.get("accuracy")
        delta = None if acc is None or ref_acc is None else (acc - ref_acc) * 100
        cv = (m.get("covid_vs_rest") or {}).get("sensitivity")
        gate = "reference" if a.reference else {True: "pass", False: "**FAIL**", None: "–"}[a.passed]
        status = a.status if a.status == "ok" else f"{a.status}: {a.reason}".replace("|", "\\|")
        lines.append(
            f"| {a.key} | {a.backend or '–'} | {status} | {_pct(acc)} | {_num(delta, '+.2f') if not a.reference else '–'} "
            f"| {_pct(cv)} | {_num(m.get('macro_auc'))} | {_pct((a.agreement or {}).get('top1_agreement'))} "
            f"| {_num((a.agreement or {}).get('max_abs_diff'), '.2e')} | {gate} |"
        )
    scored = [a for a in result.artifacts if a.metrics]
    if scored:
        classes = list(result.per_class)
        lines += [
            "",
            "Per-class sensitivity / specificity:",
            "",
            "| artifact | " + " | ".join(classes) + " |",
            "|---|" + "---:|" * len(classes),
        ]
        for a in scored:
            pc = a.metrics["per_class"]  # type: ignore[index]
            cells = [f"{_pct(pc[c]['recall'])} / {_pct(pc[c]['specificity'])}" for c in classes]
            lines.append(f"| {a.key} | " + " | ".join(cells) + " |")
    if result.failures:
        lines += ["", "Failures:", ""] + [f"- {f}" for f in result.failures]
    if result.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def format_text(result: VerifyResult) -> str:
    """Terminal summary: one line per artifact and the failures."""
    out = [f"verify {Path(result.bundle).name} on {result.split} (n={result.n}), reference {result.reference}"]
    for a in result.artifacts:
        if a.status != "ok":
            out.append(f"  {a.key:<18} {a.status}: {a.reason}")
            continue
        m = a.metrics or {}
        cv = (m.get("covid_vs_rest") or {}).get("sensitivity")
        line = f"  {a.key:<18} acc {_pct(m.get('accuracy')):>6}  covid sens {_pct(cv):>6}  auc {_num(m.get('macro_auc'))}"
        if a.agreement:
            line += f"  agree {_pct(a.agreement['top1_agreement']):>6}  max|dp| {a.agreement['max_abs_diff']:.2e}"
        line += "  " + ("reference" if a.reference else ("PASS" if a.passed else "FAIL"))
        out.append(line)
    for f in result.failures:
        out.append(f"  FAILED {f}")
    for n in result.notes:
        out.append(f"  note: {n}")
    return "\n".join(out) + "\n"
