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

import datetime as _dt
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.artifacts import BUNDLE_FILES, KINDS, backend_for, is_engine
from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import ArgumentError, BackendUnavailableError, BundleError
from edgecxr.core.fileutil import sha256_file
from edgecxr.data.dataset import load_split
from edgecxr.stages.gate.config import _EPS, POSITIVE_CLASS, Gates
from edgecxr.stages.gate.reference import STORED_KEY, STORED_REFERENCE, _pick_reference, _stored_probs
from edgecxr.stages.gate.report import write_report
from edgecxr.stages.gate.result import MAX_LISTED_DISAGREEMENTS, ArtifactResult, GateCheck, VerifyResult
from edgecxr.stages.metrics import agreement, evaluate_predictions

log = logging.getLogger(__name__)

#: What `edgecxr verify` runs by default ("engines" expands to bundle.meta["engines"]).
DEFAULT_ARTIFACTS = (*BUNDLE_FILES, "engines")




def _registry() -> tuple[dict[str, Any], str | None]:
    """Runner classes by name, and why the registry is incomplete (a backend module failed to import)."""
    try:
        from edgecxr.runtime.backends import backends

        return backends(), None
    except ImportError as exc:  # e.g. edgecxr.runtime.tensorrt absent from this installation
        from edgecxr.runtime.keras_runner import KerasRunner
        from edgecxr.runtime.onnxrt import OnnxRuntimeRunner

        return {"keras": KerasRunner, "onnxruntime": OnnxRuntimeRunner}, f"backend module not importable: {exc}"


def file_key(path: str | Path) -> str:
    """Result key of an artifact given as a file: "engine:<file name>" for TensorRT engines."""
    path = Path(path)
    kind = "engine" if is_engine(path) else "file"
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
        if item in BUNDLE_FILES:
            key, path = item, bundle.artifact(item, must_exist=False)
        elif item.startswith("engine:"):
            key, path = item, engines.get(item)
        else:
            found = [p for p in (Path(item), bundle.dir / item) if p.is_file()]
            if not found and not any(Path(item).suffix.lower() in k.suffixes for k in KINDS):
                raise ArgumentError(f"unknown artifact {item!r}; known: {[*BUNDLE_FILES, 'engines']} or an artifact file",
                                  params=("artifacts",))
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


def split_checks(gates: Gates, counts: dict[str, int]) -> list[GateCheck]:
    """Whether the split can carry a verdict: at least `min_images` images and every class present."""
    n = sum(counts.values())
    checks = [GateCheck("min_images", n, gates.min_images, n >= gates.min_images,
                        f"{n} image(s) in the split (at least {gates.min_images} required for a verdict)")]
    missing = [c for c, k in counts.items() if k == 0]
    if missing and gates.require_all_classes:
        checks.append(GateCheck("all_classes", len(counts) - len(missing), len(counts), False,
                                f"the split has no {', '.join(missing)} images: the gate cannot measure "
                                f"{'that class' if len(missing) == 1 else 'those classes'}"))
    return checks


def gate_checks(gates: Gates, ref: ArtifactResult, art: ArtifactResult) -> list[GateCheck]:
    """The gate rule: each threshold of `gates` applied to `art` against the reference `ref`."""
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
    if gates.covid_sensitivity_not_lower and not (ref_cv and cv and (cv["tp"] + cv["fn"]) > 0):
        # A split without COVID images cannot show the one property the gate exists for; a PASS
        # there would read as "COVID sensitivity kept" when nothing was measured.
        checks.append(GateCheck("covid_sensitivity_not_lower", None, None, False,
                                f"no {POSITIVE_CLASS} images in the split: COVID sensitivity cannot be checked "
                                "(gate on a split that has them, or turn the COVID gate off)"))
    elif gates.covid_sensitivity_not_lower:
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
        write: write verify.json / verify.md into the bundle and the verdicts into bundle.json["gate"] (before
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

    if manifest is None:
        raise BundleError("the accuracy gate needs a data manifest to score held-out images")
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
        res.checks = gate_checks(gates.for_artifact(res.key), ref, res)

    counts = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    for res in results:
        if res.checks:
            res.checks.extend(split_checks(gates.for_artifact(res.key), counts))
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
        limit=limit,
    )
    if limit is not None:
        notes.append(f"subset run (--limit {limit}): reported in verify-subset.json, not recorded as the published verdict")
    if write:
        write_report(bundle, result)
    if raise_on_fail and not result.passed:
        result.raise_for_failures()
    return result
