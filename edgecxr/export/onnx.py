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
import json
import logging
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecxr import __version__
from edgecxr._lazy import require
from edgecxr.bundle import FORMAT, FORMAT_VERSION, Bundle
from edgecxr.errors import BundleError, EdgeCXRError, GateFailedError
from edgecxr.fileutil import atomic_write_bytes, sha256_file
from edgecxr.preprocess import PreprocessSpec

if TYPE_CHECKING:  # pragma: no cover
    import onnx

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "probs"
#: Symbolic name of the dynamic batch dimension (TensorRT profiles and Netron show it).
BATCH_DIM = "N"
DEFAULT_OPSET = 17
#: Per-channel symmetric Q/DQ (the INT8 path) needs opset >= 13.
MIN_OPSET = 13
#: FP32 ONNX vs Keras: max absolute probability difference allowed (Polygraphy-style FP32 tolerance).
FP32_ATOL = 1e-4
#: Random parity inputs when no manifest is given.
DEFAULT_RANDOM_IMAGES = 16

META_CLASSES = "edgecxr.classes"  # JSON list, model output order
META_PREPROCESS = "edgecxr.preprocess"  # JSON PreprocessSpec.to_dict()
META_MODEL = "edgecxr.model"  # "coronet" / "cnn-lstm"
META_BUNDLE_FORMAT = "edgecxr.bundle_format"  # "edgecxr-bundle/1"
META_VERSION = "edgecxr.version"  # edgecxr version that wrote the file
META_PRECISION = "edgecxr.precision"  # "fp32" / "fp16" / "int8"
META_CALIBRATION = "edgecxr.calibration_sha256"  # INT8 only: sha256 of the calibration manifest

#: ONNX domains an exported graph may use (TensorRT's parser reads only standard ops).
STANDARD_DOMAINS = ("", "ai.onnx")


class ExportError(EdgeCXRError):
    """The model cannot be exported in a form the deployment targets accept."""


# -- small ONNX helpers (shared by fp16, quantize and verify) -------------------------------------


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type of the main graph, for bundle.json and quick diffs between exports."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def set_metadata(model: onnx.ModelProto, entries: dict[str, str]) -> None:
    """Add or replace metadata_props entries (keys not in `entries` are kept)."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in entries]
    del model.metadata_props[:]
    for key, value in [*keep, *entries.items()]:
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)


def bundle_metadata(bundle: Bundle, precision: str) -> dict[str, str]:
    """The metadata_props every exported file of `bundle` carries."""
    return {
        META_CLASSES: json.dumps(bundle.classes),
        META_PREPROCESS: json.dumps(bundle.spec.to_dict(), sort_keys=True),
        META_MODEL: bundle.model,
        META_BUNDLE_FORMAT: f"{FORMAT}/{FORMAT_VERSION}",
        META_VERSION: __version__,
        META_PRECISION: precision,
    }


def read_metadata(model: str | Path | onnx.ModelProto) -> dict[str, Any]:
    """metadata_props of an ONNX file, JSON values (classes, preprocess) decoded.

    Loads without external data so reading the metadata of a large model stays cheap.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        value: Any = prop.value
        if prop.key in (META_CLASSES, META_PREPROCESS):
            value = json.loads(value)
        out[prop.key] = value
    return out


