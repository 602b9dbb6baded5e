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
per-class counts) under calibration/, named by its own content hash; that sha256 goes into
bundle.json["calibration"] and into the INT8 file's metadata, so every INT8 model is traceable to
the exact images it was calibrated on.

Publishing: the INT8 file is written under a temporary name, checked for TensorRT compatibility
and run through the accuracy gate (`edgecxr.verify.run_gate`) against the FP32 reference; only
then is it moved to model.int8.onnx and registered. A failing file is kept as
model.int8.rejected.onnx (with model.int8.rejected.json explaining why) and GateFailedError raised.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import difflib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecxr import __version__
from edgecxr.bundle import Bundle
from edgecxr.data.manifest import Record, manifest_sha256, map_label
from edgecxr.errors import BundleError, DataError, EdgeCXRError, GateFailedError
from edgecxr.export.onnx import (
    META_CALIBRATION,
    STANDARD_DOMAINS,
    bundle_metadata,
    candidate_path,
    op_counts,
    opset_of,
    rejected_path,
    set_metadata,
)
from edgecxr.fileutil import atomic_write_bytes, atomic_write_text, sha256_file, write_json

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from edgecxr.verify import Gates, VerifyResult

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_PERCENTILE = 99.99
#: Aliases accepted by --keep-float besides node names.
KEEP_FLOAT_ALIASES = ("first-conv", "head", "lstm", "depthwise")
#: Op types never quantized (see module docstring).
ALWAYS_FLOAT_OPS = ("Softmax", "LogSoftmax")
#: Ops whose input 1 is a weight that TensorRT wants per-channel, and the input index of their bias.
_WEIGHT_OPS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "MatMul": None}
#: Calibration images per collection pass (bounds the memory of the calibrators' stored activations).
DEFAULT_CHUNK_IMAGES = 32
CALIBRATION_DIR = Path("calibration")
CALIBRATION_FORMAT = "edgecxr-calibration/1"


