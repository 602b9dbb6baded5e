"""INT8 calibration: an explicit-quantization Q/DQ ONNX model that TensorRT and ONNX Runtime both run.

TensorRT 10.1 deprecated (and 11 removed) IInt8Calibrator and the INT8 builder flag: networks are
strongly typed and INT8 lives in the ONNX file as QuantizeLinear/DequantizeLinear pairs. TensorRT
accepts them when they are symmetric (zero point 0, int8), weights are per-channel on the output
channel axis, and biases stay float. ONNX Runtime's `quantize_static` writes exactly that with
QuantFormat.QDQ, QInt8 activations and weights, per_channel=True, ActivationSymmetric,
WeightSymmetric and QuantizeBias=False; `check_tensorrt_qdq` proves it on every result.

What stays float, and why:
  * Softmax, always: int8 probabilities would have a resolution of 1/127 and the probabilities are
    what the runtime reports and the gate compares.
  * LSTM: ONNX Runtime's QDQ quantizer has no LSTM support (LSTM is only in its dynamic-quantization
    registry), so the LSTM runs in float; its input still arrives through a DequantizeLinear, which
    TensorRT handles. `--keep-float lstm` therefore changes nothing today and is accepted so a
    recipe stays valid if ONNX Runtime learns to quantize it.
  * `--keep-float first-conv,head,<node>`: the first Conv (sees raw pixels) and/or the classifier
    head (MatMul/Gemm nodes after the last Conv/LSTM), the two places where INT8 usually costs the
    most accuracy, or any node by name.

Provenance: the calibration images are written as a manifest (CSV: relative path, sha256, label,
class, split, patient; plus a JSON sidecar with the source manifest's sha256, preprocessing and
per-class counts) in the bundle's calibration/ folder (or --calib-manifest-out), named by the FP32
model's hash, the method and its own content hash (`record_stem`); that sha256 goes into
bundle.json["calibration"] and into the INT8 file's metadata, so every INT8 model is traceable to
the exact images it was calibrated on.

Publishing: the INT8 file is written under a temporary name, checked for TensorRT compatibility
and run through the accuracy gate (`edgecxr.verify.run_gate`) against the FP32 reference; only
then is it moved to model.int8.onnx and registered. A failing file is kept as
model.int8.rejected.onnx (with model.int8.rejected.json explaining why) and GateFailedError raised.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError, DataError, EdgeCXRError, GateFailedError
from edgecxr.core.fileutil import atomic_write_bytes, recorded_path, sha256_file
from edgecxr.core.metadata import META_CALIBRATION, bundle_metadata, set_metadata
from edgecxr.core.publish import Candidate
from edgecxr.core.version import __version__
from edgecxr.data.manifest import manifest_sha256
from edgecxr.stages.export.onnx_tools import op_counts

if TYPE_CHECKING:  # pragma: no cover

    from edgecxr.stages.gate.config import Gates
    from edgecxr.stages.gate.result import VerifyResult
from edgecxr.data.dataset import load_split
from edgecxr.stages.export.calib_set import (
    CALIBRATION_DIR,
    DEFAULT_CHUNK_IMAGES,
    _stride,
    equal_batch_size,
    make_data_reader,
    per_class_counts,
    record_stem,
    with_views,
    write_calibration_manifest,
)
from edgecxr.stages.export.fallback import check_splits, fallback_record, select_float_nodes
from edgecxr.stages.export.float_weights import store_float_weights_fp16
from edgecxr.stages.export.fp32 import ensure_fp32
from edgecxr.stages.export.qdq_check import (
    ALWAYS_FLOAT_OPS,
    check_tensorrt_qdq,
    resolve_keep_float,
    weight_quantization,
)
from edgecxr.stages.gate.config import Gates
from edgecxr.stages.gate.report import record_verdicts
from edgecxr.stages.gate.result import VerifyResult
from edgecxr.stages.gate.run import run_gate

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")


DEFAULT_PERCENTILE = 99.99


def quantize_qdq(
    fp32: str | Path,
    out: str | Path,
    x: np.ndarray,
    *,
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
    nodes_to_exclude: Sequence[str] = (),
    batch_size: int = 8,
    chunk_images: int = DEFAULT_CHUNK_IMAGES,
    symmetric: bool = True,
    per_channel: bool = True,
    quantize_bias: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Calibrate `fp32` on preprocessed images `x` and write a Q/DQ INT8 model to `out`.

    `symmetric`, `per_channel` and `quantize_bias` exist so tests can build a deliberately
    non-TensorRT-compatible model; the defaults are the TensorRT recipe. Returns the options used.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise BundleError(f"unknown calibration method {method!r}; choose from {list(METHODS)}")
    if not 0 < percentile <= 100:
        raise BundleError(f"percentile must be in (0, 100], got {percentile}")
    if len(x) == 0:
        raise DataError("no calibration images")
    calib_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    fp32_model = onnx.load(str(fp32))
    always = [n.name for n in fp32_model.graph.node if n.op_type in ALWAYS_FLOAT_OPS]
    exclude = list(dict.fromkeys([*always, *nodes_to_exclude]))
    extra: dict[str, Any] = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": symmetric,
        "QuantizeBias": quantize_bias,
    }
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
        extra["CalibTensorRangeSymmetric"] = symmetric  # percentile of |x|, as TensorRT's calibrators
    if method != "minmax":
        # The histogram calibrators stack a chunk's batch outputs into one array, so every batch must
        # have the same size (127 calib images in batches of 8 failed): use the largest divisor of
        # the image count that does not exceed the requested batch size.
        batch_size = equal_batch_size(len(x), batch_size)
    reader = make_data_reader(x, batch_size, progress=f"calibrating ({method})" if progress else False)
    stride = _stride(len(reader), max(1, chunk_images // batch_size))
    if stride:
        extra["CalibStridedMinMax"] = stride  # despite the name, chunks every calibrator's collection
    ort_log = logging.getLogger("onnxruntime.quantization")
    with tempfile.TemporaryDirectory(prefix="edgecxr-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference only: the export already ran ONNX Runtime's safe (basic) optimisation, and
        # symbolic shape inference needs sympy, which plain CNN shapes do not need.
        quant_pre_process(str(fp32), str(pre), skip_optimization=True, skip_symbolic_shape=True)
        chatter = io.StringIO()
        level = logging.root.level
        try:
            logging.root.setLevel(logging.ERROR)  # quantize_static logs through the root logger
            with contextlib.redirect_stdout(chatter):  # the histogram collector print()s per chunk
                quantize_static(
                    str(pre),
                    str(out),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=per_channel,
                    nodes_to_exclude=exclude,
                    calibrate_method=calib_method,
                    extra_options=extra,
                )
        except Exception as exc:  # onnxruntime raises plain exceptions
            raise EdgeCXRError(f"onnxruntime quantize_static failed: {exc}") from exc
        finally:
            logging.root.setLevel(level)
            reader.close()
        if chatter.getvalue().strip():
            ort_log.debug(chatter.getvalue())
    if nodes_to_exclude:
        # ONNX Runtime's exclusion only stops a node's own Q/DQ: a Conv before an excluded ReLU still
        # quantizes its output, and the ReLU reads it through a DequantizeLinear. Floating a node means
        # its inputs are float (as the fallback's surgery scores it), so rewire them to the FP32 tensors.
        from edgecxr.stages.export.sensitivity import hybrid

        onnx.save(hybrid(onnx.load(str(out)), fp32_model, list(nodes_to_exclude)), str(out))
    options = {
        "format": "QDQ",
        "activations": "int8 symmetric" if symmetric else "int8 asymmetric",
        "weights": ("int8 symmetric" if symmetric else "int8 asymmetric") + (" per-channel" if per_channel else " per-tensor"),
        "bias": "int32 (quantized)" if quantize_bias else "float (not quantized)",
        "extra_options": extra,
        "batch_size": batch_size,
        "always_float": always,
    }
    return options



def calibrate_bundle(
    bundle: Bundle,
    manifest: str | Path,
    *,
    split: str = "calib",
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
    keep_float: Sequence[str] = (),
    limit: int | None = None,
    verify: bool = True,
    verify_split: str = "test",
    verify_limit: int | None = None,
    gates: Gates | None = None,
    calib_manifest_out: str | Path | None = None,
    batch_size: int = 8,
    progress: bool = True,
    fallback: str = "none",
    explain: bool = False,
    select_split: str = "val",
    views: int = 0,
    rank: str = "error",
    scope: str = "all",
    log: Callable[[str], None] | None = None,
    source: str | Path | None = None,
    qat: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Calibrate the bundle's FP32 ONNX into model.int8.onnx, gated before it is published.

    Args:
        bundle: bundle with an onnx_fp32 artifact (`edgecxr export`).
        manifest: data manifest; images of `split` (default "calib", patient-disjoint from train,
            val and test) are the calibration set, loaded with the shared preprocessing.
        method: "minmax", "entropy" or "percentile" (onnxruntime's calibrators).
        percentile: for "percentile", the percentile of |activation| used as range.
        keep_float: aliases first-conv / head / lstm or node names to leave in float.
        limit: calibrate on a class-balanced subset of this many images.
        verify: run the accuracy gate on `verify_split` before publishing (recommended).
        verify_limit: score the gate on a class-balanced subset (quick checks only).
        gates: gate thresholds (default `edgecxr.verify.Gates()`).
        calib_manifest_out: folder or .csv path for the calibration manifest (default BUNDLE/calibration/).
        batch_size: images per calibration batch.
        progress: progress bars.
        fallback: "auto" keeps the fewest quantized nodes in float for the gate to pass on
            `select_split` (sensitivity ranking + greedy search, confirmed by a re-calibration);
            "none" quantizes everything but `keep_float`.
        explain: rank every quantized node by what it costs on `select_split` and write the table,
            JSON and plot beside the calibration manifest.
        select_split: where fallback and explain choose (never the gate's `verify_split`).
        rank: "error" (each node's own quantization error, one pass; then bisection) or
            "agreement" (one pass per node; then the greedy walk). See fallback.explain_and_choose.
        scope: "all" quantized nodes, or only "weighted" ones, are candidates for float.
        views: augmented views of each calibration image added to the calibration set.
        log: where progress lines of fallback/explain go (default: discarded).
        source: quantize this FP32 ONNX instead of the bundle's own: the fine-tuned model of
            `edgecxr qat` (stages/export/qat.py). The gate still compares with the bundle's reference,
            and `fp32_sha256` stays the bundle's FP32 model; `qat` (its record) goes into the section.

    Returns:
        The "calibration" section written into bundle.json.

    Raises:
        GateFailedError: the INT8 model is not TensorRT-compatible or fails the gate; it is kept
            as model.int8.rejected.onnx, bundle.json is not changed.
    """
    import onnx
    import onnxruntime as ort

    from edgecxr.data.manifest import read_manifest, select

    check_splits(split, verify, verify_split, fallback, explain, select_split)
    analysing = fallback == "auto" or explain
    if source is not None and analysing:
        raise BundleError("--fallback auto/--explain rank nodes against the model they quantize; with a fine-tuned "
                          "source, name the float nodes with --keep-float (e.g. those an earlier --fallback auto chose)")
    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    base_path = ensure_fp32(bundle)  # widened from the FP16 model where the bundle ships no FP32
    fp32_path = Path(source) if source is not None else base_path
    fp32_model = onnx.load(str(fp32_path))
    keep = resolve_keep_float(fp32_model, keep_float)
    excluded = list(dict.fromkeys(name for names in keep.values() for name in names))

    records, x, _ = load_split(bundle, manifest, split, limit, progress)
    x = with_views(x, views, bundle.spec.scale, bundle.spec.offset)
    split_size = len(select(read_manifest(manifest), split))
    counts = per_class_counts(records, bundle.classes)
    fp32_sha = sha256_file(base_path)
    csv_path, json_path, calib_sha = write_calibration_manifest(
        records,
        bundle.classes,
        source_manifest=manifest,
        split=split,
        out=calib_manifest_out if calib_manifest_out is not None else bundle.dir / CALIBRATION_DIR,
        stem=record_stem(bundle.model, fp32_sha, method),
        header={
            "bundle": recorded_path(bundle.dir),
            "model": bundle.model,
            "classes": bundle.classes,
            "per_class": counts,
            "selection": "whole split"
            if len(records) == split_size
            else f"class-balanced subset: {len(records)} of {split_size} (round-robin over classes in manifest order)",
            "preprocess": bundle.spec.to_dict(),
            "method": method,
            "edgecxr_version": __version__,
        },
    )

    options: dict[str, Any] = {}

    def quantize(also_float: Sequence[str] = ()) -> Any:
        """Calibrate into the candidate with `excluded` plus `also_float` in float; the model written."""
        options.update(quantize_qdq(fp32_path, tmp, x, method=method, percentile=percentile,
                                    nodes_to_exclude=[*excluded, *also_float], batch_size=batch_size,
                                    progress=progress))
        return onnx.load(str(tmp))

    with Candidate(bundle.default_path("onnx_int8")) as candidate:
        tmp = candidate.path
        quantize()
        analysis: dict[str, Any] | None = None
        if analysing:
            analysis, chosen = select_float_nodes(
                bundle, manifest, fp32_model, tmp, quantize, csv_path, split=select_split, gates=gates or Gates(),
                fallback=fallback, explain=explain, rank=rank, scope=scope, progress=progress, say=say)
            excluded = list(dict.fromkeys([*excluded, *chosen]))
        model = onnx.load(str(tmp))
        float_weights = store_float_weights_fp16(model)  # lossless only; the gate below scores this very file
        set_metadata(model, {**bundle_metadata(bundle, "int8"), META_CALIBRATION: calib_sha})
        model.doc_string = f"edgecxr {bundle.model} ({bundle.spec.id}), INT8 Q/DQ, calibration {calib_sha[:12]}"
        atomic_write_bytes(tmp, model.SerializeToString())
        section: dict[str, Any] = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": method,
            **({"percentile": percentile} if method == "percentile" else {}),
            "split": split,
            "images": len(records),
            **({"augmented_views": views, "calibration_inputs": len(x)} if views else {}),
            "per_class": counts,
            "manifest": _display_path(csv_path, bundle),
            "manifest_sha256": calib_sha,
            "sidecar": _display_path(json_path, bundle),
            "source_manifest_sha256": manifest_sha256(manifest),
            "keep_float": keep,
            "excluded_nodes": [*options["always_float"], *[n for n in excluded if n not in options["always_float"]]],
            "quantization": options,
            "onnxruntime_version": ort.__version__,
            "onnx_version": onnx.__version__,
            "edgecxr_version": __version__,
            "fp32_sha256": fp32_sha,
            "ops": op_counts(model),
            "weights": weight_quantization(model),
            "float_weights": float_weights,
        }
        if qat is not None:
            section["qat"] = {**qat, "source_sha256": sha256_file(fp32_path)}
        if analysis is not None:
            section["fallback"] = fallback_record(analysis, fallback, select_split, csv_path, bundle)
        violations = check_tensorrt_qdq(model)
        section["tensorrt_compatible"] = not violations
        if violations:
            section["tensorrt_violations"] = violations
            kept = candidate.reject(note={"calibration": section})
            raise GateFailedError(
                "the INT8 model is not TensorRT-compatible: " + "; ".join(violations[:5])
                + (f" (+{len(violations) - 5} more)" if len(violations) > 5 else "")
                + f"; kept as {kept.name}"
            )
        result: VerifyResult | None = None
        if verify:
            result = run_gate(
                bundle,
                manifest,
                verify_split,
                artifacts=["onnx_int8"],
                gates=gates,
                candidates={"onnx_int8": tmp},
                limit=verify_limit,
                progress=progress,
                bootstrap=0,
                raise_on_fail=False,
            )
            section["gate"] = result.summary()
            section["gate"]["artifacts"]["onnx_int8"]["path"] = str(candidate.final)
            if not result.passed:
                kept = candidate.reject(note={"calibration": section, "gate": result.to_dict()})
                result.raise_for_failures(f"INT8 model not published (kept as {kept.name})")
        else:
            section["gate"] = {"skipped": "not gated on request; run `edgecxr verify` before deploying"}
        section["sha256"] = sha256_file(tmp)
        section["duration_s"] = round(time.perf_counter() - t0, 2)
        final = candidate.publish()
    bundle.set_artifact("onnx_int8", final)
    # The verdict goes where every verdict goes (bundle.json["gate"]); the calibration section keeps the rest.
    bundle.update(calibration={k: v for k, v in section.items() if k != "gate"})
    if result is not None:
        record_verdicts(bundle, result, by="calibrate", paths={"onnx_int8": final})
    return section






def _display_path(path: Path, bundle: Bundle) -> str:
    """Path of a calibration record as bundle.json keeps it: relative to the bundle when inside it
    (the default, BUNDLE/calibration/: the record travels with the bundle), else absolute. Records
    written before they moved into the bundle say e.g. "calibration/coronet-calib-50ae70b2.csv",
    relative to the folder calibrate ran in (the repo's calibration/ for the reference models)."""
    resolved = path.resolve()
    home = bundle.dir.resolve()
    return resolved.relative_to(home).as_posix() if resolved.is_relative_to(home) else str(resolved)
