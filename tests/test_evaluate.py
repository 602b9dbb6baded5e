"""evaluate_bundle and `edgecxr evaluate` on a few real images with tiny models.

The ONNX tests build a one-layer model with onnx.helper (no TensorFlow needed), so the numbers
can be recomputed with plain numpy; one test uses a tiny real Keras model through the Keras runner.
"""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError, DataError
from edgecxr.core.fileutil import read_json, sha256_file
from edgecxr.data.dataset import load_arrays
from edgecxr.data.manifest import CLASSES_3, CLASSES_4, read_manifest, select
from edgecxr.models import default_spec
from edgecxr.stages.evaluate import evaluate_bundle
from edgecxr.stages.metrics import evaluate_predictions

SIZE = 32
PER_CLASS_TEST = 3


@pytest.fixture(scope="module")
def tiny_manifest(shared_cxr, tmp_path_factory):
    """A manifest of 3 test images per class + 2 train images, pointing at the real PNGs."""
    with open(shared_cxr / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    chosen = []
    for label in CLASSES_4:
        chosen += [r for r in rows if r["split"] == "test" and r["label"] == label][:PER_CLASS_TEST]
    chosen += [r for r in rows if r["split"] == "train"][:2]
    path = tmp_path_factory.mktemp("data") / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["relative_path", "label", "split", "patient_id"])
        for r in chosen:
            writer.writerow([str(shared_cxr / r["relative_path"]), r["label"], r["split"], r["patient_id"]])
    return path


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _onnx_bundle(directory, family="coronet", seed=0):
    """Bundle with a Flatten -> MatMul -> Add -> Softmax ONNX model; returns (bundle, W, b)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    classes = CLASSES_4 if family == "coronet" else CLASSES_3
    spec = default_spec(family).with_size(SIZE)
    h, w, c = spec.input_shape
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((h * w * c, len(classes))) * 0.05).astype(np.float32)
    bias = rng.standard_normal(len(classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "W"], ["logits0"]),
            helper.make_node("Add", ["logits0", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", h, w, c])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(classes)])],
        initializer=[numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    bundle = Bundle.create(directory, family, classes, spec)
    path = bundle.default_path("onnx_fp32")
    onnx.save(model, str(path))
    bundle.set_artifact("onnx_fp32", path)
    bundle.save()
    return bundle, weight, bias


def _expected(manifest, bundle, split, weight, bias):
    records = select(read_manifest(manifest), split)
    x, y = load_arrays(records, bundle.spec, bundle.classes, progress=False)
    return _softmax(x.reshape(len(x), -1).astype(np.float64) @ weight + bias), y


def test_evaluate_onnx_bundle_matches_numpy(tmp_path, tiny_manifest):
    bundle, weight, bias = _onnx_bundle(tmp_path / "b")
    result = evaluate_bundle(
        bundle.dir, tiny_manifest, "test", backend="auto", artifact="onnx_fp32", bootstrap=200, progress=False
    )
    probs, y = _expected(tiny_manifest, bundle, "test", weight, bias)
    assert result["n"] == 4 * PER_CLASS_TEST
    got = np.array([p["probs"] for p in result["predictions"]])
    np.testing.assert_allclose(got, probs, atol=1e-5)
    ref = evaluate_predictions(y, probs, CLASSES_4, bootstrap=200, seed=0)
    assert result["confusion_matrix"] == ref["confusion_matrix"]
    assert result["accuracy"] == pytest.approx(ref["accuracy"])
    assert result["macro_auc"] == pytest.approx(ref["macro_auc"], abs=1e-6)
    assert result["covid_vs_rest"]["tp"] == ref["covid_vs_rest"]["tp"]
    assert sum(map(sum, result["confusion_matrix"])) == result["n"]

    # files and provenance
    on_disk = read_json(bundle.dir / "evaluation-test-onnx_fp32.json")
    assert on_disk["confusion_matrix"] == result["confusion_matrix"]
    assert on_disk["accuracy"] == result["accuracy"]
    prov = on_disk["provenance"]
    assert prov["split"] == "test" and prov["artifact"] == "onnx_fp32"
    assert prov["manifest_sha256"] == sha256_file(tiny_manifest)
    assert prov["artifact_sha256"] == sha256_file(bundle.dir / "model.onnx")
    assert prov["backend"]["backend"] == "onnxruntime"
    assert prov["preprocess"] == bundle.spec.to_dict()
    assert cv2.imread(str(bundle.dir / "confusion-test-onnx_fp32.png")) is not None
    summary = Bundle.load(bundle.dir).meta["evaluations"]["test-onnx_fp32"]
    assert summary["accuracy"] == result["accuracy"]
    assert summary["file"] == "evaluation-test-onnx_fp32.json"


def test_evaluate_three_class_maps_labels(tmp_path, tiny_manifest):
    bundle, weight, bias = _onnx_bundle(tmp_path / "b3", family="cnn-lstm", seed=1)
    result = evaluate_bundle(
        bundle.dir, tiny_manifest, backend="onnxruntime", artifact="onnx_fp32", bootstrap=0, progress=False
    )
    probs, y = _expected(tiny_manifest, bundle, "test", weight, bias)
    assert result["classes"] == list(CLASSES_3)
    # bacterial + viral merged into pneumonia
    assert [row["support"] for row in result["per_class"].values()] == [3, 6, 3]
    assert result["non_covid_only"]["classes"] == ["pneumonia", "normal"]
    assert (
        result["confusion_matrix"]
        == evaluate_predictions(y, probs, CLASSES_3, bootstrap=0)["confusion_matrix"]
    )


def test_evaluate_train_split_warns(tmp_path, tiny_manifest):
    bundle, _, _ = _onnx_bundle(tmp_path / "b")
    with pytest.warns(UserWarning, match="training split"):
        result = evaluate_bundle(
            bundle.dir,
            tiny_manifest,
            "train",
            backend="auto",
            artifact="onnx_fp32",
            bootstrap=0,
            progress=False,
        )
    assert result["n"] == 2
    assert "train-onnx_fp32" in Bundle.load(bundle.dir).meta["evaluations"]


def test_evaluate_errors(tmp_path, tiny_manifest):
    bundle, _, _ = _onnx_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="onnx_int8"):
        evaluate_bundle(bundle.dir, tiny_manifest, backend="auto", artifact="onnx_int8", progress=False)
    with pytest.raises(BundleError, match="reads"):
        evaluate_bundle(bundle.dir, tiny_manifest, backend="keras", artifact="onnx_fp32", progress=False)
    with pytest.raises(DataError, match="unknown split"):
        evaluate_bundle(
            bundle.dir, tiny_manifest, "holdout", backend="auto", artifact="onnx_fp32", progress=False
        )
    with pytest.raises(DataError, match="no images"):
        evaluate_bundle(
            bundle.dir, tiny_manifest, "calib", backend="auto", artifact="onnx_fp32", progress=False
        )
    with pytest.raises(BundleError, match="not a model bundle"):
        evaluate_bundle(tmp_path, tiny_manifest, progress=False)


def test_cli_evaluate_report_and_json(tmp_path, tiny_manifest):
    bundle, _, _ = _onnx_bundle(tmp_path / "b")
    runner = CliRunner()
    args = ["evaluate", "-m", str(bundle.dir), "--data", str(tiny_manifest), "--artifact", "onnx_fp32", "-q", "--allow-outside"]  # the fixture lists absolute paths
    res = runner.invoke(main, [*args, "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    for c in CLASSES_4:
        assert c in res.output
    assert "accuracy" in res.output and "covid vs rest" in res.output
    assert "evaluation-test-onnx_fp32.json" in res.output

    res = runner.invoke(main, [*args, "--bootstrap", "0", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["n"] == 4 * PER_CLASS_TEST
    assert data["accuracy_ci95"] is None
    assert data == read_json(bundle.dir / "evaluation-test-onnx_fp32.json")


def test_cli_evaluate_missing_artifact_is_one_line_error(tmp_path, tiny_manifest):
    bundle, _, _ = _onnx_bundle(tmp_path / "b")
    res = CliRunner().invoke(
        main, ["evaluate", "-m", str(bundle.dir), "--data", str(tiny_manifest), "--artifact", "onnx_int8", "--allow-outside"]
    )
    assert res.exit_code == 1
    assert "error:" in res.output and "onnx_int8" in res.output
    assert "Traceback" not in res.output


def test_evaluate_keras_bundle(tmp_path, tiny_manifest):
    """A tiny real Keras model through the Keras runner; numbers match running the model directly."""
    keras = pytest.importorskip("keras")
    spec = default_spec("coronet").with_size(SIZE)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(spec.input_shape),
            keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(len(CLASSES_4), activation="softmax"),
        ]
    )
    bundle = Bundle.create(tmp_path / "kb", "coronet", CLASSES_4, spec)
    path = bundle.default_path("keras")
    model.save(path)
    bundle.set_artifact("keras", path)
    bundle.save()

    result = evaluate_bundle(bundle.dir, tiny_manifest, bootstrap=100, seed=3, progress=False)

    records = select(read_manifest(tiny_manifest), "test")
    x, y = load_arrays(records, spec, CLASSES_4, progress=False)
    probs = np.asarray(model(x, training=False))
    got = np.array([p["probs"] for p in result["predictions"]])
    np.testing.assert_allclose(got, probs, atol=1e-5)
    ref = evaluate_predictions(y, probs, CLASSES_4, bootstrap=100, seed=3)
    assert result["confusion_matrix"] == ref["confusion_matrix"]
    assert result["accuracy"] == pytest.approx(ref["accuracy"])
    assert result["provenance"]["backend"]["backend"] == "keras"
    assert (bundle.dir / "evaluation-test.json").is_file()
    assert cv2.imread(str(bundle.dir / "confusion-test.png")) is not None
    meta = Bundle.load(bundle.dir).meta
    assert meta["evaluations"]["test"]["accuracy"] == pytest.approx(ref["accuracy"])
    assert meta["evaluations"]["test"]["artifact"] == "keras"


def test_evaluate_reports_ece_before_and_after_the_bundles_temperature(tmp_path, tiny_manifest):
    from edgecxr.runtime.confidence import apply_temperature
    from edgecxr.stages.confidence.fit import reliability

    bundle, weight, bias = _onnx_bundle(tmp_path / "b")
    first = evaluate_bundle(bundle.dir, tiny_manifest, "test", backend="auto", artifact="onnx_fp32",
                            bootstrap=0, progress=False)["calibration"]
    probs, y = _expected(tiny_manifest, bundle, "test", weight, bias)
    assert first["temperature"] is None and "ece_after" not in first
    assert first["ece_before"] == pytest.approx(reliability(probs, y)["ece"], abs=1e-5)

    bundle.update(confidence={"temperature": {"value": 2.5}})
    res = CliRunner().invoke(main, ["evaluate", "-m", str(bundle.dir), "--data", str(tiny_manifest),
                                    "--artifact", "onnx_fp32", "-q", "--allow-outside", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    cal = read_json(bundle.dir / "evaluation-test-onnx_fp32.json")["calibration"]
    assert cal["temperature"] == 2.5
    assert cal["ece_after"] == pytest.approx(reliability(apply_temperature(probs, 2.5), y)["ece"], abs=1e-5)
    assert cal["ece_after"] != pytest.approx(cal["ece_before"])
    assert f"{cal['ece_after']:.3f} with temperature 2.5" in res.output
    for name in ("reliability-test-onnx_fp32.png", "roc-test-onnx_fp32.png"):
        assert cv2.imread(str(bundle.dir / name)) is not None and name in res.output
    assert Bundle.load(bundle.dir).meta["evaluations"]["test-onnx_fp32"]["ece_calibrated"] == cal["ece_after"]
