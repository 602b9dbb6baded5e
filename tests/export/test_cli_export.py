"""`edgecxr export`, `calibrate` and `verify` through Click's CliRunner: outputs and exit codes."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.core.bundle import Bundle
from edgecxr.stages.export.qdq_check import check_tensorrt_qdq


def _run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_export_command(keras_lstm_bundle, copy_bundle):
    bundle = copy_bundle(keras_lstm_bundle)
    res = _run("export", "-m", bundle.dir, "--parity-images", "4", "-q")
    assert res.exit_code == 0, res.output
    assert "random" in res.output and "max |dp|" in res.output and "model.fp16.onnx" in res.output
    meta = Bundle.load(bundle.dir).meta
    assert meta["export"]["parity_inputs"]["images"] == 4 and meta["export"]["lstm_ops"] == 1


def test_export_usage_and_bundle_errors(tmp_path, keras_cnn_bundle):
    res = _run("export", "-m", keras_cnn_bundle, "--parity-split", "val")
    assert res.exit_code == 2 and "a parity split needs a manifest (options: --parity-split, --data)" in res.output
    assert "random inputs" not in res.output  # refused before the note about running without --data
    res = _run("export", "-m", tmp_path)
    assert res.exit_code == 1 and "not a model bundle" in res.output


def test_export_parity_failure_exits_3(keras_cnn_bundle, copy_bundle):
    bundle = copy_bundle(keras_cnn_bundle)
    res = _run("export", "-m", bundle.dir, "--atol", "0", "--no-fp16", "-q")
    assert res.exit_code == 3 and "differs from Keras" in res.output


def test_calibrate_command(exported_cnn, copy_bundle, synthetic_manifest, tmp_path):
    bundle = copy_bundle(exported_cnn)
    gates = tmp_path / "gates.toml"
    gates.write_text("[gates]\nmax_acc_drop = 100.0\nmin_agreement = 0.0\ncovid_sensitivity_not_lower = false\n")
    res = _run("calibrate", "-m", bundle.dir, "--data", synthetic_manifest, "--method", "percentile", "--keep-float", "head",
        "--limit", "8", "--verify-limit", "8", "--gates", gates, "--calib-manifest-out", tmp_path / "cal", "-q",
    )
    assert res.exit_code == 0, res.output
    assert "model.int8.onnx" in res.output and "gate on test (n=8)" in res.output and "kept in float" in res.output
    calib = Bundle.load(bundle.dir).meta["calibration"]
    assert calib["method"] == "percentile" and calib["images"] == 8 and len(calib["keep_float"]["head"]) == 2
    assert check_tensorrt_qdq(bundle.default_path("onnx_int8")) == []
    assert len(list((tmp_path / "cal").glob("*.csv"))) == 1


def test_calibrate_fallback_auto_prints_json_with_the_float_nodes_and_why(exported_cnn, copy_bundle,
                                                                        synthetic_manifest, tmp_path):
    import json

    bundle = copy_bundle(exported_cnn)
    gates = tmp_path / "gates.toml"
    gates.write_text("[gates]\nmin_agreement = 1.0\nmax_acc_drop = 0.0\n")
    res = _run("calibrate", "-m", bundle.dir, "--data", synthetic_manifest, "--fallback", "auto", "--rank", "error",
               "--scope", "all", "--gates", gates, "--calib-manifest-out", tmp_path / "cal", "-q", "--json")
    assert res.exit_code == 0, res.output
    section = json.loads(res.stdout)
    fb = section["fallback"]
    assert fb["rank"] == "error" and fb["scope"] == "all" and fb["selected_on"] == "val"
    assert all(n["why"] for n in fb.get("float_nodes", []))
    assert section["gate"]["split"] == "test" and "float_weights" in section
    assert "ranking the quantized nodes on val by error" in res.stderr


def test_calibrate_rejects_gating_on_calibration_split(exported_cnn, synthetic_manifest):
    res = _run("calibrate", "-m", exported_cnn, "--data", synthetic_manifest, "--verify-split", "calib")
    assert res.exit_code == 2 and "held-out" in res.output
    res = _run("calibrate", "-m", exported_cnn, "--data", synthetic_manifest, "--keep-float", "nope", "--no-verify", "-q")
    assert res.exit_code == 1 and "no node named 'nope'" in res.output


def test_verify_command_json_and_exit_codes(exported_cnn, copy_bundle, synthetic_manifest, tmp_path):
    bundle = copy_bundle(exported_cnn)
    res = _run("verify", "-m", bundle.dir, "--data", synthetic_manifest, "--limit", "8", "--bootstrap", "0", "--json", "-q")
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["passed"] is True and data["data"]["n"] == 8 and data["reference"] == "keras"
    assert data["data"]["subset"] is True
    # a subset run is a quick look: its own report, never the published verdict
    assert (bundle.dir / "verify-subset.md").is_file() and not (bundle.dir / "verify.md").exists()
    assert Bundle.load(bundle.dir).gate_verdict("onnx_fp16") is None

    # a gate nothing can pass: FP16 cannot match to 1e-12 -> exit 3, report still written
    args = ["--artifact", "onnx_fp16", "--max-prob-diff", "1e-12", "--bootstrap", "0", "-q"]
    res = _run("verify", "-m", bundle.dir, "--data", synthetic_manifest, *args)
    assert res.exit_code == 3
    assert "FAIL" in res.output and "max |probability difference|" in res.output
    assert Bundle.load(bundle.dir).gate_verdict("onnx_fp16") is False
    assert (bundle.dir / "verify.md").is_file()

    # and a passing subset run afterwards does not overturn the full split's failure
    res = _run("verify", "-m", bundle.dir, "--data", synthetic_manifest, "--limit", "4", "--artifact", "onnx_fp16",
               "--bootstrap", "0", "-q")
    assert res.exit_code == 0, res.output
    assert Bundle.load(bundle.dir).gate_verdict("onnx_fp16") is False

    gates = tmp_path / "g.toml"
    gates.write_text("[gates]\nmin_agreement = 2\n")
    res = _run("verify", "-m", bundle.dir, "--data", synthetic_manifest, "--gates", gates)
    assert res.exit_code == 1 and "min_agreement" in res.output
    res = _run("verify", "-m", bundle.dir, "--data", synthetic_manifest, "--min-agreement", "1.5")
    assert res.exit_code == 2


def _stub_bundle_and_manifest(tmp_path):
    """Paths that pass Click's existence checks; the usage errors below fire before either is read."""
    (tmp_path / "b").mkdir()
    (tmp_path / "m.csv").write_text("relative_path,label,split,patient_id\n")
    return tmp_path / "b", tmp_path / "m.csv"


