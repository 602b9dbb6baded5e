"""Classifier on a tiny real ONNX model and real X-rays: choice of artifact, predictions, per-file errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BackendUnavailableError, BundleError
from edgecxr.core.fileutil import sha256_file, write_json
from edgecxr.core.lazy import available
from edgecxr.core.metadata import make_sidecar, read_onnx_metadata, sidecar_path
from edgecxr.core.spec import preprocess
from edgecxr.data.io import load_image
from edgecxr.runtime.classifier import Classifier, Prediction
from edgecxr.runtime.select import choose_artifact, choose_onnx
from runtime import tinymodels

trt_missing = pytest.mark.skipif(available("tensorrt"), reason="these check the CPU-only path; tensorrt is installed here")


def test_onnx_file_predictions_match_numpy_reference(tiny_onnx, images):
    with Classifier.load(tiny_onnx) as clf:
        assert clf.backend_info["backend"] == "onnxruntime"
        assert clf.classes == tinymodels.CLASSES
        assert clf.spec == tinymodels.SPEC  # read back from the ONNX metadata_props
        preds = clf.predict(images, batch_size=3)
    assert [p.source for p in preds] == [str(p) for p in images]
    expected = tinymodels.reference_probs(np.stack([preprocess(load_image(p), tinymodels.SPEC) for p in images]))
    for pred, ref in zip(preds, expected, strict=True):
        assert pred.ok, pred.error
        got = np.array([pred.probabilities[c] for c in tinymodels.CLASSES])
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
        assert pred.label == tinymodels.CLASSES[int(np.argmax(ref))]
        assert pred.top1 == pytest.approx(float(ref.max()), abs=1e-5)
        assert pred.preprocess_ms > 0 and pred.inference_ms > 0


def test_broken_files_are_reported_and_the_batch_continues(tiny_onnx, images, tmp_path):
    bad = tinymodels.broken_files(tmp_path / "bad")
    inputs = [images[0], bad[0], images[1], *bad[1:], tmp_path / "missing.png"]
    with Classifier.load(tiny_onnx) as clf:
        preds = clf.predict(inputs, batch_size=2)
    assert len(preds) == len(inputs)
    assert [p.ok for p in preds] == [True, False, True] + [False] * (len(bad) - 1) + [False]
    assert "empty" in preds[1].error
    assert "not found" in preds[-1].error
    assert all(p.label is None and p.probabilities == {} for p in preds if not p.ok)


def test_arrays_are_indexed_and_uint16_is_accepted(tiny_onnx, images):
    img8 = load_image(images[0])
    arrays = [img8, (img8.astype(np.uint16) * 257), np.full((40, 40), 2.0, dtype=np.float32)]
    with Classifier.load(tiny_onnx) as clf:
        preds = clf.predict(arrays)
    assert [p.source for p in preds] == [0, 1, 2]
    assert preds[0].ok and preds[1].ok
    # 8-bit and the same pixels scaled to 16-bit are the same X-ray (up to integer resize rounding)
    assert preds[0].probabilities == pytest.approx(preds[1].probabilities, abs=2e-3)  # resize rounding differs
    assert not preds[2].ok and "[0, 1]" in preds[2].error


def test_single_path_predict_and_prediction_helpers(tiny_onnx, images):
    with Classifier.load(tiny_onnx) as clf:
        (pred,) = clf.predict(images[0])
    assert pred.path == str(images[0])
    top = pred.top_k(2)
    assert len(top) == 2 and top[0][0] == pred.label and top[0][1] >= top[1][1]
    data = pred.to_dict(top_k=2)
    json.dumps(data)
    assert data["top_k"][0][0] == pred.label
    assert sum(data["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_onnx_metadata_and_missing_metadata(tiny_onnx, tmp_path):
    meta = read_onnx_metadata(tiny_onnx)
    assert meta["classes"] == tinymodels.CLASSES and meta["preprocess"]["height"] == 32
    bare = tinymodels.make_onnx(tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(BundleError, match="no edgecxr metadata"):
        Classifier.load(bare)
    # ...but beside a bundle.json the bundle supplies classes and preprocessing
    Bundle.create(tmp_path, "coronet", tinymodels.CLASSES, tinymodels.SPEC).save()
    with Classifier.load(bare) as clf:
        assert clf.classes == tinymodels.CLASSES
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError):
        read_onnx_metadata(tmp_path / "junk.onnx")


@pytest.mark.parametrize(
    "passed,expected,why",
    [
        (None, "fp32", "int8 ONNX not verified yet"),
        (False, "fp32", "int8 ONNX failed the accuracy gate"),
        (True, "int8", "int8 ONNX (passed the accuracy gate)"),
    ],
)
def test_bundle_auto_picks_int8_only_when_it_passed_the_gate(tmp_path, passed, expected, why, images):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8_passed=passed)
    with Classifier.load(bundle.dir) as clf:
        info = clf.backend_info
        assert info["backend"] == "onnxruntime"
        assert info["precision"] == expected
        assert "TensorRT" in info["reason"]  # auto says why TensorRT was not used
        assert why in info["reason"]
        (pred,) = clf.predict([images[0]])
        assert pred.ok


def test_explicit_precision_and_missing_artifacts(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    assert choose_onnx(bundle, "fp16").path.name == "model.fp16.onnx"
    with pytest.raises(BundleError, match="edgecxr calibrate"):
        choose_onnx(bundle, "int8")
    assert choose_onnx(bundle, None).precision == "fp32"
    assert choose_onnx(bundle, None, cuda=True).precision == "fp32"  # FP16 not gated yet
    bundle.record_gate({"onnx_fp16": {"passed": True}}, {"time": "2026-12-02T00:00:00+00:00"}, by="verify")
    assert choose_onnx(bundle, None, cuda=True).precision == "fp16"
    with pytest.raises(BundleError, match="keras"):
        choose_artifact(bundle, "keras")


@trt_missing
def test_tensorrt_backend_is_refused_with_a_reason_on_cpu(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    with pytest.raises(BackendUnavailableError, match="tensorrt"):
        Classifier.load(bundle.dir, backend="tensorrt")
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        Classifier.load(bundle.dir, backend="cuda")


@trt_missing
def test_engine_file_needs_a_sidecar_then_tensorrt(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    engine = bundle.dir / "engines" / "x.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="no sidecar"):
        Classifier.load(engine)
    from edgecxr.stages.engine.profile import BuildProfile

    side = make_sidecar(
        bundle_meta=bundle.meta,
        engine_file=engine.name,
        engine_sha256=sha256_file(engine),
        precision="fp16",
        onnx_file="model.fp16.onnx",
        onnx_sha256="1" * 64,
        platform={"tensorrt": "10.3.0", "gpu": {"name": "NVIDIA GeForce GTX 1660 SUPER", "compute_capability": "7.5"}},
        io={"inputs": [{"name": "image", "shape": [-1, 32, 32, 3], "dtype": "float"}], "outputs": []},
        profile=BuildProfile(),
        build_seconds=1.0,
        strongly_typed=True,
    )
    write_json(sidecar_path(engine), side)
    with pytest.raises(BackendUnavailableError, match="tensorrt is not installed"):
        Classifier.load(engine)
    with pytest.raises(BackendUnavailableError, match="only on the tensorrt backend"):
        Classifier.load(engine, backend="onnxruntime")


def test_no_silent_change_of_precision_or_backend(tmp_path):
    """What was asked for runs, or the load fails saying why (STYLE.md 6: never downgrade silently)."""
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    with pytest.raises(BundleError, match="fp16 model but precision fp32"):
        Classifier.load(bundle.default_path("onnx_fp16"), precision="fp32")
    with Classifier.load(bundle.default_path("onnx_fp16"), precision="fp16") as clf:
        assert clf.backend_info["precision"] == "fp16"
    with pytest.raises(BundleError, match="Keras reference model is fp32"):
        choose_artifact(bundle, "keras", "int8")
    keras_file = bundle.dir / "model.keras"
    keras_file.write_bytes(b"PK")
    with pytest.raises(BackendUnavailableError, match="only on the keras backend"):
        Classifier.load(keras_file, backend="onnxruntime")


def test_unreadable_keras_file_is_a_bundle_error(tmp_path, monkeypatch):
    import types

    import edgecxr.runtime.keras_runner as keras_runner

    def load_model(path, compile=True):
        raise ValueError("File not found: filepath=model.keras. Please ensure the file is an accessible `.keras` zip file.")

    fake = types.SimpleNamespace(saving=types.SimpleNamespace(load_model=load_model))
    monkeypatch.setattr(keras_runner, "require", lambda *a, **k: fake)
    path = tmp_path / "model.keras"
    path.write_text("junk")
    with pytest.raises(BundleError, match="Keras cannot load this model"):
        keras_runner.KerasRunner(path).load()


def test_unknown_model_paths(tmp_path):
    with pytest.raises(BundleError, match="no such file or folder, and not a model name"):
        Classifier.load(tmp_path / "nope")
    (tmp_path / "model.txt").write_text("x")
    with pytest.raises(BundleError, match="expected a bundle"):
        Classifier.load(tmp_path / "model.txt")
    with pytest.raises(BundleError, match="not a model bundle"):
        Classifier.load(tmp_path)


def test_wrong_output_width_is_a_bundle_error(tmp_path, images):
    """A model whose output does not match the bundle's classes must not be silently mislabelled:
    refused at load (its declared output shape), and at predict if the shape was not declared."""
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False, fp16=False)
    tinymodels.make_onnx(bundle.default_path("onnx_fp32"), classes=["a", "b", "c"], metadata=False)
    bundle.set_artifact("onnx_fp32", bundle.default_path("onnx_fp32"))  # recorded: only the width is wrong
    bundle.save()
    with pytest.raises(BundleError, match=r"output shape \(N, 3\) does not match its 4 classes"):
        Classifier.load(bundle.dir)
    with Classifier.load(tinymodels.make_onnx(tmp_path / "three.onnx", classes=["a", "b", "c"])) as clf:
        clf.classes.append("d")  # as if the model had declared no output width
        with pytest.raises(BundleError, match="expected"):
            clf.predict([images[0]])


def test_prediction_defaults():
    p = Prediction(3, error="bad")
    assert not p.ok and p.path is None and p.top_k(3) == []


def test_folder_of_copies(tiny_onnx, images, tmp_path):
    copies = tinymodels.copy_images(images[:2], tmp_path / "scans")
    shutil.copyfile(copies[0], tmp_path / "scans" / "UPPER.PNG")
    from edgecxr.data.io import expand_inputs

    paths = expand_inputs([tmp_path / "scans"])
    with Classifier.load(tiny_onnx) as clf:
        preds = clf.predict(paths)
    assert len(preds) == 3 and all(p.ok for p in preds)
    assert preds[0].probabilities == pytest.approx(
        next(p for p in preds if Path(p.source).name == "UPPER.PNG").probabilities
    )


def test_on_a_cpu_without_int8_dot_products_fp32_then_fp16_come_before_int8(tmp_path, monkeypatch):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=True, int8_passed=True)
    assert choose_onnx(bundle, None, int8_fast=True).precision == "int8"
    choice = choose_onnx(bundle, None, int8_fast=False)
    assert choice.precision == "fp32" and choice.reason.startswith("fp32 ONNX (int8 ONNX last: this CPU has no")
    # a shipped model has no FP32: then the gated FP16 (ONNX Runtime runs it as fast as FP32), INT8 last
    bundle.artifact("onnx_fp32").unlink()
    with pytest.raises(BundleError, match="model.onnx: bundle.json lists it as onnx_fp32 but the file is missing"):
        choose_onnx(bundle, None, int8_fast=False)  # deleted behind bundle.json's back: a damaged bundle
    del bundle.meta["artifacts"]["onnx_fp32"]
    bundle.record_gate({"onnx_fp16": {"passed": True}}, {"time": "t"}, by="verify")
    choice = choose_onnx(bundle, None, int8_fast=False)
    assert choice.precision == "fp16" and "fp32 ONNX absent" in choice.reason
    bundle.record_gate({"onnx_fp16": {"passed": False}}, {"time": "t2"}, by="verify")
    assert choose_onnx(bundle, None, int8_fast=False).precision == "int8"
    monkeypatch.setattr("edgecxr.runtime.select.cpu_int8_fast", lambda: False)
    assert choose_onnx(bundle, None).precision == "int8"  # the default asks the CPU


def test_rejected_file_is_refused_unless_allowed(tiny_onnx, images, tmp_path):
    """A file the gate rejected is kept for inspection, not for answers: refused, or run with a warning."""
    import shutil

    from click.testing import CliRunner

    from edgecxr.cli import main
    from edgecxr.core.errors import BundleError
    from edgecxr.runtime.classifier import Classifier

    rejected = tmp_path / "model.int8.rejected.onnx"
    shutil.copyfile(tiny_onnx, rejected)
    with pytest.raises(BundleError, match="failed the accuracy gate"):
        Classifier.load(rejected)
    with Classifier.load(rejected, allow_rejected=True) as clf:
        assert "FAILED the accuracy gate" in clf.backend_info["warning"]
        assert clf.predict(images[:1])[0].ok

    res = CliRunner().invoke(main, ["infer", "-m", str(rejected), str(images[0])])
    assert res.exit_code == 1 and "--allow-rejected" in res.stderr, res.stderr
    res = CliRunner().invoke(main, ["infer", "-m", str(rejected), str(images[0]), "--allow-rejected"])
    assert res.exit_code == 0 and "warning: model.int8.rejected.onnx FAILED" in res.stderr, res.stderr
