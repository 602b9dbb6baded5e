"""Keras -> ONNX FP32 export: I/O contract, metadata, LSTM mapping, parity check and its failure path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import ArgumentError, BundleError, GateFailedError
from edgecxr.core.metadata import (
    META_BUNDLE_FORMAT,
    META_CLASSES,
    META_MODEL,
    META_PRECISION,
    META_PREPROCESS,
    META_VERSION,
    read_metadata,
)
from edgecxr.core.spec import PreprocessSpec
from edgecxr.stages.export.keras_io import check_lstm_ops
from edgecxr.stages.export.onnx import export_bundle
from edgecxr.stages.export.onnx_tools import ExportError, op_counts


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_cnn_export_io_metadata_and_parity(exported_cnn):
    bundle = Bundle.load(exported_cnn)
    path = bundle.artifact("onnx_fp32")
    model = onnx.load(str(path))
    onnx.checker.check_model(model)

    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("image", "probs")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 32, 32, 3]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["N", 4]
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)

    meta = read_metadata(path)
    assert meta[META_CLASSES] == bundle.classes
    assert PreprocessSpec.from_dict(meta[META_PREPROCESS]) == bundle.spec
    assert meta[META_MODEL] == "coronet"
    assert meta[META_BUNDLE_FORMAT] == "edgecxr-bundle/1"
    assert meta[META_VERSION] and meta[META_PRECISION] == "fp32"

    section = bundle.meta["export"]
    assert section["parity"]["passed"] and section["parity"]["max_abs_diff"] <= 1e-4
    assert section["parity"]["top1_agreement"] == 1.0
    assert section["parity_inputs"]["source"] == "random" and "not the behaviour" in section["parity_inputs"]["note"]
    assert section["lstm_ops"] == 0 and section["opset"] == 17

    # dynamic batch: 1 and 5 both run and agree row by row
    x = np.random.default_rng(3).uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)
    sess = _session(path)
    five = sess.run(None, {"image": x})[0]
    one = sess.run(None, {"image": x[2:3]})[0]
    assert five.shape == (5, 4) and np.allclose(five.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(one[0], five[2], atol=1e-6)


def test_optimisation_fuses_dense_bias_into_gemm(exported_cnn):
    """ORT basic optimisation turns MatMul+Add into Gemm (float bias the INT8 quantiser leaves alone)."""
    bundle = Bundle.load(exported_cnn)
    counts = op_counts(onnx.load(str(bundle.artifact("onnx_fp32"))))
    assert bundle.meta["export"]["optimization"].startswith("onnxruntime")
    assert counts.get("Gemm") == 2 and "Add" not in counts and "MatMul" not in counts


def test_lstm_becomes_exactly_one_lstm_op(exported_lstm):
    bundle = Bundle.load(exported_lstm)
    model = onnx.load(str(bundle.artifact("onnx_fp32")))
    counts = op_counts(model)
    assert counts.get("LSTM") == 1
    assert "Loop" not in counts and "Scan" not in counts
    assert bundle.meta["export"]["lstm_ops"] == 1
    assert bundle.meta["export"]["parity"]["max_abs_diff"] <= 1e-4
    assert read_metadata(bundle.artifact("onnx_fp32"))[META_CLASSES] == ["covid", "pneumonia", "normal"]


def test_check_lstm_ops_names_the_problem(exported_lstm):
    model = onnx.load(str(Bundle.load(exported_lstm).artifact("onnx_fp32")))
    check_lstm_ops(model, 1)
    with pytest.raises(ExportError, match=r"1 LSTM op\(s\).*single ONNX LSTM"):
        check_lstm_ops(model, 2)
    cnn_like = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    with pytest.raises(ExportError, match="has 1 LSTM layer"):
        check_lstm_ops(cnn_like, 1)


def test_parity_on_real_val_images(keras_cnn_bundle, copy_bundle, shared_cxr):
    bundle = copy_bundle(keras_cnn_bundle)
    section = export_bundle(
        bundle, manifest=shared_cxr / "manifest.csv", parity_images=8, fp16=False, progress=False
    )
    src = section["parity_inputs"]
    assert src["source"] == "manifest" and src["split"] == "val" and src["images"] == 8
    assert len(src["manifest_sha256"]) == 64
    assert section["parity"]["passed"]
    assert Bundle.load(bundle.dir).artifact("onnx_fp16", must_exist=False) is None


def test_parity_failure_publishes_nothing(keras_cnn_bundle, copy_bundle):
    bundle = copy_bundle(keras_cnn_bundle)
    with pytest.raises(GateFailedError, match="differs from Keras"):
        export_bundle(bundle, atol=1e-12, fp16=False, progress=False)
    assert not bundle.default_path("onnx_fp32").exists()
    assert (bundle.dir / "model.rejected.onnx").is_file()
    reloaded = Bundle.load(bundle.dir)
    assert "onnx_fp32" not in reloaded.meta["artifacts"] and "export" not in reloaded.meta
    assert not list(bundle.dir.glob(".*candidate*"))


def test_export_needs_keras_artifact(tmp_path):
    from edgecxr.data.manifest import CLASSES_4
    from edgecxr.models import default_spec

    bundle = Bundle.create(tmp_path / "b", "coronet", CLASSES_4, default_spec("coronet").with_size(32))
    bundle.save()
    with pytest.raises(BundleError, match="no keras artifact"):
        export_bundle(bundle, progress=False)


def test_parity_split_without_manifest_is_an_error(exported_cnn):
    with pytest.raises(ArgumentError, match="needs a manifest"):
        export_bundle(Bundle.load(exported_cnn), parity_split="val", progress=False)


def test_modules_import_without_tensorflow():
    """The export/calibrate/verify modules and their CLI must not pull TensorFlow in at import."""
    code = (
        "import sys, edgecxr.stages.export.onnx, edgecxr.stages.export.fp16, edgecxr.stages.export.int8, "
        "edgecxr.stages.gate.run, edgecxr.cli.export, edgecxr.cli.calibrate, edgecxr.cli.verify; "
        "import json; print(json.dumps([m for m in ('tensorflow', 'tf2onnx', 'keras') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