def test_verify_with_an_empty_artifact_list_is_a_usage_error(tmp_path):
    """`--artifact ,` used to gate nothing and exit 0."""
    bundle, manifest = _stub_bundle_and_manifest(tmp_path)
    for value in (",", ""):
        res = _run("verify", "-m", bundle, "--data", manifest, "--artifact", value)
        assert res.exit_code == 2 and "--artifact" in res.output and "Traceback" not in res.output


def test_calibrate_options_that_would_be_ignored_are_usage_errors(tmp_path):
    bundle, manifest = _stub_bundle_and_manifest(tmp_path)
    res = _run("calibrate", "-m", bundle, "--data", manifest, "--percentile", "99.9")
    assert res.exit_code == 2 and "--method percentile" in res.output
    res = _run("calibrate", "-m", bundle, "--data", manifest, "--no-verify", "--verify-limit", "8")
    assert res.exit_code == 2 and "--no-verify" in res.output


def test_calibrate_split_conflicts_are_refused_before_a_shipped_model_is_copied(tmp_path, monkeypatch):
    """The library's own split check runs before `-m coronet` is copied; the CLI adds the flags."""
    monkeypatch.setenv("EDGECXR_MODELS", str(tmp_path / "models"))
    _, manifest = _stub_bundle_and_manifest(tmp_path)
    res = _run("calibrate", "-m", "coronet", "--data", manifest, "--verify-split", "calib")
    assert res.exit_code == 2 and "(options: --verify-split, --split)" in res.output
    res = _run("calibrate", "-m", "coronet", "--data", manifest, "--explain", "--select-split", "test")
    assert res.exit_code == 2 and "(options: --select-split, --split, --verify-split)" in res.output
    assert not (tmp_path / "models" / "coronet").exists()


def test_verify_with_nothing_to_compare_is_an_error(keras_cnn_bundle, copy_bundle, synthetic_manifest):
    """Only the reference (model.keras) exists: the gate compared nothing and must not exit 0."""
    bundle = copy_bundle(keras_cnn_bundle)
    res = _run("verify", "-m", bundle.dir, "--data", synthetic_manifest, "--split", "test", "--bootstrap", "0", "-q")
    assert res.exit_code == 1, res.output
    assert "nothing was verified" in res.output


