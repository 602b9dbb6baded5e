"""INT8 precision fallback: graph surgery, sensitivity ranking, the greedy search on val, FP32 from FP16."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgecxr.core.errors import ArgumentError, BundleError
from edgecxr.core.fileutil import read_json
from edgecxr.stages.export.fp32 import ensure_fp32
from edgecxr.stages.export.int8 import calibrate_bundle, quantize_qdq
from edgecxr.stages.export.qdq_check import check_tensorrt_qdq
from edgecxr.stages.export.sensitivity import (
    Scorer,
    _predict,
    analyse,
    greedy_fallback,
    hybrid,
    quantized_nodes,
)
from edgecxr.stages.gate.config import Gates

#: a gate only FP32 itself passes: the search must end with every quantized node in float
EXACT = Gates(max_acc_drop=0.0, min_agreement=1.0, covid_sensitivity_not_lower=True, max_prob_diff=1e-6)


def _images(bundle, n: int = 16, seed: int = 0) -> np.ndarray:
    lo, hi = bundle.spec.output_range
    return np.random.default_rng(seed).uniform(lo, hi, (n, *bundle.spec.input_shape)).astype(np.float32)


@pytest.fixture
def models(exported_cnn, copy_bundle, tmp_path):
    bundle = copy_bundle(exported_cnn)
    fp32_path = bundle.artifact("onnx_fp32")
    qdq_path = tmp_path / "q.onnx"
    quantize_qdq(fp32_path, qdq_path, _images(bundle, 16, 1), progress=False)
    return bundle, onnx.load(str(fp32_path)), onnx.load(str(qdq_path))


def test_floating_every_quantized_node_gives_back_the_fp32_model(models):
    bundle, fp32, qdq = models
    weighted = quantized_nodes(qdq)
    assert weighted and all(n.op_type in ("Conv", "Gemm", "MatMul") for n in weighted)
    nodes = quantized_nodes(qdq, weighted_only=False)
    assert len(nodes) > len(weighted)  # activation-only nodes (Add, pooling) read Q/DQ too
    x = _images(bundle)
    all_float = hybrid(qdq, fp32, [n.name for n in nodes])
    assert not [n for n in all_float.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in
                {i for m in all_float.graph.node if m.name in {k.name for k in nodes} for i in m.input}]
    assert np.abs(_predict(all_float, x) - _predict(fp32, x)).max() < 1e-5
    assert np.abs(_predict(qdq, x) - _predict(fp32, x)).max() > 1e-4  # the quantized model really differs
    one = hybrid(qdq, fp32, [nodes[0].name])
    assert len(one.graph.node) < len(qdq.graph.node)  # its weight's and input's Q/DQ pruned
    with pytest.raises(BundleError, match="no FP32 counterpart"):
        hybrid(qdq, onnx.ModelProto(graph=onnx.GraphProto()), [nodes[0].name])


def test_ranking_and_greedy_search_until_the_gate_passes(models):
    bundle, fp32, qdq = models
    x = _images(bundle, 16, 2)
    y = np.arange(16) % len(bundle.classes)
    scorer = Scorer(fp32, x, y, bundle.classes, EXACT)
    full, rows = analyse(qdq, fp32, scorer, alone=True, weighted_only=False)
    assert full.passed is False
    assert sorted(r.name for r in rows) == sorted(n.name for n in quantized_nodes(qdq, weighted_only=False))
    assert all(r.alone_agreement is not None and r.kept_float_mean_diff >= 0 for r in rows)
    gains = [(-r.kept_float_gain, r.kept_float_mean_diff) for r in rows]
    assert gains == sorted(gains)  # most costly first
    chosen, history = greedy_fallback(qdq, fp32, scorer, rows)
    assert chosen == [r.name for r in rows]  # only FP32 itself passes an exact gate
    assert [h["passed"] for h in history] == [False] * len(rows) + [True]
    with pytest.raises(BundleError, match="even with 1 node"):
        greedy_fallback(qdq, fp32, scorer, rows, max_nodes=1)
    lenient = Scorer(fp32, x, y, bundle.classes, Gates(max_acc_drop=100.0, min_agreement=0.0,
                                                       covid_sensitivity_not_lower=False))
    assert greedy_fallback(qdq, fp32, lenient, rows)[0] == []  # passing as it is: nothing kept in float


def test_calibrate_fallback_auto_chooses_on_val_and_gates_on_test(exported_cnn, copy_bundle, synthetic_manifest,
                                                                   tmp_path):
    bundle = copy_bundle(exported_cnn)
    lines: list[str] = []
    # Agreement must be perfect on val and test; how many nodes that takes depends on the calibration.
    strict = Gates(max_acc_drop=0.0, min_agreement=1.0, covid_sensitivity_not_lower=True)
    section = calibrate_bundle(bundle, synthetic_manifest, gates=strict, fallback="auto", explain=True,
                               calib_manifest_out=tmp_path, progress=False, log=lines.append)
    fb = section["fallback"]
    assert fb["mode"] == "auto" and fb["selected_on"] == "val" and fb["images"] == 16
    assert fb["rank"] == "error" and fb["scope"] == "all"  # the default: one-pass ranking, activation-only nodes too
    assert all(isinstance(n["own_nsr"], float) and n["why"] for n in fb["float_nodes"])
    names = [n["name"] for n in fb["float_nodes"]]
    assert set(names) <= set(section["excluded_nodes"])
    assert fb["search"][0]["stage"] == "fully quantized" and fb["search"][0]["float_nodes"] == 0
    assert (fb["search"][0]["passed"] is True) == (not names)
    assert not names or fb["confirmation"][-1]["passed"] is True
    assert section["gate"]["split"] == "test" and section["gate"]["passed"] is True  # the publication gate, once
    report = read_json(tmp_path / fb["report"]["json"])
    assert report["ranking"] and all(r["output_nsr"] is not None for r in report["ranking"])  # explain: accumulated
    assert (tmp_path / fb["report"]["markdown"]).is_file()
    assert any("ranking the quantized nodes on val" in line for line in lines)
    assert check_tensorrt_qdq(bundle.artifact("onnx_int8")) == []


def test_fallback_never_chooses_on_the_gate_or_calibration_split(exported_cnn, copy_bundle, synthetic_manifest):
    bundle = copy_bundle(exported_cnn)
    for split in ("test", "calib"):
        with pytest.raises(ArgumentError, match="choose on their own split"):
            calibrate_bundle(bundle, synthetic_manifest, fallback="auto", select_split=split, progress=False)
    with pytest.raises(BundleError, match="unknown fallback"):
        calibrate_bundle(bundle, synthetic_manifest, fallback="sometimes", progress=False)


def test_a_bundle_with_only_fp16_gets_a_widened_fp32_recorded_as_derived(exported_cnn, copy_bundle):
    bundle = copy_bundle(exported_cnn)
    bundle.artifact("onnx_fp32").unlink()
    bundle.meta["artifacts"].pop("onnx_fp32")
    bundle.save()
    path = ensure_fp32(bundle)
    assert path == bundle.default_path("onnx_fp32")
    fp32 = onnx.load(str(path))
    assert all(t.data_type != onnx.TensorProto.FLOAT16 for t in fp32.graph.initializer)
    x = _images(bundle)
    fp16 = onnx.load(str(bundle.artifact("onnx_fp16")))
    assert np.abs(_predict(fp32, x) - _predict(fp16, x)).max() < 1e-3
    record = bundle.meta["export"]["fp32_from_fp16"]
    assert record["source"] == "model.fp16.onnx" and record["max_abs_diff_vs_fp16"] < 1e-3
    assert ensure_fp32(bundle) == path  # an existing FP32 model is used as it is


def test_augmented_views_add_calibration_inputs_from_the_calib_split_only(exported_cnn, copy_bundle,
                                                                          synthetic_manifest, tmp_path):
    from edgecxr.stages.export.calib_set import with_views

    bundle = copy_bundle(exported_cnn)
    x = _images(bundle, 4)
    more = with_views(x, 2, bundle.spec.scale, bundle.spec.offset)
    assert more.shape == (12, *x.shape[1:]) and np.array_equal(more[:4], x)
    lo, hi = bundle.spec.output_range
    assert more.min() >= lo - 1e-6 and more.max() <= hi + 1e-6 and not np.allclose(more[4:8], x)
    section = calibrate_bundle(bundle, synthetic_manifest, verify=False, views=2, calib_manifest_out=tmp_path,
                               progress=False)
    assert section["images"] == 16 and section["augmented_views"] == 2 and section["calibration_inputs"] == 48


def test_the_gate_prefers_the_trained_models_stored_reference_over_a_widened_fp32(exported_cnn, copy_bundle):
    from edgecxr.runtime.backends import backends
    from edgecxr.stages.gate.reference import STORED_KEY, STORED_REFERENCE, _pick_reference

    bundle = copy_bundle(exported_cnn)
    bundle.meta["artifacts"].pop("keras")
    (bundle.dir / STORED_REFERENCE).write_text("{}")
    assert _pick_reference(bundle, "auto", backends()) == "onnx_fp32"  # a trained FP32 ONNX is the reference
    bundle.meta["export"] = {**bundle.meta.get("export", {}), "fp32_from_fp16": {"source": "model.fp16.onnx"}}
    assert _pick_reference(bundle, "auto", backends()) == STORED_KEY
    assert _pick_reference(bundle, "onnx_fp32", backends()) == "onnx_fp32"  # still there when asked for


def _fragile(bundle, tmp_path, zero_channel_bias: float):
    """The tiny CNN made fragile where FP32 does not notice. Channel 0 of the first conv becomes the
    constant `zero_channel_bias`, the depthwise conv ignores channel 0, and the pointwise conv reads
    the depthwise's channel 0 (always 0) with one giant weight per output channel (giant x 0):
    per-channel INT8 weight scales round every other weight of the pointwise conv to zero. With a
    large positive constant, the first ReLU's output (per-tensor scale) is that constant, and every
    other channel rounds to 0 in the ReLU and the max-pool that reads it: activation-only nodes,
    without a weight of their own. Returns (fp32, qdq, pointwise, relu, maxpool)."""
    from onnx import numpy_helper

    fp32 = onnx.load(str(bundle.artifact("onnx_fp32")))
    inits = {t.name: t for t in fp32.graph.initializer}

    def weight(node):
        return numpy_helper.to_array(inits[node.input[1]]).copy()

    def put(name, array):
        inits[name].CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))

    convs = [n for n in fp32.graph.node if n.op_type == "Conv"]
    first, pointwise = convs[0], next(n for n in convs[1:] if weight(n).shape[2:] == (1, 1))
    relu = next(n for n in fp32.graph.node if n.op_type == "Relu" and n.input[0] == first.output[0])
    pool = next(n for n in fp32.graph.node if n.op_type == "MaxPool" and n.input[0] == relu.output[0])
    depthwise = next(n for n in convs if n.input[0] == pool.output[0])
    w, b = weight(first), numpy_helper.to_array(inits[first.input[2]]).copy()
    w[0], b[0] = 0.0, zero_channel_bias
    put(first.input[1], w)
    put(first.input[2], b)
    wd = weight(depthwise)
    wd[0] = 0.0  # group conv: filter 0 reads channel 0 only
    put(depthwise.input[1], wd)
    wp = weight(pointwise)
    wp[:, 0] = 1000.0 * np.abs(wp).max()  # reads that zero channel: harmless in FP32, fatal to INT8 scales
    put(pointwise.input[1], wp)
    fp32_path = tmp_path / "fragile.onnx"
    onnx.save(fp32, str(fp32_path))
    qdq_path = tmp_path / "fragile.int8.onnx"
    quantize_qdq(fp32_path, qdq_path, _images(bundle, 16, 1), progress=False)
    return fp32, onnx.load(str(qdq_path)), pointwise, relu, pool


def _fp32_labelled_scorer(bundle, fp32):
    x = _images(bundle, 24, 3)
    return Scorer(fp32, x, _predict(fp32, x).argmax(1), bundle.classes, Gates(min_agreement=0.98, max_acc_drop=1.0))


def test_the_search_finds_a_deliberately_fragile_layer(exported_cnn, copy_bundle, tmp_path):
    """A weighted layer that FP32 runs exactly but INT8 cannot (see _fragile): the agreement ranking
    must put it first and the greedy search must float it first."""
    bundle = copy_bundle(exported_cnn)
    fp32, qdq, pointwise, _, _ = _fragile(bundle, tmp_path, -1.0)
    scorer = _fp32_labelled_scorer(bundle, fp32)
    full, rows = analyse(qdq, fp32, scorer, alone=True)
    assert full.passed is False and full.agreement["top1_agreement"] < 0.98
    assert rows[0].name == pointwise.name
    assert rows[0].alone_agreement == min(r.alone_agreement for r in rows)  # quantized alone, it does the damage
    chosen, _ = greedy_fallback(qdq, fp32, scorer, rows)
    assert chosen[0] == pointwise.name  # floated first (the tiny random model may need a few more)


def test_the_one_pass_ranking_finds_fragile_weighted_and_activation_only_nodes(exported_cnn, copy_bundle, tmp_path):
    """The fragile nodes of _fragile (the pointwise conv's weight; the first ReLU and the max-pool,
    activation-only) rank above every other node by their own quantization error, from one pass;
    the bisection floats them, and its trim keeps the weighted one because quantizing it again
    fails the gate."""
    from edgecxr.stages.export.qdq_error import node_errors
    from edgecxr.stages.export.sensitivity import bisect_fallback

    bundle = copy_bundle(exported_cnn)
    fp32, qdq, pointwise, relu, pool = _fragile(bundle, tmp_path, 1000.0)
    rows = node_errors(qdq, fp32, _images(bundle, 8, 4))
    assert {r.name for r in rows} == {n.name for n in quantized_nodes(qdq, weighted_only=False)}
    fragile = {pointwise.name, relu.name, pool.name}
    top = [(r.name, r.weights, round(r.own_nsr, 3)) for r in rows[:5]]
    assert fragile <= {r.name for r in rows[:4]}, top  # (the depthwise conv reads the max-pool's output: 4th)
    assert {r.weights for r in rows if r.name in (relu.name, pool.name)} == {0}, top  # activation-only
    assert min(r.own_nsr for r in rows if r.name in fragile) > 0.5 > max(r.own_nsr for r in rows[4:]), top
    scorer = _fp32_labelled_scorer(bundle, fp32)
    full = scorer.score(qdq)
    assert full.passed is False
    chosen, history, why = bisect_fallback(qdq, fp32, scorer, [r.name for r in rows], full=full,
                                           trim=[r.name for r in rows if r.weights])
    assert fragile <= set(chosen), (chosen, top)
    assert scorer.score(hybrid(qdq, fp32, chosen)).passed is True
    assert "needed" in why[pointwise.name]  # the trim tried to quantize it again, and the gate failed
    assert history[0]["stage"] == "fully quantized"
    assert len(history) <= 2 + int(np.ceil(np.log2(len(rows)))) + len(chosen)  # not one pass per node


def test_when_nothing_passes_the_ranking_is_still_written_and_nothing_is_published(exported_cnn, copy_bundle,
                                                                                   synthetic_manifest, tmp_path):
    from edgecxr.core.errors import GateFailedError

    bundle = copy_bundle(exported_cnn)
    for rank in ("agreement", "error"):
        with pytest.raises(GateFailedError, match="no INT8 model passes the gate on val") as info:
            calibrate_bundle(bundle, synthetic_manifest, gates=EXACT, fallback="auto", calib_manifest_out=tmp_path,
                             rank=rank, scope="weighted", progress=False)  # the activation Q/DQ left cannot meet 1e-6
        assert "sensitivity" in str(info.value)
        ranking = read_json(next(tmp_path.glob("*-sensitivity.json")))
        assert ranking["float_nodes"] is None and ranking["ranking"] and ranking["rank"] == rank
        assert bundle.artifact("onnx_int8", must_exist=False) is None
    with pytest.raises(GateFailedError, match="which leaves no INT8 model"):
        calibrate_bundle(bundle, synthetic_manifest, gates=EXACT, fallback="auto", calib_manifest_out=tmp_path,
                         progress=False)  # every node may float: the search must not call FP32 an INT8 model