def set_batch_dim(model: onnx.ModelProto, name: str = BATCH_DIM) -> None:
    """Name the dynamic leading dimension of the graph I/O `name` (tf2onnx calls it 'unk__NNN').

    The same symbol is renamed in value_info too, so shapes stay consistent.
    """
    old = set()
    for vi in [*model.graph.input, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            continue
        d0 = dims[0]
        if d0.HasField("dim_value"):
            raise ExportError(f"'{vi.name}' has a fixed batch size {d0.dim_value}; expected a dynamic one")
        if d0.dim_param:
            old.add(d0.dim_param)
        d0.dim_param = name
    for vi in model.graph.value_info:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in old:
                d.dim_param = name


def strip_unused_opsets(model: onnx.ModelProto) -> None:
    """Drop opset imports of domains no node uses (ONNX Runtime's saved graphs import nine)."""
    used = {n.domain for n in model.graph.node} | {""}
    keep = [(o.domain, o.version) for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    for domain, version in keep:
        entry = model.opset_import.add()
        entry.domain, entry.version = domain, version


def opset_of(model: onnx.ModelProto) -> int:
    """Version of the default ONNX domain."""
    for o in model.opset_import:
        if o.domain in STANDARD_DOMAINS:
            return int(o.version)
    return 0


def model_bytes(model: onnx.ModelProto) -> bytes:
    """Serialise in memory (all our models are far below protobuf's 2 GiB limit)."""
    return model.SerializeToString()


def onnx_predict(path: str | Path, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Probabilities from an ONNX file through the deployment's ONNX Runtime runner (CPU)."""
    from edgecxr.runtime.base import infer_in_batches
    from edgecxr.runtime.onnxrt import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path) as runner:
        return infer_in_batches(runner.infer, x, batch_size)


# -- Keras side -----------------------------------------------------------------------------------


def load_keras(path: str | Path) -> Any:
    """Load a bundle's model.keras for inference (needs the 'train' extra)."""
    keras = require("keras", "exporting the Keras model")
    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # keras raises ValueError/TypeError/OSError for unreadable files
        raise BundleError(f"{path}: Keras cannot load this model: {exc}") from exc


def _walk_layers(layer: Any) -> list[Any]:
    out = []
    for sub in getattr(layer, "layers", []) or []:
        out.append(sub)
        out.extend(_walk_layers(sub))
    for attr in ("layer", "forward_layer", "backward_layer"):  # Bidirectional / TimeDistributed wrappers
        sub = getattr(layer, attr, None)
        if sub is not None and sub is not layer and hasattr(sub, "get_config"):
            out.append(sub)
    return out


def keras_lstm_count(model: Any) -> int:
    """Number of LSTM layers in a Keras model (a Bidirectional LSTM counts once: one ONNX op)."""
    keras = require("keras", "exporting the Keras model")
    count = 0
    for layer in _walk_layers(model):
        if isinstance(layer, keras.layers.Bidirectional):
            count += 1
        elif isinstance(layer, keras.layers.LSTM) and not _inside_bidirectional(model, layer, keras):
            count += 1
    return count


def _inside_bidirectional(model: Any, layer: Any, keras: Any) -> bool:
    for outer in _walk_layers(model):
        if isinstance(outer, keras.layers.Bidirectional) and layer in (
            getattr(outer, "forward_layer", None),
            getattr(outer, "backward_layer", None),
            getattr(outer, "layer", None),
        ):
            return True
    return False


def keras_predict(model: Any, x: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Keras reference probabilities (inference mode: Dropout off, BatchNorm uses moving stats)."""
    from edgecxr.runtime.base import infer_in_batches

    return infer_in_batches(lambda b: model(np.ascontiguousarray(b, dtype=np.float32), training=False), x, batch_size)


def keras_to_onnx(model: Any, spec: PreprocessSpec, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert a Keras model to ONNX: input "image" (N,H,W,C) float32, output "probs" (N,classes)."""
    tf = require("tensorflow", "exporting to ONNX")
    tf2onnx = require("tf2onnx", "exporting to ONNX")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: per-channel Q/DQ INT8 needs opset >= {MIN_OPSET}")
    want = tuple(spec.input_shape)
    have = tuple(model.input_shape[1:]) if getattr(model, "input_shape", None) else None
    if have is not None and have != want:
        raise BundleError(f"Keras model input {have} does not match the bundle's preprocessing {spec.id} ({want})")
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    signature = (tf.TensorSpec((None, *want), tf.float32, name=INPUT_NAME),)

    @tf.function(input_signature=signature)
    def serve(image: Any) -> dict[str, Any]:
        return {OUTPUT_NAME: model(image, training=False)}

    try:
        onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=opset)
    except Exception as exc:  # tf2onnx raises many untyped errors
        raise ExportError(f"tf2onnx could not convert the model (opset {opset}): {exc}") from exc
    inputs = [i.name for i in onnx_model.graph.input]
    outputs = [o.name for o in onnx_model.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise ExportError(f"unexpected ONNX I/O {inputs} -> {outputs}; expected ['{INPUT_NAME}'] -> ['{OUTPUT_NAME}']")
    set_batch_dim(onnx_model)
    return onnx_model


def check_lstm_ops(model: onnx.ModelProto, expected: int) -> None:
    """Each Keras LSTM layer must be exactly one ONNX LSTM op (TensorRT's native RNN path)."""
    counts = op_counts(model)
    got = counts.get("LSTM", 0)
    loops = {k: v for k, v in counts.items() if k in ("Loop", "Scan")}
    if got != expected or (expected and loops):
        raise ExportError(
            f"the Keras model has {expected} LSTM layer(s) but the ONNX graph has {got} LSTM op(s)"
            + (f" and {loops}" if loops else "")
            + ": tf2onnx did not map the layer to a single ONNX LSTM (it does so only for default "
            "tanh/sigmoid activations, no recurrent dropout, unroll=False); TensorRT would run the "
            "unrolled loop slowly or not at all. Rebuild the model with a plain keras.layers.LSTM."
        )


def check_standard(model: onnx.ModelProto) -> None:
    """onnx.checker plus: only standard-domain ops, one input "image", one output "probs"."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX model is invalid: {exc}") from exc
    foreign = sorted({f"{n.domain}:{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})
    if foreign:
        raise ExportError(f"the ONNX graph uses non-standard ops {foreign} that TensorRT cannot parse")


def optimize_onnx(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """ONNX Runtime's basic offline optimisation, kept only when it provably changed nothing unsafe.

    Returns (model, note). The note says what was done or why the input was kept unchanged.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgecxr-opt-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(model_bytes(model))
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        so.log_severity_level = 3
        try:
            ort.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"])
            optimized = onnx.load(str(dst))
        except Exception as exc:  # onnxruntime's errors are untyped
            return model, f"skipped: onnxruntime basic optimisation failed ({exc})"
    strip_unused_opsets(optimized)
    reasons = []
    foreign = sorted({n.op_type for n in optimized.graph.node if n.domain not in STANDARD_DOMAINS})
    if foreign:
        reasons.append(f"it introduced non-standard ops {foreign}")
    before, after = op_counts(model), op_counts(optimized)
    if before.get("LSTM", 0) != after.get("LSTM", 0):
        reasons.append("it changed the LSTM ops")
    if [i.name for i in optimized.graph.input] != [INPUT_NAME] or [o.name for o in optimized.graph.output] != [OUTPUT_NAME]:
        reasons.append("it changed the graph I/O")
    if not reasons:
        try:
            onnx.checker.check_model(optimized)
        except onnx.checker.ValidationError as exc:
            reasons.append(f"the result fails onnx.checker ({exc})")
    if reasons:
        return model, "skipped: onnxruntime basic optimisation not used because " + "; ".join(reasons)
    del optimized.metadata_props[:]
    set_batch_dim(optimized)
    n_before, n_after = sum(before.values()), sum(after.values())
    return optimized, f"onnxruntime {ort.__version__} basic (ORT_ENABLE_BASIC): {n_before} -> {n_after} nodes"


# -- parity inputs ----------------------------------------------------------------------------------


def parity_inputs(
    bundle: Bundle,
    manifest: str | Path | None,
    split: str | None = "val",
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Images for the Keras/ONNX comparison and a description of where they came from.

    With a manifest: `split` through the shared loader (limit: a class-balanced subset). Without:
    `limit` (default 16) random inputs uniform in the preprocessing's output range; the description
    says so, because such inputs prove the conversion but not behaviour on X-rays.
    """
    spec = bundle.spec
    split = split or "val"
    if manifest is not None:
        from edgecxr.data.dataset import load_arrays
        from edgecxr.data.manifest import manifest_sha256, read_manifest, select
        from edgecxr.verify import subset_records

        records = subset_records(select(read_manifest(manifest), split), bundle.classes, limit)
        x, _ = load_arrays(records, spec, bundle.classes, progress=f"parity images ({split})" if progress else False)
        return x, {
            "source": "manifest",
            "manifest": str(manifest),
            "manifest_sha256": manifest_sha256(manifest),
            "split": split,
            "images": len(records),
        }
    n = int(limit or DEFAULT_RANDOM_IMAGES)
    lo, hi = spec.output_range
    rng = np.random.default_rng(seed)
    x = rng.uniform(lo, hi, size=(n, *spec.input_shape)).astype(np.float32)
    return x, {
        "source": "random",
        "images": n,
        "range": [lo, hi],
        "seed": seed,
        "note": "random inputs (no --data): proves the conversion, not the behaviour on X-rays",
    }


def parity_stats(reference: np.ndarray, candidate: np.ndarray, atol: float) -> dict[str, Any]:
    from edgecxr.metrics import agreement

    stats = agreement(reference, candidate)
    stats["atol"] = atol
    stats["passed"] = bool(stats["max_abs_diff"] <= atol)
    return stats


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime as ort

    out = {"edgecxr": __version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    for mod in ("tensorflow", "keras", "tf2onnx"):
        try:
            out[mod] = require(mod).__version__
        except (EdgeCXRError, AttributeError):
            pass
    return out


def write_model(model: onnx.ModelProto, path: Path) -> Path:
    atomic_write_bytes(path, model_bytes(model))
    return path


def candidate_path(final: Path) -> Path:
    """A temp file beside `final` with the same suffix (runners choose by suffix)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".candidate.onnx", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def rejected_path(final: Path) -> Path:
    """Where a failing artifact is kept for inspection: model.int8.onnx -> model.int8.rejected.onnx."""
    return final.with_name(final.name[: -len(".onnx")] + ".rejected.onnx")


# -- the export stage ------------------------------------------------------------------------------


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
        raise BundleError("a parity split needs a manifest (--data)")
    t0 = time.perf_counter()
    keras_path = bundle.artifact("keras")
    model = load_keras(keras_path)
    expected_lstm = keras_lstm_count(model)

    onnx_model = keras_to_onnx(model, bundle.spec, opset)
    check_lstm_ops(onnx_model, expected_lstm)
    note = "disabled (--no-optimize)"
    if optimize:
        onnx_model, note = optimize_onnx(onnx_model)
    set_metadata(onnx_model, bundle_metadata(bundle, "fp32"))
    onnx_model.doc_string = f"edgecxr {bundle.model} ({bundle.spec.id}), FP32"
    check_standard(onnx_model)
    check_lstm_ops(onnx_model, expected_lstm)

    x, inputs = parity_inputs(bundle, manifest, parity_split, parity_images, seed, progress)
    ref = keras_predict(model, x, batch_size)

    final = bundle.default_path("onnx_fp32")
    tmp = candidate_path(final)
    try:
        write_model(onnx_model, tmp)
        probs = onnx_predict(tmp, x, batch_size)
        parity = parity_stats(ref, probs, atol)
        if not parity["passed"]:
            os.replace(tmp, rejected_path(final))
            raise GateFailedError(
                f"ONNX FP32 differs from Keras by up to {parity['max_abs_diff']:.3g} in probability "
                f"(tolerance {atol:g}; top-1 agreement {parity['top1_agreement']:.2%}) on {inputs['images']} "
                f"{inputs['source']} images; not published (kept as {rejected_path(final).name})"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)

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
        from edgecxr.export.fp16 import FP16_ATOL, export_fp16

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