# -- the same manifest rules for every command that reads one -------------------------------------------
def _tiny_set(root, sha: str | None = None, rel_prefix: str = ""):
    """A tiny bundle (no TensorFlow) and a manifest of flat images for it, test + calib + val splits."""
    import cv2
    import numpy as np
    from runtime import tinymodels

    bundle = tinymodels.make_bundle(root / "bundle", int8=False, fp16=False)
    data = root / "data"
    data.mkdir()
    rows = ["relative_path,label,split,patient_id,sha256"]
    for i, label in enumerate(tinymodels.CLASSES * 3):
        cv2.imwrite(str(data / f"{i}.png"), np.full((40, 40), 20 * i, np.uint8))
        split = ("test", "calib", "val")[i // len(tinymodels.CLASSES)]
        rows.append(f"{rel_prefix}{i}.png,{label},{split},p{i},{sha if i in (0, 4) and sha else ''}")  # a test, a calib row
    manifest = data / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return bundle, manifest


def test_a_changed_image_stops_evaluate_verify_and_calibrate_alike(tmp_path):
    bundle, manifest = _tiny_set(tmp_path, sha="0" * 64)
    commands = [
        ["evaluate", "--artifact", "onnx_fp32", "--bootstrap", "0"],
        ["verify", "--reference", "onnx_fp32", "--bootstrap", "0"],
        ["calibrate", "--no-verify"],
    ]
    before = (bundle.dir / "bundle.json").read_bytes()
    for command in commands:
        res = CliRunner().invoke(main, [command[0], "-m", str(bundle.dir), "--data", str(manifest), *command[1:], "-q"])
        assert res.exit_code == 1, (command, res.output)
        assert ".png: sha256 mismatch: manifest 000000000000..." in res.stderr, (command, res.stderr)
    assert (bundle.dir / "bundle.json").read_bytes() == before


def test_rows_outside_the_manifest_folder_need_allow_outside(tmp_path):
    bundle, manifest = _tiny_set(tmp_path, rel_prefix="../data/")
    args = ["evaluate", "-m", str(bundle.dir), "--data", str(manifest), "--artifact", "onnx_fp32", "--bootstrap", "0", "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1
    assert "climbs out of the manifest's folder" in res.stderr and "(options: --allow-outside)" in res.stderr
    res = CliRunner().invoke(main, [*args, "--allow-outside"])
    assert res.exit_code == 0, res.output


def test_calibration_records_go_into_the_bundle_named_by_content(exported_cnn, synthetic_manifest, tmp_path, monkeypatch):
    """Two bundles with the same folder name never share (or overwrite) a record; the CWD gets nothing."""
    import shutil

    import numpy as np
    import onnx
    from onnx import numpy_helper

    first, second = tmp_path / "a" / "coronet", tmp_path / "b" / "coronet"
    for folder in (first, second):
        shutil.copytree(exported_cnn, folder)
    model = onnx.load(str(second / "model.onnx"))  # the second bundle holds another FP32 model
    init = model.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), init.name))
    onnx.save(model, str(second / "model.onnx"))
    shared = tmp_path / "records"
    monkeypatch.chdir(tmp_path)
    for bundle, extra in ((first, []), (second, []), (first, ["--calib-manifest-out", shared]),
                          (second, ["--calib-manifest-out", shared])):
        res = _run("calibrate", "-m", bundle, "--data", synthetic_manifest, "--no-verify", "--limit", "8", "-q", *extra)
        assert res.exit_code == 0, res.output
    assert not (tmp_path / "calibration").exists()  # nothing in the working folder
    shas = []
    for bundle in (first, second):
        section = Bundle.load(bundle).meta["calibration"]
        shas.append(section["fp32_sha256"][:8])
        (record,) = (bundle / "calibration").glob("*.csv")
        model = Bundle.load(bundle).model
        assert record.name == f"{model}-{shas[-1]}-minmax-calib-{section['manifest_sha256'][:8]}.csv"
        assert section["manifest"] == f"{shared.resolve()}/{record.name}"  # the last run wrote to --calib-manifest-out
    assert shas[0] != shas[1]
    assert sorted(p.name.split("-")[1] for p in shared.glob("*.csv")) == sorted(shas)
    assert len(list(shared.glob("*.json"))) == 2
