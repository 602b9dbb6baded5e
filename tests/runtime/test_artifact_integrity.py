"""Model files are not trusted blindly (issue 11): hostile bundles built from the tiny real models.

Each case replaces, redirects or edits one thing in a working bundle and checks that
Classifier.load refuses it with one line naming the file (the CLI prints it as `error: ...`),
or, for a model that outputs NaN, that the input fails and the batch goes on.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError
from edgecxr.core.fileutil import sha256_file, write_json
from edgecxr.core.metadata import META_CLASSES, META_PREPROCESS, make_sidecar, sidecar_path
from edgecxr.runtime import store
from edgecxr.runtime.classifier import NOT_FINITE, Classifier
from edgecxr.runtime.select import choose_engine
from runtime import tinymodels

GTX = {"tensorrt": "10.3.0", "gpu": {"name": "NVIDIA GeForce GTX 1660 SUPER", "compute_capability": "7.5"}}


@pytest.fixture()
def int8_bundle(tmp_path, monkeypatch) -> Bundle:
    """The tiny bundle with a gated INT8 model that `auto` picks (as on a CPU with VNNI)."""
    monkeypatch.setattr("edgecxr.runtime.select.cpu_int8_fast", lambda: True)
    return tinymodels.make_bundle(tmp_path / "b", int8_passed=True)


def refused(match: str, model, **kwargs) -> str:
    with pytest.raises(BundleError, match=match) as info:
        Classifier.load(model, **kwargs).close()
    text = str(info.value)
    assert "\n" not in text, text
    return text


def edit(bundle: Bundle, change) -> None:
    """Edit bundle.json on disk the way a person with a text editor would."""
    meta = json.loads(bundle.path.read_text())
    change(meta)
    bundle.path.write_text(json.dumps(meta))


# -- 1. bytes: replaced model files ---------------------------------------------------------------
def test_intact_int8_loads_and_says_it_was_verified(int8_bundle):
    with Classifier.load(int8_bundle.dir) as clf:
        assert clf.backend_info["precision"] == "int8"
        assert clf.backend_info["integrity"] == "sha256 matches bundle.json"


@pytest.mark.parametrize("how", ["fp32 copied over it", "another model"])
def test_replaced_int8_is_refused_not_announced_as_gated(int8_bundle, how):
    target = int8_bundle.default_path("onnx_int8")
    if how == "fp32 copied over it":
        shutil.copyfile(int8_bundle.default_path("onnx_fp32"), target)
    else:
        tinymodels.make_int8_onnx(tinymodels.make_onnx(target.with_name("other.onnx"), classes=list("abcd")), target)
    msg = f"{target}: sha256 does not match .*bundle.json .*re-run `edgecxr calibrate`"
    refused(msg, int8_bundle.dir)  # auto would pick it: it "passed the gate"
    refused(msg, int8_bundle.dir, precision="int8")
    refused(msg, target)  # the file given directly still belongs to its bundle


def test_bundle_written_before_artifact_sha256_is_checked_through_the_calibration_record(int8_bundle):
    target = int8_bundle.default_path("onnx_int8")
    edit(int8_bundle, lambda m: (m.pop("artifact_sha256"), m.update(calibration={"sha256": sha256_file(target)})))
    with Classifier.load(int8_bundle.dir) as clf:
        assert clf.backend_info["integrity"] == "sha256 matches bundle.json"
    shutil.copyfile(int8_bundle.default_path("onnx_fp32"), target)
    refused("model.int8.onnx: sha256 does not match", int8_bundle.dir)


def test_without_any_recorded_hash_the_fp32_copy_is_still_caught_by_its_own_metadata(int8_bundle):
    edit(int8_bundle, lambda m: m.pop("artifact_sha256"))
    shutil.copyfile(int8_bundle.default_path("onnx_fp32"), int8_bundle.default_path("onnx_int8"))
    refused(r"model.int8.onnx \(ONNX metadata\): precision 'fp32' where .*bundle.json has 'int8'", int8_bundle.dir)
    with Classifier.load(int8_bundle.dir, precision="fp32") as clf:  # the honest files still load, unverified
        assert clf.backend_info["integrity"].startswith("not verified")


# -- 2. paths inside the bundle -------------------------------------------------------------------
@pytest.mark.parametrize("rel", ["../../../../etc/passwd", "/etc/passwd", "../b2/model.onnx"])
def test_artifact_paths_leading_outside_the_bundle_are_refused(int8_bundle, rel):
    edit(int8_bundle, lambda m: m["artifacts"].update(onnx_fp32=rel))
    refused(f"bundle.json: artifacts.onnx_fp32 = '{rel}' points outside the bundle", int8_bundle.dir, precision="fp32")


def test_artifact_symlink_leading_outside_is_refused(int8_bundle, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(int8_bundle.default_path("onnx_fp32"), outside)
    os.symlink(outside, int8_bundle.default_path("onnx_fp32"))
    refused("artifacts.onnx_fp32 = 'model.onnx' resolves to .*elsewhere.onnx, outside the bundle", int8_bundle.dir,
            precision="fp32")


def test_auto_never_picks_an_engine_outside_the_bundle(int8_bundle, tmp_path):
    engine = write_engine(tmp_path / "elsewhere" / "x.engine", int8_bundle)
    meta = dict(int8_bundle.meta, engines={str(engine): {"precision": "fp16"}, "../elsewhere/x.engine": {}})
    chosen, why = choose_engine(int8_bundle.dir, meta, GTX)
    assert chosen is None and len(why) == 2 and all("outside the bundle" in w for w in why)


# -- 3. what the model file says about itself ------------------------------------------------------
def test_reordered_classes_in_bundle_json_are_refused_not_relabelled(int8_bundle):
    swapped = ["normal", "covid", "pneumonia_bacterial", "pneumonia_viral"]
    edit(int8_bundle, lambda m: m.update(classes=swapped))
    text = refused(r"model.int8.onnx \(ONNX metadata\): classes \['covid', 'normal'", int8_bundle.dir)
    assert "['normal', 'covid'" in text


def test_preprocessing_that_differs_from_the_model_metadata_is_refused(int8_bundle):
    edit(int8_bundle, lambda m: m["preprocess"].update(offset=0.0, scale=1.0))
    refused(r"preprocess.scale 2.0 where .*bundle.json has 1.0; preprocess.offset -1.0", int8_bundle.dir)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda m: m.update(classes=["covid", "normal", "covid", "x"]), "'classes' lists 'covid' twice"),
        (lambda m: m["preprocess"].update(scale=float("nan")), "preprocess.scale must be a finite number"),
        (lambda m: m["preprocess"].update(height=32.5), "preprocess.height must be an integer in 8..4096, got 32.5"),
        (lambda m: m.update(classes={"covid": 0}), "'classes' must be a non-empty list"),
    ],
)
def test_bad_values_in_bundle_json_are_one_line_errors(int8_bundle, change, match):
    edit(int8_bundle, change)
    assert str(int8_bundle.path) in refused(match, int8_bundle.dir)


def test_deeply_nested_bundle_json_is_an_error_not_a_recursion_error(int8_bundle):
    int8_bundle.path.write_text('{"format": "edgecxr-bundle", "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    refused("bundle.json: JSON nested too deeply", int8_bundle.dir)


def test_model_input_shape_that_differs_from_the_bundle_is_refused_at_load(int8_bundle):
    fp32 = int8_bundle.default_path("onnx_fp32")
    tinymodels.make_onnx(fp32, spec=tinymodels.SPEC.with_size(40), metadata=False)
    int8_bundle.set_artifact("onnx_fp32", fp32)  # recorded: only the shape is wrong
    int8_bundle.save()
    refused(r"model.onnx: the model's input shape \(N, 40, 40, 3\) does not match the preprocessing's \(N, 32, 32, 3\)",
            int8_bundle.dir, precision="fp32")


def test_bad_onnx_metadata_given_directly_is_one_line(tmp_path):
    model = onnx.load(str(tinymodels.make_onnx(tmp_path / "m.onnx")))
    spec = {**tinymodels.SPEC.to_dict(), "width": "32"}
    helper.set_model_props(model, {META_CLASSES: json.dumps(tinymodels.CLASSES), META_PREPROCESS: json.dumps(spec)})
    onnx.save(model, str(tmp_path / "m.onnx"))
    refused(r"m.onnx \(ONNX metadata\): preprocess.width must be an integer", tmp_path / "m.onnx")


# -- engines: sidecar schema and sha256, checked before TensorRT is imported -------------------------
def write_engine(engine: Path, bundle: Bundle, data: bytes = b"serialized plan", **changes) -> Path:
    from edgecxr.stages.engine.profile import BuildProfile

    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(data)
    h, w, c = tinymodels.SPEC.input_shape
    side = make_sidecar(
        bundle_meta=bundle.meta, engine_file=engine.name, engine_sha256=sha256_file(engine), precision="fp16",
        onnx_file="model.fp16.onnx", onnx_sha256=sha256_file(bundle.default_path("onnx_fp16")), platform=GTX,
        io={"inputs": [{"name": "image", "shape": [-1, h, w, c], "dtype": "float"}],
            "outputs": [{"name": "probs", "shape": [-1, len(bundle.classes)], "dtype": "float"}]},
        profile=BuildProfile(), build_seconds=1.0, strongly_typed=True,
    )
    side.update(changes)
    write_json(sidecar_path(engine), side)
    return engine


def test_replaced_engine_is_refused_before_tensorrt(int8_bundle):
    engine = write_engine(int8_bundle.dir / "engines" / "x.engine", int8_bundle)
    int8_bundle.update(engines={"engines/x.engine": {"precision": "fp16", "sha256": sha256_file(engine)}})
    assert store.verify_artifact(int8_bundle, engine) == sha256_file(engine)
    engine.write_bytes(b"another plan")
    refused(r"x.engine: sha256 does not match x.engine.json \(file changed after it was built\)", engine)
    with pytest.raises(BundleError, match="sha256 does not match x.engine.json"):
        store.verify_artifact(int8_bundle, engine)
    # engine and sidecar replaced together: bundle.json still remembers what was built
    write_engine(engine, int8_bundle, b"another plan")
    refused("x.engine: bundle.json records another sha256 than x.engine.json", engine)


def test_engine_sidecar_with_reordered_classes_is_refused_before_tensorrt(int8_bundle):
    engine = write_engine(int8_bundle.dir / "engines" / "x.engine", int8_bundle,
                          classes=["normal", "covid", "pneumonia_bacterial", "pneumonia_viral"])
    int8_bundle.update(engines={"engines/x.engine": {"precision": "fp16", "sha256": sha256_file(engine)}})
    refused(r"x.engine.json: classes \['normal', 'covid'.* where .*bundle.json has \['covid', 'normal'", engine)


def test_malformed_engine_sidecar_is_one_line(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    engine = write_engine(tmp_path / "loose" / "x.engine", bundle, io={"inputs": "image"})
    refused(r"x.engine.json: io.inputs must list the engine's one input tensor", engine)
    write_engine(engine, bundle, dla_core="0")
    refused("x.engine.json: dla_core must be null or a DLA core number", engine)


# -- 4. non-finite model output --------------------------------------------------------------------
def nan_onnx(path: Path) -> Path:
    """The tiny classifier plus 0 * sqrt(mean pixel): NaN for a dark image (mean < 0 after [-1, 1] scaling)."""
    model = onnx.load(str(tinymodels.make_onnx(path)))
    g = model.graph
    g.node[-1].output[0] = "softmax"
    g.initializer.extend([onnx.numpy_helper.from_array(np.array([-1, 1], np.int64), "col"),
                          onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    g.node.extend([
        helper.make_node("ReduceMean", ["image"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "col"], ["mean"]),
        helper.make_node("Sqrt", ["mean"], ["root"]),  # NaN below zero
        helper.make_node("Mul", ["root", "zero"], ["nan_or_zero"]),
        helper.make_node("Add", ["softmax", "nan_or_zero"], ["probs"]),
    ])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_nan_output_fails_that_input_and_the_batch_goes_on(tmp_path):
    bright, dark = np.full((40, 40), 200, np.uint8), np.full((40, 40), 10, np.uint8)
    # constant images are rejected by the input checks: off, so they reach the model under test
    with Classifier.load(nan_onnx(tmp_path / "nan.onnx"), input_rules=None) as clf:
        preds = clf.predict([bright, dark, bright], batch_size=3)
    assert [p.ok for p in preds] == [True, False, True]
    bad = preds[1]
    assert bad.error == NOT_FINITE and bad.label is None and bad.top1 is None and bad.probabilities == {}
    json.dumps([p.to_dict(top_k=2) for p in preds], allow_nan=False)  # no NaN reaches the JSON
    assert preds[0].label in tinymodels.CLASSES


def test_infer_cli_exits_1_and_prints_no_nan_when_the_model_outputs_nan(tmp_path):
    import cv2

    from edgecxr.cli import main

    paths = []
    for name, value in (("bright.png", 200), ("dark.png", 10)):
        cv2.imwrite(str(tmp_path / name), np.full((40, 40), value, np.uint8))
        paths.append(str(tmp_path / name))
    result = CliRunner().invoke(main, ["infer", "-m", str(nan_onnx(tmp_path / "nan.onnx")), *paths, "--json",
                                        "--no-input-checks"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["failed"] == 1 and "NaN" not in result.stdout.replace(NOT_FINITE, "")
    assert [p["error"] for p in doc["predictions"]] == [None, NOT_FINITE]
