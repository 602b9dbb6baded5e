"""core.schema: bundle.json, ONNX metadata and engine sidecars are validated on read, one line per failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError
from edgecxr.core.fileutil import sha256_file, write_json
from edgecxr.core.metadata import read_onnx_metadata, read_sidecar, sidecar_path, verify_engine
from edgecxr.core.schema import MAX_JSON_DEPTH, ModelFacts, check_sidecar, ensure_same, parse_json
from edgecxr.core.spec import PreprocessSpec
from edgecxr.models.coronet import CORONET_V1

CLASSES = ["covid", "normal", "pneumonia_bacterial", "pneumonia_viral"]


def _raises(match: str, fn, *args, **kwargs) -> str:
    """The one-line BundleError `fn` raises, matched."""
    with pytest.raises(BundleError, match=match) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text, text
    return text


def _meta(**changes) -> dict:
    meta = {"format": "edgecxr-bundle", "format_version": 1, "model": "coronet", "classes": list(CLASSES),
            "input_shape": [150, 150, 3], "preprocess": CORONET_V1.to_dict(), "artifacts": {}}
    meta.update(changes)
    return meta


def _write_bundle(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bundle.json").write_text(text)
    return directory


# -- JSON depth -----------------------------------------------------------------------------------
def test_json_nested_past_the_recursion_limit_is_one_line_not_a_recursion_error(tmp_path):
    _raises("nested too deeply", parse_json, "[" * 100_000 + "]" * 100_000, "x.json")
    deep = tmp_path / "deep"
    _write_bundle(deep, "[" * 100_000 + "]" * 100_000)
    assert str(deep / "bundle.json") in _raises("nested too deeply", Bundle.load, deep)


def test_json_nested_deeper_than_the_limit_is_refused_and_the_limit_itself_is_fine():
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert parse_json(ok, "x") is not None
    n = MAX_JSON_DEPTH + 1
    _raises(f"nested {n} levels deep", parse_json, '{"a": ' + "[" * (n - 1) + "]" * (n - 1) + "}", "x")
    _raises("corrupt JSON", parse_json, b"\xff\xfe{", "x")


# -- preprocessing --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value,match",
    [
        ("scale", float("nan"), r"preprocess.scale must be a finite number in \(0, 65535\], got nan"),
        ("scale", float("inf"), "preprocess.scale must be a finite"),
        ("scale", -2.0, "preprocess.scale must be a finite"),
        ("scale", 0, "preprocess.scale must be a finite"),
        ("scale", "2", "preprocess.scale must be a finite"),
        ("offset", float("nan"), "preprocess.offset must be a finite"),
        ("height", 150.5, "preprocess.height must be an integer in 8..4096, got 150.5"),
        ("height", "150", "preprocess.height must be an integer"),
        ("width", True, "preprocess.width must be an integer"),
        ("width", 100_000, "preprocess.width must be an integer in 8..4096"),
        ("channels", 2, "preprocess.channels must be 1 or 3"),
        ("version", "1", "preprocess.version must be an integer"),
        ("family", "", "preprocess.family must be a non-empty name"),
        ("resize", "crop", "preprocess.resize must be 'stretch'"),
    ],
)
def test_preprocess_fields_are_type_and_range_checked(field, value, match):
    _raises(match, PreprocessSpec.from_dict, {**CORONET_V1.to_dict(), field: value})


def test_preprocess_unknown_missing_and_wrong_type():
    _raises(r"unknown fields \['mean'\]", PreprocessSpec.from_dict, {**CORONET_V1.to_dict(), "mean": 0.5})
    _raises(r"incomplete: missing \['height'\]", PreprocessSpec.from_dict,
            {k: v for k, v in CORONET_V1.to_dict().items() if k != "height"})
    _raises("preprocess must be an object", PreprocessSpec.from_dict, [1, 2])


# -- bundle.json ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes,match",
    [
        ({"classes": ["covid", "normal", "covid"]}, "'classes' lists 'covid' twice"),
        ({"classes": ["covid", ""]}, r"classes\[1\] must be a non-empty printable name"),
        ({"classes": ["covid", 3]}, r"classes\[1\] must be a non-empty"),
        ({"classes": "covid"}, "'classes' must be a non-empty list"),
        ({"model": ""}, "model must be a non-empty printable name"),
        ({"input_shape": [150, 150, 1]}, r"input_shape \[150, 150, 1\] disagrees with preprocess"),
        ({"artifacts": {"onnx_int8": "../../../../etc/passwd"}}, "artifacts.onnx_int8 = '../../../../etc/passwd' points outside"),
        ({"artifacts": {"onnx_int8": "/etc/passwd"}}, "artifacts.onnx_int8 = '/etc/passwd' points outside"),
        ({"artifacts": {"onnx_int8": 5}}, "artifacts.onnx_int8 must be a file path inside the bundle"),
        ({"artifact_sha256": {"onnx_int8": "abc"}}, "artifact_sha256.onnx_int8 must be a sha256"),
        ({"engines": {"engines/x.engine": {"sha256": "z" * 64}}}, r"engines.engines/x.engine.sha256 must be a sha256"),
        ({"engines": ["x.engine"]}, "'engines' must be an object"),
    ],
)
def test_bad_bundle_json_fields_are_one_line_errors_naming_file_and_field(tmp_path, changes, match):
    _write_bundle(tmp_path, json.dumps(_meta(**changes)))
    assert str(tmp_path / "bundle.json") in _raises(match, Bundle.load, tmp_path)


def test_nan_scale_written_as_a_json_literal_is_refused(tmp_path):
    text = json.dumps(_meta()).replace('"scale": 2.0', '"scale": NaN')
    assert "NaN" in text
    _write_bundle(tmp_path, text)
    _raises("bundle.json: preprocess.scale must be a finite number", Bundle.load, tmp_path)


def test_artifact_symlink_leading_outside_the_bundle_is_refused(tmp_path):
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"outside")
    bundle_dir = _write_bundle(tmp_path / "b", json.dumps(_meta(artifacts={"onnx_fp32": "model.onnx"})))
    os.symlink(secret, bundle_dir / "model.onnx")
    bundle = Bundle.load(bundle_dir)  # the written path is fine; where it leads is not
    _raises("artifacts.onnx_fp32 = 'model.onnx' resolves to .*secret.onnx, outside the bundle", bundle.artifact, "onnx_fp32")
    _raises("outside the bundle", bundle.artifact, "onnx_fp32", must_exist=False)


def test_set_artifact_records_the_sha256_and_legacy_sections_are_read(tmp_path):
    bundle = Bundle.create(tmp_path / "b", "coronet", CLASSES, CORONET_V1)
    model = bundle.default_path("onnx_int8")
    model.write_bytes(b"int8 model")
    bundle.set_artifact("onnx_int8", model)
    bundle.save()
    again = Bundle.load(bundle.dir)
    assert again.meta["artifact_sha256"]["onnx_int8"] == sha256_file(model) == again.recorded_sha256("onnx_int8")
    # a bundle from before artifact_sha256: the hash calibrate wrote in its own section
    del again.meta["artifact_sha256"]
    again.meta["calibration"] = {"sha256": "c" * 64}
    again.meta["export"] = {"onnx_sha256": "a" * 64, "fp16": {"sha256": "b" * 64}}
    assert again.recorded_sha256("onnx_int8") == "c" * 64
    assert again.recorded_sha256("onnx_fp32") == "a" * 64 and again.recorded_sha256("onnx_fp16") == "b" * 64
    assert again.recorded_sha256("keras") is None


# -- facts shared by the three files ---------------------------------------------------------------
def test_facts_that_differ_are_named_with_both_values():
    bundle = ModelFacts(tuple(CLASSES), CORONET_V1, "coronet", "int8")
    swapped = ModelFacts(("normal", "covid", *CLASSES[2:]), CORONET_V1.with_size(160), None, "fp32")
    text = _raises("m.onnx: classes", ensure_same, bundle, "bundle.json", swapped, "m.onnx")
    assert "['normal', 'covid'" in text and "preprocess.height 160 where bundle.json has 150" in text
    assert "precision 'fp32' where bundle.json has 'int8'" in text
    ensure_same(bundle, "bundle.json", ModelFacts(tuple(CLASSES)), "m.onnx")  # unstated facts are not differences


def _onnx_with_metadata(path: Path, **props: str) -> Path:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["probs"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, props)
    save(model, str(path))
    return path


@pytest.mark.parametrize(
    "props,match",
    [
        ({"edgecxr.classes": "[" * 50_000 + "]" * 50_000}, "edgecxr.classes: JSON nested too deeply"),
        ({"edgecxr.classes": '"covid"'}, "'classes' must be a non-empty list"),
        ({"edgecxr.classes": '["covid", "covid"]'}, "lists 'covid' twice"),
        ({"edgecxr.preprocess": json.dumps({**CORONET_V1.to_dict(), "height": 150.0})}, "preprocess.height must be an integer"),
        ({"edgecxr.preprocess": "{oops"}, "edgecxr.preprocess: corrupt JSON"),
        ({"edgecxr.precision": "int4"}, "precision must be one of fp32, fp16, int8, got 'int4'"),
    ],
)
def test_onnx_metadata_is_validated_like_bundle_json(tmp_path, props, match):
    path = _onnx_with_metadata(tmp_path / "m.onnx", **props)
    assert f"{path} (ONNX metadata)" in _raises(match, read_onnx_metadata, path)


# -- engine sidecars ------------------------------------------------------------------------------
def sidecar(engine_bytes: bytes = b"plan", **changes) -> dict:
    import hashlib

    side = {
        "format": "edgecxr-engine", "format_version": 1,
        "engine": {"file": "x.engine", "sha256": hashlib.sha256(engine_bytes).hexdigest()},
        "model": "coronet", "classes": list(CLASSES), "preprocess": CORONET_V1.to_dict(), "precision": "fp16",
        "tensorrt": "10.3.0", "gpu": {"name": "NVIDIA GeForce GTX 1660 SUPER", "compute_capability": "7.5"},
        "dla_core": None,
        "io": {"inputs": [{"name": "image", "shape": [-1, 150, 150, 3], "dtype": "float"}],
               "outputs": [{"name": "probs", "shape": [-1, 4], "dtype": "float"}]},
    }
    side.update(changes)
    return side


@pytest.mark.parametrize(
    "changes,match",
    [
        ({"engine": {"file": "x.engine"}}, "engine.sha256 must be a sha256"),
        ({"engine": "x.engine"}, "'engine' must be an object"),
        ({"precision": "int4"}, "precision must be one of"),
        ({"classes": ["covid", "covid"]}, "lists 'covid' twice"),
        ({"preprocess": {**CORONET_V1.to_dict(), "scale": float("nan")}}, "preprocess.scale must be a finite"),
        ({"gpu": "GTX"}, "'gpu' must be an object"),
        ({"tensorrt": 10}, "tensorrt must be a non-empty printable name"),
        ({"dla_core": -1}, "dla_core must be null or a DLA core number"),
        ({"format_version": "1"}, "format_version '1' is not an integer"),
        ({"io": {"inputs": [{"shape": [-1, 224, 224, 3]}]}}, r"io.inputs\[0\].shape \[-1, 224, 224, 3\] disagrees with preprocess"),
        ({"io": {"inputs": [{"shape": "big"}]}}, r"io.inputs\[0\].shape must be 4 integers"),
        ({"io": {"inputs": [{"shape": [-1, 150, 150, 3]}], "outputs": [{"shape": [-1, 3]}]}}, "has 3 classes, 'classes' lists 4"),
    ],
)
def test_malformed_sidecars_are_one_line_errors_naming_the_field(tmp_path, changes, match):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    write_json(sidecar_path(engine), sidecar(**changes))
    assert str(sidecar_path(engine)) in _raises(match, read_sidecar, engine)


def test_sidecar_missing_keys_and_deep_nesting(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    side = sidecar()
    del side["engine"]
    write_json(sidecar_path(engine), side)
    _raises("sidecar is missing 'engine'", read_sidecar, engine)
    sidecar_path(engine).write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _raises("nested too deeply", read_sidecar, engine)
    _raises("not an edgecxr engine sidecar", check_sidecar, [], sidecar_path(engine))


def test_verify_engine_compares_the_bytes_with_the_sidecar_and_the_bundle(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    side = sidecar(b"plan")
    assert verify_engine(engine, side) == sha256_file(engine)
    assert verify_engine(engine, side, recorded=sha256_file(engine))
    _raises("bundle.json records another sha256 than x.engine.json", verify_engine, engine, side, "0" * 64)
    engine.write_bytes(b"plan, replaced")
    _raises(r"x.engine: sha256 does not match x.engine.json \(file changed after it was built\); rebuild it with",
            verify_engine, engine, side)
