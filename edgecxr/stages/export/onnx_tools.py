"""ONNX graph helpers shared by the FP32, FP16 and INT8 exports: op counts, opsets, batch
dimension, optimisation, parity statistics.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.fileutil import atomic_write_bytes
from edgecxr.core.lazy import require
from edgecxr.core.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import onnx
from edgecxr.core.metadata import INPUT_NAME, OUTPUT_NAME
from edgecxr.stages.metrics import agreement

log = logging.getLogger(__name__)

#: Symbolic name of the dynamic batch dimension (TensorRT profiles and Netron show it).
BATCH_DIM = "N"


DEFAULT_OPSET = 17


#: Per-channel symmetric Q/DQ (the INT8 path) needs opset >= 13.
MIN_OPSET = 13


#: ONNX domains an exported graph may use (TensorRT's parser reads only standard ops).
STANDARD_DOMAINS = ("", "ai.onnx")


class ExportError(EdgeCXRError):
    """The model cannot be exported in a form the deployment targets accept."""


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type of the main graph, for bundle.json and quick diffs between exports."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


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
        from edgecxr.data.dataset import load_arrays, subset_records
        from edgecxr.data.manifest import manifest_sha256, read_manifest, select

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
        "note": "random inputs (no manifest): proves the conversion, not the behaviour on X-rays",
    }


def parity_stats(reference: np.ndarray, candidate: np.ndarray, atol: float) -> dict[str, Any]:

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


#: Random parity inputs when no manifest is given.
DEFAULT_RANDOM_IMAGES = 16
