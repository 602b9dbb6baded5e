from __future__ import annotations

import json

import pytest

from edgecxr.core.bundle import Bundle, git_commit
from edgecxr.core.errors import BundleError
from edgecxr.data.manifest import CLASSES_4
from edgecxr.models.coronet import CORONET_V1


def test_create_save_load_round_trip(tmp_path):
    b = Bundle.create(tmp_path / "run", "coronet", CLASSES_4, CORONET_V1, training={"epochs": 3})
    (b.dir / "model.onnx").write_bytes(b"x")
    b.set_artifact("onnx_fp32", b.dir / "model.onnx")
    b.save()
    again = Bundle.load(tmp_path / "run")
    assert again.model == "coronet"
    assert again.classes == list(CLASSES_4)
    assert again.spec == CORONET_V1
    assert again.meta["training"] == {"epochs": 3}
    assert again.artifact("onnx_fp32") == b.dir / "model.onnx"
    assert again.artifact("onnx_int8", must_exist=False) is None
    with pytest.raises(BundleError, match="edgecxr calibrate"):
        again.artifact("onnx_int8")
    # bundle.json given directly also works
    assert Bundle.load(b.path).dir == b.dir


def test_artifact_outside_bundle_rejected(tmp_path):
    b = Bundle.create(tmp_path / "run", "coronet", CLASSES_4, CORONET_V1)
    with pytest.raises(BundleError, match="outside"):
        b.set_artifact("keras", tmp_path / "elsewhere.keras")


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "not a model bundle"),
        ("{not json", "corrupt JSON"),
        (json.dumps({"format": "other"}), "not an edgecxr bundle"),
        (json.dumps({"format": "edgecxr-bundle", "format_version": 99}), "newer"),
        (json.dumps({"format": "edgecxr-bundle", "format_version": 1, "model": "coronet"}), "missing 'classes'"),
    ],
)
def test_bad_bundles(tmp_path, content, match):
    if content is not None:
        (tmp_path / "bundle.json").write_text(content)
    with pytest.raises(BundleError, match=match):
        Bundle.load(tmp_path)


def _valid_meta() -> dict:
    return {
        "format": "edgecxr-bundle",
        "format_version": 1,
        "model": "coronet",
        "classes": list(CLASSES_4),
        "preprocess": CORONET_V1.to_dict(),
        "artifacts": {},
    }


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda m: [m], "JSON list, not an object"),
        (lambda m: {**m, "format_version": "x"}, "format_version 'x' is not an integer"),
        (lambda m: {**m, "classes": "covid"}, "'classes' must be a non-empty list"),
        (lambda m: {**m, "classes": []}, "'classes' must be a non-empty list"),
        (lambda m: {**m, "artifacts": ["model.onnx"]}, "'artifacts' must be an object"),
        (lambda m: {**m, "preprocess": "coronet"}, "preprocess must be an object"),
        (lambda m: {**m, "preprocess": {"family": "coronet"}}, r"preprocess is incomplete: missing \['version'"),
        (lambda m: {**m, "preprocess": {**m["preprocess"], "height": "tall"}}, "preprocess.height must be an integer"),
    ],
)
def test_corrupt_bundle_json_is_a_bundle_error_naming_the_file(tmp_path, change, match):
    """A hand-edited or half-synced bundle.json fails on load with its path, not later with a traceback."""
    (tmp_path / "bundle.json").write_text(json.dumps(change(_valid_meta())))
    with pytest.raises(BundleError, match=match) as info:
        Bundle.load(tmp_path)
    assert str(tmp_path / "bundle.json") in str(info.value)


def test_valid_meta_loads(tmp_path):
    (tmp_path / "bundle.json").write_text(json.dumps(_valid_meta()))
    assert Bundle.load(tmp_path).spec == CORONET_V1


def test_git_commit_outside_repo(tmp_path):
    assert git_commit(tmp_path) is None


