"""DICOM Structured Reports of predictions (issue 14, item 2): written with highdicom, read back with it."""

from __future__ import annotations

import shutil

import pydicom
import pytest
from click.testing import CliRunner

from dicom.dicomfiles import cxr_dataset, cxr_files, source_pngs, write
from edgecxr import Classifier
from edgecxr.cli import main
from edgecxr.runtime.prediction import Prediction

hd = pytest.importorskip("highdicom")

from edgecxr.dicom.outputs import result_path, write_results  # noqa: E402
from edgecxr.dicom.sr import CLASS_CODES, build_sr, read_sr  # noqa: E402


@pytest.fixture(scope="module")
def clf(tiny_model):
    with Classifier.load(tiny_model) as c:
        yield c


def test_sr_reads_back_with_the_source_uids_and_probabilities(clf, tmp_path):
    [path] = cxr_files(tmp_path / "in", 1)
    [pred] = clf.predict([path], workers=0)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    [(sr_path, _)] = write_results(pred, clf.audit, header, clf.classes, tmp_path / "out")
    assert sr_path == result_path(tmp_path / "out", header.SOPInstanceUID)
    sr = hd.sr.srread(sr_path)
    assert sr.SOPClassUID == hd.sr.ComprehensiveSR.from_dataset(sr).SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert sr.StudyInstanceUID == header.StudyInstanceUID and sr.PatientID == header.PatientID
    assert sr.Manufacturer == "edgecxr" and sr.SoftwareVersions == clf.audit["edgecxr_version"]
    got = read_sr(sr_path)
    assert got.referenced == {k: str(header[k].value) for k in
                              ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")}
    assert got.status == "ok" and got.label == pred.label
    assert got.probabilities == pytest.approx(pred.probabilities, abs=1e-9)
    assert got.model == clf.audit["model"] and got.edgecxr_version == clf.audit["edgecxr_version"]
    assert got.parameters["artifact_sha256"] == clf.audit["artifact_sha256"]
    assert got.parameters.get("orientation_gate") == clf.audit.get("orientation_gate")  # the gate is in the audit trail
    assert got.input_sha256 == pred.input_sha256
    # the standard codes are in the file, not only in our reader: the answer is the one finding,
    # every class probability a numeric measurement (method DCM Probability) named by the class's code
    findings, probabilities = content_items(sr)
    assert findings == [CLASS_CODES[pred.label][0]]
    assert probabilities == {CLASS_CODES[c][0]: pytest.approx(pred.probabilities[c], abs=1e-9) for c in clf.classes}
    groups = hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
    assert [g.finding_type.value for g in groups] == [CLASS_CODES[pred.label][0]]  # highdicom's reading: the answer
    assert all(g.source_images[0].referenced_sop_instance_uid == header.SOPInstanceUID for g in groups)


def content_items(sr) -> tuple[list[str], dict[str, float]]:
    """(code values of every "Finding" item, {concept code: value} of every NUM item whose method is Probability)."""
    findings, probabilities = [], {}

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0]
            if item.ValueType == "CODE" and (name.CodeValue, name.CodingSchemeDesignator) == ("121071", "DCM"):
                findings.append(str(item.ConceptCodeSequence[0].CodeValue))
            if item.ValueType == "NUM":
                methods = [str(m.ConceptCodeSequence[0].CodeValue) for m in item.get("ContentSequence", [])
                           if m.ConceptNameCodeSequence[0].CodeValue == "370129005"]
                if methods == ["122157"]:
                    probabilities[str(name.CodeValue)] = float(item.MeasuredValueSequence[0].NumericValue)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return findings, probabilities


def test_rejected_failed_and_abstained_are_reported(clf, tmp_path):
    png = source_pngs(1)[0]
    ct = cxr_dataset(png, Modality="CT")
    [pred] = clf.predict(ct, workers=0)
    got = read_sr(build_sr(pred, clf.audit, ct, clf.classes))
    assert got.status == "rejected" and "Modality CT" in got.reason and got.probabilities == {} and got.label is None
    failed = Prediction(0, error="truncated DICOM pixel data")
    got = read_sr(build_sr(failed, clf.audit, ct, clf.classes))
    assert got.status == "failed" and got.reason == "truncated DICOM pixel data"
    abstained = Prediction(0, label="normal", top1=0.6, probabilities={c: 0.1 for c in clf.classes},
                           status="abstained", reason="unlike the training X-rays", ood_score=9.5)
    sr = build_sr(abstained, clf.audit, ct, clf.classes)
    got = read_sr(sr)
    assert got.status == "abstained" and got.label == "normal" and got.reason == "unlike the training X-rays"
    assert set(got.probabilities) == set(clf.classes)
    findings, probabilities = content_items(sr)
    assert findings == [] and len(probabilities) == len(clf.classes)  # an abstention lists no finding
    for rejected_or_failed in (pred, failed):
        assert content_items(build_sr(rejected_or_failed, clf.audit, ct, clf.classes)) == ([], {})


