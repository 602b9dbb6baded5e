"""`edgecxr confidence --calibrator`: the stage fits the calibrator on val + calib and records it."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner
from runtime import tinymodels

from edgecxr.cli import main
from edgecxr.core.bundle import Bundle
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.confidence import KINDS
from edgecxr.runtime.input_checks import InputRules

PER_SPLIT = {"train": 8, "val": 12, "calib": 12}


@pytest.fixture(scope="module")
def small_manifest(shared_cxr, tmp_path_factory):
    with open(shared_cxr / "manifest.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    path = tmp_path_factory.mktemp("data") / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["relative_path", "label", "split", "patient_id"])
        for split, n in PER_SPLIT.items():
            for r in [r for r in rows if r["split"] == split][::7][:n]:
                writer.writerow([str(shared_cxr / r["relative_path"]), r["label"], split, r["patient_id"]])
    return path


def test_confidence_records_the_asked_calibrator_and_the_cv_table(tmp_path, small_manifest):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    bundle.update(confidence={"temperature": {"value": 2.0}})  # an older fit: replaced, not kept beside

    def run(kind: str):
        return CliRunner().invoke(main, ["confidence", "-m", str(bundle.dir), "--data", str(small_manifest),
                                         "--calibrator", kind, "--per-kind", "1", "-q", "--allow-outside"])

    # the tiny model's probabilities are unrelated to the labels: the best vector scaling flattens
    # them (scale -> 0), which load would refuse, so the stage refuses to record it, in one line
    res = run("vector")
    assert res.exit_code == 1 and "vector calibrator fitted on 24 images is out of range" in res.output
    assert res.output.strip().count("\n") == 0
    assert Bundle.load(bundle.dir).meta["confidence"] == {"temperature": {"value": 2.0}}
    res = run("temperature")
    assert res.exit_code == 0, res.output
    section = Bundle.load(bundle.dir).meta["confidence"]
    cal = section["calibrator"]
    assert "temperature" not in section
    assert cal["kind"] == "temperature" and cal["fitted_on"] == ["val", "calib"] and cal["n"] == 24
    assert cal["chosen_by"] == "--calibrator option"
    assert set(cal["cv"]["table"]) == set(KINDS) and cal["cv"]["choice"] in KINDS
    assert "calibrator CV ECE (val + calib, 24 images)" in res.output
    with Classifier.load(bundle.dir, precision="fp32", input_rules=InputRules.off()) as clf:
        assert f"temperature {cal['temperature']:.3f}" in clf.backend_info["confidence"]
        assert clf.audit["calibrator"].startswith("temperature") and clf.audit["temperature"] == cal["temperature"]