def test_atomic_write_respects_umask(tmp_path):
    import os

    from edgecxr.core.fileutil import write_json

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
    assert not list(tmp_path.glob(".x.json.*"))  # no temp file left behind


def test_atomic_write_under_a_file_names_the_file(tmp_path):
    """mkdir's 'File exists' hid which path component was the file."""
    from edgecxr.core.fileutil import write_json

    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder") as info:
        write_json(tmp_path / "afile" / "sub" / "x.json", {})
    assert info.value.filename == str(tmp_path / "afile")


def test_gate_verdicts_live_in_one_section_and_later_runs_replace_earlier_ones(tmp_path):
    bundle = Bundle.create(tmp_path / "b", "coronet", ["a", "b"], CORONET_V1)
    bundle.save()
    assert bundle.gate_verdict("onnx_int8") is None
    bundle.record_gate({"onnx_int8": {"passed": True}, "onnx_fp16": {"passed": True}}, {"time": "t1"}, by="verify")
    bundle.record_gate({"onnx_int8": {"passed": False}}, {"time": "t2", "split": "test"}, by="calibrate")
    reloaded = Bundle.load(bundle.dir)
    assert reloaded.gate_verdict("onnx_int8") is False and reloaded.gate_verdict("onnx_fp16") is True
    assert reloaded.gate_verdicts()["onnx_int8"] == {"passed": False, "time": "t2", "split": "test", "by": "calibrate"}


def test_verdicts_of_bundles_written_before_the_gate_section_are_read_and_then_moved(tmp_path):
    bundle = Bundle.create(tmp_path / "b", "coronet", ["a", "b"], CORONET_V1)
    calib = {"time": "2025-01-02", "artifacts": {"onnx_int8": {"passed": True}}}
    bundle.meta.update(
        verify={"time": "2025-01-03", "split": "test", "artifacts": {"onnx_int8": {"passed": False}, "onnx_fp16": {"passed": True}}},
        calibration={"method": "minmax", "gate": calib},
        engines={"engines/x.engine": {"precision": "fp16", "verified": False}},
    )
    bundle.save()
    old = Bundle.load(bundle.dir)
    assert old.gate_verdict("onnx_int8") is False  # the newer of the two legacy verdicts
    assert old.gate_verdict("onnx_fp16") is True and old.gate_verdict("engine:x.engine") is False
    old.record_gate({"onnx_fp32": {"passed": True}}, {"time": "2025-01-04"}, by="verify")
    meta = Bundle.load(bundle.dir).meta
    assert "verify" not in meta and "gate" not in meta["calibration"] and "verified" not in meta["engines"]["engines/x.engine"]
    assert {k: v["passed"] for k, v in meta["gate"].items()} == {
        "onnx_int8": False, "onnx_fp16": True, "engine:x.engine": False, "onnx_fp32": True}


def test_a_verdict_holds_only_for_the_bytes_it_gated(tmp_path):
    """A gated file replaced afterwards (and registered again) is not verified: the verdict records
    the sha256 it was about; verdicts written before they carried one still count."""
    from edgecxr.core.fileutil import sha256_file

    bundle = Bundle.create(tmp_path / "b", "coronet", list(CLASSES_4), CORONET_V1)
    model = bundle.dir / "model.int8.onnx"
    model.write_bytes(b"gated bytes")
    bundle.set_artifact("onnx_int8", model)
    bundle.record_gate({"onnx_int8": {"passed": True, "sha256": sha256_file(model)}}, {"time": "t1"}, by="calibrate")
    assert Bundle.load(bundle.dir).gate_verdict("onnx_int8") is True
    model.write_bytes(b"other bytes")
    bundle.set_artifact("onnx_int8", model)  # bundle.json now lists the new file's sha256
    bundle.save()
    assert Bundle.load(bundle.dir).gate_verdict("onnx_int8") is None
    bundle.record_gate({"onnx_int8": {"passed": True}}, {"time": "t2"}, by="verify")  # an old-style verdict
    assert Bundle.load(bundle.dir).gate_verdict("onnx_int8") is True