def test_same_instance_same_model_same_report_uid(clf, tmp_path):
    """A retry after a crash replaces the report (same SOP Instance UID and file), never adds one."""
    ds = cxr_dataset(source_pngs(1)[0])
    [pred] = clf.predict(ds, workers=0)
    a = build_sr(pred, clf.audit, ds, clf.classes)
    b = build_sr(pred, clf.audit, ds, clf.classes)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    other = dict(clf.audit, artifact_sha256="0" * 64)
    assert build_sr(pred, other, ds, clf.classes).SOPInstanceUID != a.SOPInstanceUID
    write_results(pred, clf.audit, ds, clf.classes, tmp_path)
    write_results(pred, clf.audit, ds, clf.classes, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1


def test_an_image_under_the_report_name_is_not_replaced(clf, tmp_path):
    ds = cxr_dataset(source_pngs(1)[0])
    [pred] = clf.predict(ds, workers=0)
    target = result_path(tmp_path, ds.SOPInstanceUID)
    write(ds, target)  # somebody's image under that name
    before = target.read_bytes()
    with pytest.raises(ValueError, match="refusing to replace"):
        write_results(pred, clf.audit, ds, clf.classes, tmp_path)
    assert target.read_bytes() == before


def test_source_without_uids_is_refused(clf):
    ds = cxr_dataset(source_pngs(1)[0])
    del ds.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        build_sr(Prediction(0, error="x"), clf.audit, ds, clf.classes)


def test_infer_dicom_sr(tiny_model, tmp_path):
    inputs = tmp_path / "in"
    files = cxr_files(inputs, 2)
    shutil.copyfile(source_pngs(1)[0], inputs / "plain.png")
    broken = cxr_dataset(source_pngs(1)[0])
    broken.PixelData = broken.PixelData[:100]
    write(broken, inputs / "broken.dcm")
    out = tmp_path / "reports"
    result = CliRunner().invoke(main, ["infer", "-m", str(tiny_model), str(inputs), "--dicom-sr", str(out)])
    assert result.exit_code == 1, result.output  # the broken one failed
    assert "3 DICOM SR(s) written" in result.stderr and "1 non-DICOM input(s) have none" in result.stderr
    reports = {read_sr(p).referenced["SOPInstanceUID"]: read_sr(p) for p in out.iterdir()}
    assert set(reports) == {pydicom.dcmread(f).SOPInstanceUID for f in [*files, inputs / "broken.dcm"]}
    assert reports[broken.SOPInstanceUID].status == "failed"
    assert "truncated" in reports[broken.SOPInstanceUID].reason

    inside = CliRunner().invoke(main, ["infer", "-m", str(tiny_model), str(inputs), "--dicom-sr", str(inputs / "r")])
    assert inside.exit_code == 2 and "inside the input folder" in inside.stderr
    assert not (inputs / "r").exists()


def test_infer_dicom_sr_and_sc_on_anonymised_empty_and_deflated_inputs(tiny_model, tmp_path):
    """Issue 22: `infer --dicom-sr` printed a traceback for an anonymised DX (Type 2 attributes dropped)."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    inputs = tmp_path / "in"
    png = source_pngs(1)[0]
    anonymised = cxr_dataset(png)
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                    "PatientID", "PatientName"):
        delattr(anonymised, keyword)
    write(anonymised, inputs / "anonymised.dcm")
    deflated = cxr_dataset(png, crop=1)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write(deflated, inputs / "deflated.dcm")
    (inputs / "empty.dcm").write_bytes(b"")
    result = CliRunner().invoke(main, ["infer", "-m", str(tiny_model), str(inputs), "--dicom-sr",
                                       str(tmp_path / "sr"), "--dicom-sc", str(tmp_path / "sc")])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output  # the empty file failed
    for ds in (anonymised, deflated):
        assert read_sr(tmp_path / "sr" / f"{ds.SOPInstanceUID}.sr.dcm").status == "ok"
        assert (tmp_path / "sc" / f"{ds.SOPInstanceUID}.sc.dcm").exists()
    assert pydicom.dcmread(tmp_path / "sc" / f"{anonymised.SOPInstanceUID}.sc.dcm").PatientID == ""
