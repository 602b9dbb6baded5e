"""Accuracy regression gate: passes good artifacts, fails broken ones, reports what it could not run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import ArgumentError, BundleError, GateFailedError
from edgecxr.core.fileutil import read_json
from edgecxr.data.dataset import subset_records
from edgecxr.data.manifest import read_manifest, select
from edgecxr.stages.gate.config import GateConfigError, Gates
from edgecxr.stages.gate.run import run_gate


def _permute_head(src, dst, perm) -> None:
    """Write `src` with the classifier's output columns permuted: a plausible-looking but wrong model.

    With a derangement (no fixed point) every prediction moves to another class, so top-1 agreement
    with the original is exactly 0.
    """
    model = onnx.load(str(src))
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"][-1]
    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits[gemm.input[1]])
    b = numpy_helper.to_array(inits[gemm.input[2]])
    inits[gemm.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w[:, perm]), gemm.input[1]))
    inits[gemm.input[2]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(b[perm]), gemm.input[2]))
    onnx.save(model, str(dst))


def test_gate_passes_good_artifacts_and_writes_reports(exported_cnn, copy_bundle, synthetic_manifest):
    bundle = copy_bundle(exported_cnn)
    result = run_gate(bundle, synthetic_manifest, "test", bootstrap=0, progress=False, write=True)
    assert result.passed and result.failures == []
    assert result.reference == "keras" and result.n == 24
    assert result.per_class == {"covid": 6, "normal": 6, "pneumonia_bacterial": 6, "pneumonia_viral": 6}
    fp32, fp16 = result.get("onnx_fp32"), result.get("onnx_fp16")
    assert fp32.status == fp16.status == "ok" and fp32.passed and fp16.passed
    assert fp32.agreement["top1_agreement"] == 1.0 and fp32.agreement["max_abs_diff"] < 1e-4
    assert {c.gate for c in fp16.checks} == {"max_acc_drop", "covid_sensitivity_not_lower", "min_agreement", "min_images"}
    assert result.get("keras").reference and result.get("keras").passed is None
    assert result.get("onnx_int8").status == "skipped" and result.get("onnx_int8").reason == "not in the bundle"
    # per-class numbers are there for the report
    pc = fp16.metrics["per_class"]["covid"]
    assert {"recall", "specificity"} <= set(pc)

    data = read_json(bundle.dir / "verify.json")
    assert data["passed"] is True and set(data["artifacts"]) >= {"keras", "onnx_fp32", "onnx_fp16"}
    md = (bundle.dir / "verify.md").read_text()
    assert "| artifact | backend | status |" in md and "| onnx_fp16 | onnxruntime | ok |" in md and "PASSED" in md
    verdicts = Bundle.load(bundle.dir).gate_verdicts()
    assert {"onnx_fp32", "onnx_fp16"} <= set(verdicts) and "keras" not in verdicts  # the reference is not gated
    fp16_entry = verdicts["onnx_fp16"]
    assert fp16_entry["passed"] is True and fp16_entry["split"] == "test" and fp16_entry["reference"] == "keras"
    assert fp16_entry["by"] == "verify" and fp16_entry["report"] == "verify.json"
    reloaded = Bundle.load(bundle.dir)
    assert fp16_entry["sha256"] == reloaded.recorded_sha256("onnx_fp16")  # the verdict names the bytes it gated
    fp16_file = reloaded.artifact("onnx_fp16")
    fp16_file.write_bytes(fp16_file.read_bytes() + b"\0")  # replaced after the gate, and registered again
    reloaded.set_artifact("onnx_fp16", fp16_file)
    reloaded.save()
    assert Bundle.load(bundle.dir).gate_verdict("onnx_fp16") is None and Bundle.load(bundle.dir).gate_verdict("onnx_fp32")


def test_gate_fails_on_perturbed_weights(exported_cnn, copy_bundle, synthetic_manifest):
    bundle = copy_bundle(exported_cnn)
    broken = bundle.default_path("onnx_int8")
    _permute_head(bundle.artifact("onnx_fp32"), broken, [1, 2, 3, 0])
    bundle.set_artifact("onnx_int8", broken)
    bundle.save()
    with pytest.raises(GateFailedError, match="onnx_int8: top-1 agreement with keras 0.00%") as info:
        run_gate(bundle, synthetic_manifest, "test", bootstrap=0, progress=False, write=True)
    result = info.value.result
    bad = result.get("onnx_int8")
    assert bad.passed is False and bad.agreement["top1_agreement"] == 0.0
    assert len(bad.disagreements) == 20  # listed (capped) for inspection
    assert result.get("onnx_fp32").passed is True  # the good ones still pass
    assert Bundle.load(bundle.dir).gate_verdict("onnx_int8") is False
    assert "**FAIL**" in (bundle.dir / "verify.md").read_text()

    # raise_on_fail=False hands the failing result back instead
    quiet = run_gate(bundle, synthetic_manifest, "test", ["onnx_int8"], bootstrap=0, progress=False, raise_on_fail=False)
    assert not quiet.passed and [a.key for a in quiet.artifacts] == ["keras", "onnx_int8"]


def test_unrunnable_artifact_fails_the_gate(exported_cnn, copy_bundle, synthetic_manifest):
    bundle = copy_bundle(exported_cnn)
    bundle.artifact("onnx_fp16").write_bytes(b"not an onnx file")
    result = run_gate(bundle, synthetic_manifest, "test", limit=8, bootstrap=0, progress=False, raise_on_fail=False)
    fp16 = result.get("onnx_fp16")
    assert fp16.status == "error" and fp16.passed is False
    assert any(f.startswith("onnx_fp16: could not be run") for f in result.failures)


def test_onnx_reference_without_keras(exported_cnn, copy_bundle, synthetic_manifest):
    bundle = copy_bundle(exported_cnn)
    result = run_gate(
        bundle, synthetic_manifest, "val", ["onnx_fp16"], reference="onnx_fp32", bootstrap=0, progress=False
    )
    assert result.reference == "onnx_fp32" and [a.key for a in result.artifacts] == ["onnx_fp32", "onnx_fp16"]
    assert result.passed


def test_engines_are_skipped_with_a_reason_or_fail_when_named(exported_cnn, copy_bundle, synthetic_manifest):
    from edgecxr.runtime.backends import availability

    if availability().get("tensorrt") is None:
        pytest.skip("TensorRT is available here; this test covers machines without it")
    bundle = copy_bundle(exported_cnn)
    engine = bundle.dir / "engines" / "tiny-fp16.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"\0" * 16)
    bundle.update(engines={"engines/tiny-fp16.engine": {"precision": "fp16"}})

    result = run_gate(bundle, synthetic_manifest, "test", limit=8, bootstrap=0, progress=False)
    eng = result.get("engine:tiny-fp16.engine")
    assert eng.status == "skipped" and "tensorrt not available here" in eng.reason
    assert result.passed  # a machine that cannot run TensorRT does not fail the ONNX artifacts

    # named explicitly (as `edgecxr build` does with a fresh engine), not running it is a failure
    with pytest.raises(GateFailedError, match="could not be run"):
        run_gate(bundle, synthetic_manifest, "test", [str(engine)], limit=8, bootstrap=0, progress=False)


def test_bad_requests(exported_cnn, synthetic_manifest):
    bundle = Bundle.load(exported_cnn)
    with pytest.raises(ArgumentError, match="unknown artifact"):
        run_gate(bundle, synthetic_manifest, "test", ["onnx_int4"], progress=False)
    with pytest.raises(BundleError, match=r"asked to verify \['onnx_int8'\]"):
        run_gate(bundle, synthetic_manifest, "test", ["onnx_int8"], progress=False)
    with pytest.raises(BundleError, match="needs a data manifest"):
        run_gate(bundle, None, "test", progress=False)


def test_gates_from_toml_flags_and_overrides(tmp_path):
    path = tmp_path / "gates.toml"
    path.write_text(
        "[gates]\nmax_acc_drop = 0.5\nmin_agreement = 0.99\n\n"
        "[gates.onnx_int8]\nmin_agreement = 0.97\n\n[gates.engines]\nmax_prob_diff = 0.05\n"
    )
    gates = Gates.from_toml(path)
    assert (gates.max_acc_drop, gates.min_agreement, gates.covid_sensitivity_not_lower) == (0.5, 0.99, True)
    assert gates.for_artifact("onnx_int8").min_agreement == 0.97
    assert gates.for_artifact("onnx_fp16").min_agreement == 0.99
    assert gates.for_artifact("engine:x.engine").max_prob_diff == 0.05
    flagged = gates.with_values(max_acc_drop=None, min_agreement=0.9, covid_sensitivity_not_lower=False)
    assert (flagged.max_acc_drop, flagged.min_agreement, flagged.covid_sensitivity_not_lower) == (0.5, 0.9, False)

    path.write_text("[gates]\nmin_agrement = 0.9\n")
    with pytest.raises(GateConfigError, match="unknown gate 'min_agrement'"):
        Gates.from_toml(path)
    path.write_text("[gates]\nmin_agreement = 98\n")
    with pytest.raises(GateConfigError, match=r"fraction in \[0, 1\]"):
        Gates.from_toml(path)
    path.write_text("[gates.onnx_int8]\nmax_acc_drop = -1\n")
    with pytest.raises(GateConfigError, match="max_acc_drop"):
        Gates.from_toml(path)
    path.write_text("[gates\n")
    with pytest.raises(GateConfigError, match="invalid TOML"):
        Gates.from_toml(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[gate]\nmin_agreement = 0.99\n", r"unknown table\(s\) \['\[gate\]'\]"),
        ("[gates]\nmin_agreement = 0.99\n[gate]\nmax_acc_drop = 0.1\n", r"unknown top-level key\(s\) \['gate'\]"),
        ("[gates.onnx_fp61]\nmin_agreement = 0.97\n", r"\[gates.onnx_fp61\] names no artifact"),
        ("[gates]\n[gates.engine]\nmax_prob_diff = 0.1\n", r"\[gates.engine\] names no artifact"),
    ],
)
def test_gates_toml_misspelled_tables_are_errors(tmp_path, text, match):
    """A misspelled table would leave its thresholds unapplied while the gate still says PASS."""
    path = tmp_path / "gates.toml"
    path.write_text(text)
    with pytest.raises(GateConfigError, match=match):
        Gates.from_toml(path)


def test_gates_toml_accepts_every_artifact_table(tmp_path):
    path = tmp_path / "gates.toml"
    path.write_text('[gates]\n[gates.onnx_fp16]\nmax_prob_diff = 0.01\n[gates."engine:a.engine"]\nmin_agreement = 0.9\n')
    gates = Gates.from_toml(path)
    assert gates.for_artifact("engine:a.engine").min_agreement == 0.9
    assert gates.for_artifact("onnx_fp16").max_prob_diff == 0.01


def test_gates_file_errors_name_the_file(tmp_path):
    """A binary file or a bad value is one GateConfigError naming the TOML file, not a traceback."""
    path = tmp_path / "gates.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    with pytest.raises(GateConfigError, match="not a TOML text file") as info:
        Gates.from_toml(path)
    assert str(path) in str(info.value)
    path.write_text('[gates]\nmax_acc_drop = "a"\n')
    with pytest.raises(GateConfigError, match="max_acc_drop") as info:
        Gates.from_toml(path)
    assert str(info.value).startswith(f"{path}: ")


def test_subset_records_is_class_balanced_and_ordered(synthetic_manifest):
    from edgecxr.data.manifest import CLASSES_4

    records = select(read_manifest(synthetic_manifest), "test")
    subset = subset_records(records, CLASSES_4, 6)
    labels = [r.label for r in subset]
    assert [labels.count(c) for c in CLASSES_4] == [2, 2, 1, 1]
    positions = [records.index(r) for r in subset]
    assert positions == sorted(positions)
    assert subset_records(records, CLASSES_4, None) == records


def test_stale_int8_is_reported(exported_lstm, copy_bundle, synthetic_manifest, tmp_path):
    """An INT8 model calibrated from another model.onnx than the current one is flagged by export and verify."""
    from edgecxr.stages.export.int8 import calibrate_bundle
    from edgecxr.stages.export.onnx import export_bundle

    bundle = copy_bundle(exported_lstm)
    calibrate_bundle(bundle, synthetic_manifest, verify=False, calib_manifest_out=tmp_path, progress=False)
    result = run_gate(bundle, synthetic_manifest, "test", limit=6, bootstrap=0, progress=False, raise_on_fail=False)
    assert not any("calibrated from another" in n for n in result.notes)

    bundle.meta["calibration"]["fp32_sha256"] = "0" * 64  # as if model.onnx had been re-exported since
    bundle.save()
    result = run_gate(bundle, synthetic_manifest, "test", limit=6, bootstrap=0, progress=False, raise_on_fail=False)
    assert any("calibrated from another model.onnx" in n for n in result.notes)
    section = export_bundle(Bundle.load(bundle.dir), fp16=False, progress=False)
    assert "re-run `edgecxr calibrate`" in section["warnings"][0]


def test_stored_reference_gates_a_bundle_shipped_without_fp32(exported_cnn, copy_bundle, synthetic_manifest, tmp_path):
    """A shipped model carries only FP16 + the Keras probabilities per image sha256; the gate uses them."""
    import shutil

    from edgecxr.stages.gate.reference import STORED_KEY, STORED_REFERENCE, store_reference

    bundle = copy_bundle(exported_cnn)
    full = run_gate(bundle, synthetic_manifest, "test", bootstrap=0, progress=False, raise_on_fail=False)
    records = select(read_manifest(synthetic_manifest), "test")
    from edgecxr.data.dataset import load_split
    from edgecxr.runtime.backends import create_runner

    _, x, _ = load_split(bundle, synthetic_manifest, "test", progress=False)
    with create_runner("keras", bundle.artifact("keras")) as runner:
        store_reference(bundle, records, runner.infer(x), source="keras", split="test")
    shipped = Bundle(tmp_path / "shipped", dict(bundle.meta, artifacts={"onnx_fp16": "model.fp16.onnx"}))
    shipped.dir.mkdir()
    shutil.copy2(bundle.artifact("onnx_fp16"), shipped.dir / "model.fp16.onnx")
    shutil.copy2(bundle.dir / STORED_REFERENCE, shipped.dir / STORED_REFERENCE)
    shipped.save()
    result = run_gate(Bundle.load(shipped.dir), synthetic_manifest, "test", reference="auto", bootstrap=0,
                      progress=False, raise_on_fail=False)
    assert result.reference == STORED_KEY and result.passed
    assert result.get("onnx_fp16").agreement == pytest.approx(full.get("onnx_fp16").agreement, abs=1e-5)
    # a stored reference that does not cover the images is an error, not a pass
    with pytest.raises(BundleError, match="no stored reference"):
        run_gate(Bundle.load(shipped.dir), synthetic_manifest, "val", bootstrap=0, progress=False)


def test_covid_gate_fails_on_a_split_without_covid():
    """A 2-image split with no COVID image used to print 'covid sens 0.0% ... PASS'."""
    from edgecxr.stages.gate.config import Gates
    from edgecxr.stages.gate.result import ArtifactResult
    from edgecxr.stages.gate.run import gate_checks

    no_covid = {"accuracy": 1.0, "covid_vs_rest": {"tp": 0, "fn": 0, "sensitivity": 0.0}}
    ref = ArtifactResult("onnx_fp32", "m.onnx", "onnxruntime", "ok", metrics=no_covid)
    art = ArtifactResult("onnx_int8", "m.int8.onnx", "onnxruntime", "ok", metrics=no_covid,
                         agreement={"top1_agreement": 1.0, "max_abs_diff": 0.0})
    checks = {c.gate: c for c in gate_checks(Gates(), ref, art)}
    assert checks["covid_sensitivity_not_lower"].passed is False
    assert "cannot be checked" in checks["covid_sensitivity_not_lower"].detail
    off = gate_checks(Gates(covid_sensitivity_not_lower=False), ref, art)
    assert all(c.passed for c in off) and "covid_sensitivity_not_lower" not in {c.gate for c in off}


def test_a_split_too_small_or_missing_a_class_fails_with_the_reason():
    from edgecxr.stages.gate.config import Gates
    from edgecxr.stages.gate.run import split_checks

    full = split_checks(Gates(min_images=8), {"covid": 3, "normal": 3, "pneumonia": 2})
    assert all(c.passed for c in full) and [c.gate for c in full] == ["min_images"]
    small = {c.gate: c for c in split_checks(Gates(min_images=30), {"covid": 3, "normal": 3, "pneumonia": 2})}
    assert small["min_images"].passed is False and "at least 30" in small["min_images"].detail
    lacking = {c.gate: c for c in split_checks(Gates(), {"covid": 0, "normal": 1, "pneumonia": 1})}
    assert lacking["all_classes"].passed is False and "no covid images" in lacking["all_classes"].detail
    off = split_checks(Gates(require_all_classes=False), {"covid": 0, "normal": 1, "pneumonia": 1})
    assert all(c.passed for c in off)
    with pytest.raises(GateConfigError, match="min_images"):
        Gates(min_images=0)
