"""INT8 Q/DQ calibration: TensorRT-compatible graphs, keep-float, provenance, and the publish gate."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError, GateFailedError
from edgecxr.core.fileutil import read_json, sha256_file
from edgecxr.core.metadata import META_CALIBRATION, META_PRECISION, read_metadata
from edgecxr.stages.export.int8 import calibrate_bundle, quantize_qdq
from edgecxr.stages.export.qdq_check import check_tensorrt_qdq, resolve_keep_float, weight_quantization
from edgecxr.stages.gate.config import Gates

LENIENT = Gates(max_acc_drop=100.0, min_agreement=0.0, covid_sensitivity_not_lower=False)


def _random_images(bundle: Bundle, n: int = 8, seed: int = 0) -> np.ndarray:
    lo, hi = bundle.spec.output_range
    return np.random.default_rng(seed).uniform(lo, hi, (n, *bundle.spec.input_shape)).astype(np.float32)


def test_calibrate_real_images_is_tensorrt_compatible_and_traceable(exported_cnn, copy_bundle, shared_cxr, tmp_path):
    bundle = copy_bundle(exported_cnn)
    manifest = shared_cxr / "manifest.csv"
    section = calibrate_bundle(
        bundle, manifest, limit=12, verify=False, calib_manifest_out=tmp_path / "calib", progress=False
    )
    path = Bundle.load(bundle.dir).artifact("onnx_int8")
    model = onnx.load(str(path))
    assert check_tensorrt_qdq(model) == []
    assert section["tensorrt_compatible"] is True
    counts = {op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    weights = weight_quantization(model)
    assert len(weights["int8"]) == 5 and weights["float"] == []  # 3 Conv + 2 Gemm

    # provenance: the CSV is what bundle.json and the INT8 file point to, image by image
    (csv_path,) = (tmp_path / "calib").glob("*.csv")
    assert csv_path.name.endswith(f"-calib-{section['manifest_sha256'][:8]}.csv")
    assert csv_path.name == section["manifest"].rsplit("/", 1)[-1]
    assert hashlib.sha256(csv_path.read_bytes()).hexdigest() == section["manifest_sha256"]
    assert read_metadata(path)[META_CALIBRATION] == section["manifest_sha256"]
    assert read_metadata(path)[META_PRECISION] == "int8"
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 == section["images"] and sum(section["per_class"].values()) == 12
    assert {r["split"] for r in rows} == {"calib"} and len(set(section["per_class"].values()) - {3}) == 0
    for row in rows[:3]:
        assert sha256_file(shared_cxr / row["relative_path"]) == row["sha256"]
    sidecar = read_json(csv_path.with_suffix(".json"))
    assert sidecar["csv_sha256"] == section["manifest_sha256"] and sidecar["images"] == 12
    assert "class-balanced subset: 12 of" in sidecar["selection"]
    assert section["onnxruntime_version"] == ort.__version__ and section["method"] == "minmax"
    assert section["gate"] == {"skipped": "not gated on request; run `edgecxr verify` before deploying"}

    # runs in ONNX Runtime and stays near FP32
    x = _random_images(bundle, 4)
    fp32 = ort.InferenceSession(str(bundle.artifact("onnx_fp32")), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = np.abs(fp32.run(None, {"image": x})[0] - int8.run(None, {"image": x})[0]).max()
    assert 0 < diff < 0.3


def test_checker_flags_non_compliant_qdq(exported_cnn, tmp_path):
    """Asymmetric activations, per-tensor weights and int32 biases: all three reported."""
    bundle = Bundle.load(exported_cnn)
    bad = tmp_path / "bad.onnx"
    quantize_qdq(
        bundle.artifact("onnx_fp32"), bad, _random_images(bundle),
        symmetric=False, per_channel=False, quantize_bias=True, progress=False,
    )
    problems = check_tensorrt_qdq(bad)
    joined = "\n".join(problems)
    assert "is not 0 (asymmetric)" in joined
    assert "per-tensor" in joined
    assert "bias is quantized" in joined and "int32 quantization" in joined
    assert check_tensorrt_qdq(bundle.artifact("onnx_fp32")) == [
        "no QuantizeLinear/DequantizeLinear nodes: the model is not quantized"
    ]


def test_checker_flags_wrong_channel_axis(exported_cnn, tmp_path):
    bundle = Bundle.load(exported_cnn)
    good = tmp_path / "good.onnx"
    quantize_qdq(bundle.artifact("onnx_fp32"), good, _random_images(bundle), progress=False)
    model = onnx.load(str(good))
    assert check_tensorrt_qdq(model) == []
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    for attr in dq.attribute:
        if attr.name == "axis":
            attr.i = 1
    assert any("expected axis 0" in p for p in check_tensorrt_qdq(model))


@pytest.mark.parametrize("method,percentile", [("entropy", None), ("percentile", 99.99)])
def test_histogram_methods_in_chunks(exported_cnn, tmp_path, method, percentile):
    """Entropy/percentile collect a chunk at a time (CalibStridedMinMax) and stay TensorRT-compatible."""
    bundle = Bundle.load(exported_cnn)
    out = tmp_path / f"{method}.onnx"
    options = quantize_qdq(
        bundle.artifact("onnx_fp32"), out, _random_images(bundle, 8), method=method, batch_size=2,
        chunk_images=4, progress=False,
    )
    assert options["extra_options"]["CalibStridedMinMax"] == 2
    assert options["extra_options"].get("CalibPercentile") == percentile  # only the percentile method has one
    assert check_tensorrt_qdq(out) == []


def test_keep_float_aliases_and_names(exported_cnn, exported_lstm, tmp_path):
    cnn = Bundle.load(exported_cnn)
    model = onnx.load(str(cnn.artifact("onnx_fp32")))
    keep = resolve_keep_float(model, ["first-conv", "head"])
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    gemms = [n.name for n in model.graph.node if n.op_type == "Gemm"]
    assert keep == {"first-conv": convs[:1], "head": gemms}
    assert resolve_keep_float(model, [convs[1]]) == {convs[1]: [convs[1]]}
    with pytest.raises(BundleError, match="did you mean"):
        resolve_keep_float(model, [convs[1] + "x"])

    out = tmp_path / "keep.onnx"
    quantize_qdq(cnn.artifact("onnx_fp32"), out, _random_images(cnn), nodes_to_exclude=keep["first-conv"] + keep["head"], progress=False)
    weights = weight_quantization(onnx.load(str(out)))
    assert sorted(weights["float"]) == sorted([f"Conv:{convs[0]}"] + [f"Gemm:{g}" for g in gemms])
    assert check_tensorrt_qdq(out) == []

    lstm = Bundle.load(exported_lstm)
    lstm_model = onnx.load(str(lstm.artifact("onnx_fp32")))
    (lstm_node,) = resolve_keep_float(lstm_model, ["lstm"])["lstm"]
    assert lstm_node in [n.name for n in lstm_model.graph.node if n.op_type == "LSTM"]
    # head of the CNN-LSTM = the Gemm after the LSTM
    assert len(resolve_keep_float(lstm_model, ["head"])["head"]) == 1

    # activations: Q/DQ only on the inputs of nodes with a weight
    act = resolve_keep_float(lstm_model, ["activations"])["activations"]
    ops = {n.name: n.op_type for n in lstm_model.graph.node}
    assert act and {ops[n] for n in act} >= {"Relu", "LSTM"} and not {ops[n] for n in act} & {"Conv", "Gemm", "Softmax"}
    out = tmp_path / "act.onnx"
    quantize_qdq(lstm.artifact("onnx_fp32"), out, _random_images(lstm), nodes_to_exclude=act, progress=False)
    q = onnx.load(str(out))
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    readers = {n.op_type for n in q.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
               and any(producers.get(i) == "DequantizeLinear" for i in n.input)}
    # (Softmax is always float but reads the logits' Q/DQ, as before; the excluded nodes read float tensors)
    assert readers <= {"Conv", "Gemm", "MatMul", "Softmax"} and "Relu" not in readers and check_tensorrt_qdq(q) == []


def test_lstm_stays_float_and_model_is_compatible(exported_lstm, copy_bundle, synthetic_manifest, tmp_path):
    bundle = copy_bundle(exported_lstm)
    section = calibrate_bundle(
        bundle, synthetic_manifest, verify=True, verify_limit=12, gates=LENIENT,
        calib_manifest_out=tmp_path, progress=False,
    )
    assert any(w.startswith("LSTM:") for w in section["weights"]["float"])
    assert all(not w.startswith("LSTM:") for w in section["weights"]["int8"])
    assert section["tensorrt_compatible"] and section["gate"]["passed"]
    assert section["gate"]["artifacts"]["onnx_int8"]["path"].endswith("model.int8.onnx")
    assert section["per_class"] == {"covid": 4, "pneumonia": 8, "normal": 4}
    reloaded = Bundle.load(bundle.dir)
    assert reloaded.artifact("onnx_int8").is_file()
    assert reloaded.meta["calibration"]["sha256"] == sha256_file(reloaded.artifact("onnx_int8"))


def test_failing_gate_keeps_rejected_file_and_bundle_unchanged(exported_cnn, copy_bundle, synthetic_manifest, tmp_path):
    bundle = copy_bundle(exported_cnn)
    before = bundle.path.read_text()
    strict = Gates(max_prob_diff=1e-9)  # INT8 cannot reproduce FP32 probabilities to 1e-9
    with pytest.raises(GateFailedError, match=r"max \|probability difference\| vs keras") as info:
        calibrate_bundle(
            bundle, synthetic_manifest, gates=strict, verify_limit=8, calib_manifest_out=tmp_path, progress=False
        )
    assert "model.int8.rejected.onnx" in str(info.value)
    assert not bundle.default_path("onnx_int8").exists()
    rejected = bundle.dir / "model.int8.rejected.onnx"
    assert rejected.is_file() and check_tensorrt_qdq(rejected) == []
    note = read_json(bundle.dir / "model.int8.rejected.json")
    assert note["rejected"] and note["gate"]["passed"] is False
    assert bundle.path.read_text() == before
    assert not list(bundle.dir.glob(".*candidate*"))


def test_calibrate_needs_fp32_onnx(keras_cnn_bundle, copy_bundle, synthetic_manifest):
    with pytest.raises(BundleError, match="edgecxr export"):
        calibrate_bundle(copy_bundle(keras_cnn_bundle), synthetic_manifest, verify=False, progress=False)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_methods_with_ragged_image_count(exported_cnn, tmp_path, method):
    """7 images in batches of 4 (ragged last batch) used to fail inside quantize_static."""
    from edgecxr.stages.export.calib_set import equal_batch_size

    bundle = Bundle.load(exported_cnn)
    out = tmp_path / f"{method}.int8.onnx"
    options = quantize_qdq(
        bundle.artifact("onnx_fp32"), out, _random_images(bundle, n=7), method=method, batch_size=4,
        chunk_images=4, progress=False,
    )
    assert out.is_file() and check_tensorrt_qdq(onnx.load(str(out))) == []
    assert options["batch_size"] == 1  # 7 is prime
    assert equal_batch_size(127, 8) == 1 and equal_batch_size(128, 8) == 8 and equal_batch_size(126, 8) == 7


def test_keep_float_depthwise_selects_grouped_convs():
    """`depthwise` = Conv nodes with group > 1 (Xception's depthwise convolutions); none -> clear error."""
    from onnx import TensorProto, helper

    def conv(name: str, group: int) -> onnx.NodeProto:
        return helper.make_node("Conv", ["x", f"w_{name}"], [f"y_{name}"], name=name, group=group)

    graph = helper.make_graph(
        [conv("dw", 8), conv("pw", 1), conv("dw2", 4)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y_pw", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph)
    assert resolve_keep_float(model, ["depthwise"]) == {"depthwise": ["dw", "dw2"]}
    plain = helper.make_model(helper.make_graph([conv("pw", 1)], "g", graph.input, graph.output))
    with pytest.raises(BundleError, match="no grouped"):
        resolve_keep_float(plain, ["depthwise"])


def test_the_calibration_record_defaults_to_the_bundle_not_the_working_folder(exported_cnn, copy_bundle,
                                                                                synthetic_manifest, tmp_path, monkeypatch):
    bundle = copy_bundle(exported_cnn)
    monkeypatch.chdir(tmp_path)
    section = calibrate_bundle(bundle, synthetic_manifest, limit=8, verify=False, progress=False)
    assert not (tmp_path / "calibration").exists()
    (csv_path,) = (bundle.dir / "calibration").glob("*.csv")
    assert section["manifest"] == f"calibration/{csv_path.name}"  # relative to the bundle: it travels with it
    assert section["sidecar"] == f"calibration/{csv_path.stem}.json"
    assert csv_path.name == f"{bundle.model}-{section['fp32_sha256'][:8]}-minmax-calib-{section['manifest_sha256'][:8]}.csv"
