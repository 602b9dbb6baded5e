"""Keras -> ONNX FP32 export, checked against Keras before it is published into the bundle.

Why each step:
  * tf2onnx `from_function` on a `tf.function` with a (None, H, W, C) signature named "image" and a
    {"probs": ...} result gives exactly the I/O names every runtime and the TensorRT builder expect,
    with a dynamic batch dimension (renamed to "N" so optimisation profiles read well).
  * ONNX Runtime's *basic* offline optimisation (constant folding, MatMul+Add -> Gemm, Conv+BN
    folds, redundant node removal) only emits standard ONNX ops; a Gemm keeps the Dense bias a
    float input that the INT8 quantiser leaves alone (TensorRT wants float bias). The extended
    levels emit com.microsoft fused ops that TensorRT cannot parse, so they are never used, and
    the optimised graph is only kept if it passes the checks below (otherwise the tf2onnx graph
    is used and the reason recorded).
  * A Keras LSTM must become one ONNX "LSTM" op (TensorRT runs that natively; an unrolled
    Loop/Scan graph would be slow and is a sign tf2onnx did not recognise the layer).
  * Parity: the exported file is run by the same ONNX Runtime runner the deployment uses, on
    held-out images prepared by the shared preprocessing (or on random inputs in the spec's range
    when no data is given, which checks the conversion but says nothing about accuracy), and
    compared with Keras. FP32 must match to 1e-4 in probability or the file is not published.

Metadata written into every ONNX file (metadata_props) so a runtime can rebuild the
preprocessing and class order without the bundle: see META_* below.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import ArgumentError, GateFailedError
from edgecxr.core.fileutil import sha256_file

if TYPE_CHECKING:  # pragma: no cover
    pass
from edgecxr.core.metadata import INPUT_NAME, OUTPUT_NAME, bundle_metadata, set_metadata
from edgecxr.core.publish import Candidate
from edgecxr.stages.export.keras_io import (
    check_lstm_ops,
    keras_lstm_count,
    keras_predict,
    keras_to_onnx,
    load_keras,
)
from edgecxr.stages.export.onnx_tools import (
    BATCH_DIM,
    DEFAULT_OPSET,
    _versions,
    check_standard,
    onnx_predict,
    op_counts,
    optimize_onnx,
    parity_inputs,
    parity_stats,
    write_model,
)

log = logging.getLogger(__name__)

#: FP32 ONNX vs Keras: max absolute probability difference allowed (Polygraphy-style FP32 tolerance).
FP32_ATOL = 1e-4




def export_bundle(
    bundle: Bundle,
    *,
    manifest: str | Path | None = None,
    parity_split: str | None = None,
    parity_images: int | None = None,
    opset: int = DEFAULT_OPSET,
    optimize: bool = True,
    atol: float = FP32_ATOL,
    fp16: bool = True,
    fp16_atol: float | None = None,
    fp16_block_ops: Sequence[str] = (),
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Export the bundle's Keras model to model.onnx (and model.fp16.onnx), checked against Keras.

    Args:
        bundle: the model bundle (needs its keras artifact).
        manifest: data manifest for parity images; None -> random inputs (recorded as such).
        parity_split: split of `manifest` to compare on (default "val", held out from training).
        parity_images: with a manifest, a class-balanced subset of this size (None: the whole
            split); without one, how many random inputs (default 16).
        opset: ONNX opset (>= 13 for per-channel Q/DQ INT8 later).
        optimize: apply ONNX Runtime's basic offline optimisation when it is safe.
        atol: max absolute probability difference ONNX FP32 vs Keras; above it nothing is published.
        fp16: also write the FP16 model (FP32 I/O).
        fp16_atol: FP16 vs FP32 tolerance (default edgecxr.export.fp16.FP16_ATOL).
        fp16_block_ops: extra op types to keep in FP32 in the FP16 model.
        batch_size: inference batch for the parity runs.
        seed: seed of the random parity inputs.
        progress: show progress bars while loading images.

    Returns:
        The "export" section written into bundle.json.

    Raises:
        GateFailedError: parity above `atol` (the file is kept as model.rejected.onnx, the bundle
            is not changed) or, for FP16, above `fp16_atol` (model.onnx is still published).
        ExportError: the graph cannot be exported in a deployable form (e.g. LSTM not one op).
    """
    if parity_split is not None and manifest is None:
        raise ArgumentError("a parity split needs a manifest", params=("parity_split", "manifest"))
    t0 = time.perf_counter()
    keras_path = bundle.artifact("keras")
    model = load_keras(keras_path)
    expected_lstm = keras_lstm_count(model)

    onnx_model = keras_to_onnx(model, bundle.spec, opset)
    check_lstm_ops(onnx_model, expected_lstm)
    note = "disabled on request"
    if optimize:
        onnx_model, note = optimize_onnx(onnx_model)
    set_metadata(onnx_model, bundle_metadata(bundle, "fp32"))
    onnx_model.doc_string = f"edgecxr {bundle.model} ({bundle.spec.id}), FP32"
    check_standard(onnx_model)
    check_lstm_ops(onnx_model, expected_lstm)

    x, inputs = parity_inputs(bundle, manifest, parity_split, parity_images, seed, progress)
    ref = keras_predict(model, x, batch_size)

    with Candidate(bundle.default_path("onnx_fp32")) as candidate:
        write_model(onnx_model, candidate.path)
        probs = onnx_predict(candidate.path, x, batch_size)
        parity = parity_stats(ref, probs, atol)
        if not parity["passed"]:
            kept = candidate.reject(note={"parity_vs_keras": parity, "inputs": inputs})
            raise GateFailedError(
                f"ONNX FP32 differs from Keras by up to {parity['max_abs_diff']:.3g} in probability "
                f"(tolerance {atol:g}; top-1 agreement {parity['top1_agreement']:.2%}) on {inputs['images']} "
                f"{inputs['source']} images; not published (kept as {kept.name})"
            )
        final = candidate.publish()

    section: dict[str, Any] = {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": [BATCH_DIM, *bundle.spec.input_shape], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": [BATCH_DIM, len(bundle.classes)], "dtype": "float32"},
        "keras_sha256": sha256_file(keras_path),
        "onnx_sha256": sha256_file(final),
        "optimization": note,
        "ops": op_counts(onnx_model),
        "lstm_ops": op_counts(onnx_model).get("LSTM", 0),
        "parity_inputs": inputs,
        "parity": parity,
    }
    calibrated_from = (bundle.meta.get("calibration") or {}).get("fp32_sha256")
    if calibrated_from and bundle.artifact("onnx_int8", must_exist=False) and calibrated_from != section["onnx_sha256"]:
        section["warnings"] = [
            "model.int8.onnx was calibrated from a previous model.onnx; re-run `edgecxr calibrate` "
            "(and rebuild engines) before deploying it"
        ]
    bundle.set_artifact("onnx_fp32", final)
    bundle.update(export=section)

    if fp16:
        from edgecxr.stages.export.fp16 import FP16_ATOL, export_fp16

        section["fp16"] = export_fp16(
            bundle,
            onnx_model,
            x,
            fp32_probs=probs,
            keras_probs=ref,
            atol=FP16_ATOL if fp16_atol is None else fp16_atol,
            extra_block_ops=fp16_block_ops,
            batch_size=batch_size,
        )
    section["duration_s"] = round(time.perf_counter() - t0, 2)
    bundle.update(export=section)
    if fp16 and not section["fp16"]["parity_vs_fp32"]["passed"]:
        p = section["fp16"]["parity_vs_fp32"]
        raise GateFailedError(
            f"FP16 ONNX differs from FP32 by up to {p['max_abs_diff']:.3g} (tolerance {p['atol']:g}); "
            f"model.onnx was published, the FP16 model was not (kept as {section['fp16']['rejected']})"
        )
    return section