# -- TensorRT compatibility -------------------------------------------------------------------------


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """Value of an initializer or Constant node output, else None."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _axis(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(attr.i)
    return 1  # ONNX default for QuantizeLinear/DequantizeLinear


def _weight_axis(consumer: onnx.NodeProto, weight_rank: int) -> int:
    """Output-channel axis of a Conv/Gemm/MatMul weight (the axis per-channel scales must follow)."""
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "Gemm":
        trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return weight_rank - 1  # MatMul: (..., K, N)


def check_tensorrt_qdq(model: str | Path | onnx.ModelProto) -> list[str]:
    """Every reason TensorRT's explicit-quantization path would reject or mis-run this Q/DQ model.

    Checks: opset >= 13; Q/DQ in the standard domain; every QuantizeLinear/DequantizeLinear has a
    constant, positive scale and an explicit int8 zero point equal to 0 (a missing zero point means
    uint8); weights of Conv/ConvTranspose/Gemm/MatMul are dequantized per-channel (1-D scale, one
    per output channel, `axis` on that channel); no bias is quantized (no DequantizeLinear feeds a
    Conv/Gemm bias, no int32 DequantizeLinear anywhere). An empty list means compatible.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    problems: list[str] = []
    if opset_of(model) < 13:
        problems.append(f"opset {opset_of(model)} < 13: per-channel Q/DQ needs opset 13+")
    producers = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: the model is not quantized")
    for node in qdq:
        label = f"{node.op_type} '{node.name}'"
        if node.domain not in STANDARD_DOMAINS:
            problems.append(f"{label}: domain '{node.domain}' (TensorRT reads only standard ONNX Q/DQ)")
        scale = _constant(model, node.input[1])
        if scale is None:
            problems.append(f"{label}: scale is not a constant")
        elif not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            problems.append(f"{label}: scale has non-positive or non-finite values")
        zp = _constant(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is None:
            problems.append(f"{label}: no explicit zero point (defaults to uint8); TensorRT needs int8 zero point 0")
        elif zp.dtype == np.int32:
            problems.append(f"{label}: int32 quantization (a quantized bias); TensorRT wants float bias")
        elif zp.dtype != np.int8:
            problems.append(f"{label}: zero point dtype {zp.dtype}, TensorRT needs int8")
        elif np.any(zp != 0):
            problems.append(f"{label}: zero point {zp.ravel()[:4].tolist()} is not 0 (asymmetric); TensorRT needs symmetric")
    for node in model.graph.node:
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2:
            continue
        label = f"{node.op_type} '{node.name}'"
        dq = producers.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            weight = _constant(model, dq.input[0])
            if weight is None:  # Q->DQ on a float weight: look through the QuantizeLinear
                q = producers.get(dq.input[0])
                weight = _constant(model, q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            if weight is not None:
                scale = _constant(model, dq.input[1])
                axis = _axis(dq) % max(weight.ndim, 1)
                want = _weight_axis(node, weight.ndim)
                if scale is None or scale.ndim != 1:
                    problems.append(f"{label}: weight is quantized per-tensor; TensorRT needs per-channel scales")
                elif axis != want or scale.size != weight.shape[want]:
                    problems.append(
                        f"{label}: weight scales on axis {axis} (size {scale.size}); expected axis {want} "
                        f"(size {weight.shape[want]}, the output channels)"
                    )
        bias_index = _WEIGHT_OPS[node.op_type]
        if bias_index is not None and len(node.input) > bias_index and node.input[bias_index]:
            bias_src = producers.get(node.input[bias_index])
            if bias_src is not None and bias_src.op_type == "DequantizeLinear":
                problems.append(f"{label}: bias is quantized; TensorRT wants a float bias (QuantizeBias=False)")
    return problems


# -- node selection -----------------------------------------------------------------------------------


def _conv_group(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def resolve_keep_float(model: onnx.ModelProto, items: Iterable[str]) -> dict[str, list[str]]:
    """Map --keep-float items (aliases or node names) to node names; unknown names are an error.

    first-conv: the first Conv in graph (topological) order. head: MatMul/Gemm nodes after the last
    Conv or LSTM. lstm: LSTM nodes. depthwise: grouped Conv nodes (group > 1; Xception's depthwise
    convolutions, one 3x3 filter per channel, are the layers known to quantize worst). Anything
    else must be a node name of the FP32 graph.
    """
    nodes = list(model.graph.node)
    names = {n.name for n in nodes}
    out: dict[str, list[str]] = {}
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item == "first-conv":
            convs = [n.name for n in nodes if n.op_type == "Conv"]
            if not convs:
                raise BundleError("--keep-float first-conv: the model has no Conv node")
            out[item] = convs[:1]
        elif item == "head":
            last = max((i for i, n in enumerate(nodes) if n.op_type in ("Conv", "LSTM")), default=-1)
            head = [n.name for n in nodes[last + 1 :] if n.op_type in ("MatMul", "Gemm")]
            if not head:
                raise BundleError("--keep-float head: no MatMul/Gemm node after the last Conv/LSTM")
            out[item] = head
        elif item == "lstm":
            out[item] = [n.name for n in nodes if n.op_type == "LSTM"]
        elif item == "depthwise":
            grouped = [n.name for n in nodes if n.op_type == "Conv" and _conv_group(n) > 1]
            if not grouped:
                raise BundleError("--keep-float depthwise: the model has no grouped (depthwise) Conv node")
            out[item] = grouped
        elif item in names:
            out[item] = [item]
        else:
            close = difflib.get_close_matches(item, sorted(names), n=3)
            hint = f"; did you mean {close}?" if close else f"; aliases: {list(KEEP_FLOAT_ALIASES)}"
            raise BundleError(f"--keep-float: no node named {item!r} in the FP32 graph{hint}")
    return out


# -- calibration data -------------------------------------------------------------------------------


def _reader_base() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


def make_data_reader(x: np.ndarray, batch_size: int = 8, input_name: str = "image", progress: bool | str = True) -> Any:
    """An onnxruntime CalibrationDataReader over preprocessed images, with a tqdm progress bar.

    Supports `set_range` and `len` (in batches), which quantize_static uses to collect activations
    a chunk at a time (CalibStridedMinMax) so memory stays bounded for large models.
    """
    from tqdm.auto import tqdm

    class ArrayDataReader(_reader_base()):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
            self.start, self.end, self.pos = 0, len(self.batches), 0
            desc = progress if isinstance(progress, str) else "calibrating"
            self.bar = tqdm(total=len(x), desc=desc, unit="img", disable=None if progress else True, leave=False)

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end, self.pos = start_index, min(end_index, len(self.batches)), start_index

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= self.end:
                return None
            batch = self.batches[self.pos]
            self.pos += 1
            self.bar.update(len(batch))
            return {input_name: np.ascontiguousarray(batch, dtype=np.float32)}

        def rewind(self) -> None:
            self.start, self.end, self.pos = 0, len(self.batches), 0

        def close(self) -> None:
            self.bar.close()

    return ArrayDataReader()


def equal_batch_size(n_images: int, batch_size: int) -> int:
    """Largest divisor of n_images that is <= batch_size (equal batches for histogram calibration)."""
    return max(d for d in range(1, max(1, min(batch_size, n_images)) + 1) if n_images % d == 0)


def _stride(n_batches: int, max_batches: int) -> int | None:
    """Largest divisor of n_batches <= max_batches (quantize_static needs an exact division)."""
    if n_batches <= max_batches:
        return None
    return max(d for d in range(1, max_batches + 1) if n_batches % d == 0)


def _image_sha(rec: Record) -> str:
    sha = sha256_file(rec.path)
    if rec.sha256 and rec.sha256 != sha:
        raise DataError(f"{rec.path}: sha256 {sha[:12]}… differs from the manifest's {rec.sha256[:12]}… (file changed?)")
    return sha


def write_calibration_manifest(
    records: Sequence[Record],
    classes: Sequence[str],
    *,
    source_manifest: str | Path,
    split: str,
    header: dict[str, Any],
    out: str | Path | None = None,
    stem: str = "calibration",
) -> tuple[Path, Path, str]:
    """Write the calibration set as CSV + JSON sidecar; returns (csv, json, csv sha256).

    The CSV lists relative paths (relative to the source manifest's folder, as in the source
    manifest), the sha256 of every image file (checked against the source manifest's), labels,
    the mapped class and the split. With `out` a directory (or None: ./calibration/), the file is
    named `<stem>-<split>-<sha8>.csv`, i.e. by content, so a later calibration never overwrites
    the list an earlier INT8 model was made from.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["relative_path", "sha256", "label", "class", "split", "patient_id"])
    for rec in records:
        writer.writerow([rec.relative_path, _image_sha(rec), rec.label, map_label(rec.label, classes), rec.split, rec.patient_id])
    data = buf.getvalue().encode("utf-8")
    sha = hashlib.sha256(data).hexdigest()
    target = Path(out) if out is not None else CALIBRATION_DIR
    csv_path = target if target.suffix.lower() == ".csv" else target / f"{stem}-{split}-{sha[:8]}.csv"
    atomic_write_bytes(csv_path, data)
    sidecar = {
        "format": CALIBRATION_FORMAT,
        "csv": csv_path.name,
        "csv_sha256": sha,
        "source_manifest": str(source_manifest),
        "source_manifest_sha256": manifest_sha256(source_manifest),
        "data_root": str(Path(source_manifest).resolve().parent),
        "split": split,
        "images": len(records),
        **header,
    }
    json_path = write_json(csv_path.with_suffix(".json"), sidecar)
    return csv_path, json_path, sha


def per_class_counts(records: Sequence[Record], classes: Sequence[str]) -> dict[str, int]:
    counts = {c: 0 for c in classes}
    for rec in records:
        counts[map_label(rec.label, classes)] += 1
    return counts


# -- quantization ------------------------------------------------------------------------------------


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


def weight_quantization(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Nodes with weights, split by whether their weight arrives through a DequantizeLinear.

    Shows at a glance what --keep-float did and that ONNX Runtime leaves the LSTM in float.
    """
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    out: dict[str, list[str]] = {"int8": [], "float": []}
    for node in model.graph.node:
        if node.op_type in (*_WEIGHT_OPS, "LSTM", "GRU", "RNN") and len(node.input) > 1:
            kind = "int8" if producers.get(node.input[1]) == "DequantizeLinear" else "float"
            out[kind].append(f"{node.op_type}:{node.name}")
    return out


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
        calib_manifest_out: folder or .csv path for the calibration manifest (default calibration/).
        batch_size: images per calibration batch.
        progress: progress bars.

    Returns:
        The "calibration" section written into bundle.json.

    Raises:
        GateFailedError: the INT8 model is not TensorRT-compatible or fails the gate; it is kept
            as model.int8.rejected.onnx, bundle.json is not changed.
    """
    import onnx
    import onnxruntime as ort

    from edgecxr.data.manifest import read_manifest, select
    from edgecxr.verify import load_split, run_gate

    if verify and verify_split == split:
        raise BundleError(f"the gate must score held-out images, not the calibration split {split!r}")
    t0 = time.perf_counter()
    fp32_path = bundle.artifact("onnx_fp32")
    fp32_model = onnx.load(str(fp32_path))
    keep = resolve_keep_float(fp32_model, keep_float)
    excluded = list(dict.fromkeys(name for names in keep.values() for name in names))

    records, x, _ = load_split(bundle, manifest, split, limit, progress)
    split_size = len(select(read_manifest(manifest), split))
    counts = per_class_counts(records, bundle.classes)
    csv_path, json_path, calib_sha = write_calibration_manifest(
        records,
        bundle.classes,
        source_manifest=manifest,
        split=split,
        out=calib_manifest_out,
        stem=bundle.dir.resolve().name,
        header={
            "bundle": str(bundle.dir),
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

    final = bundle.default_path("onnx_int8")
    tmp = candidate_path(final)
    try:
        options = quantize_qdq(
            fp32_path,
            tmp,
            x,
            method=method,
            percentile=percentile,
            nodes_to_exclude=excluded,
            batch_size=batch_size,
            progress=progress,
        )
        model = onnx.load(str(tmp))
        set_metadata(model, {**bundle_metadata(bundle, "int8"), META_CALIBRATION: calib_sha})
        model.doc_string = f"edgecxr {bundle.model} ({bundle.spec.id}), INT8 Q/DQ, calibration {calib_sha[:12]}"
        atomic_write_bytes(tmp, model.SerializeToString())
        section: dict[str, Any] = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": method,
            **({"percentile": percentile} if method == "percentile" else {}),
            "split": split,
            "images": len(records),
            "per_class": counts,
            "manifest": _display_path(csv_path),
            "manifest_sha256": calib_sha,
            "sidecar": _display_path(json_path),
            "source_manifest_sha256": manifest_sha256(manifest),
            "keep_float": keep,
            "excluded_nodes": [*options["always_float"], *[n for n in excluded if n not in options["always_float"]]],
            "quantization": options,
            "onnxruntime_version": ort.__version__,
            "onnx_version": onnx.__version__,
            "edgecxr_version": __version__,
            "fp32_sha256": sha256_file(fp32_path),
            "ops": op_counts(model),
            "weights": weight_quantization(model),
        }
        violations = check_tensorrt_qdq(model)
        section["tensorrt_compatible"] = not violations
        if violations:
            section["tensorrt_violations"] = violations
            _reject(tmp, final, section, None)
            raise GateFailedError(
                "the INT8 model is not TensorRT-compatible: " + "; ".join(violations[:5])
                + (f" (+{len(violations) - 5} more)" if len(violations) > 5 else "")
                + f"; kept as {rejected_path(final).name}"
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
            section["gate"]["artifacts"]["onnx_int8"]["path"] = str(final)
            if not result.passed:
                _reject(tmp, final, section, result)
                result.raise_for_failures(f"INT8 model not published (kept as {rejected_path(final).name})")
        else:
            section["gate"] = {"skipped": "--no-verify; run `edgecxr verify` before deploying"}
        section["sha256"] = sha256_file(tmp)
        section["duration_s"] = round(time.perf_counter() - t0, 2)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    bundle.set_artifact("onnx_int8", final)
    bundle.update(calibration=section)
    return section


def _display_path(path: Path) -> str:
    """Path as recorded in bundle.json: relative to the working directory when below it (the repo's
    calibration/ folder), else absolute."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    return resolved.relative_to(cwd).as_posix() if resolved.is_relative_to(cwd) else str(resolved)


def _reject(tmp: Path, final: Path, section: dict[str, Any], result: VerifyResult | None) -> None:
    """Keep a failing INT8 file beside the bundle with a JSON note of why it was rejected."""
    rejected = rejected_path(final)
    os.replace(tmp, rejected)
    note = {"rejected": True, "calibration": section}
    if result is not None:
        note["gate"] = result.to_dict()
    atomic_write_text(rejected.with_suffix(".json"), json.dumps(note, indent=2, sort_keys=True, default=str) + "\n")
