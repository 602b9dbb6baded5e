"""The heat map Secondary Capture (dicom/sc.py), read back with highdicom."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from integrity import hostile

from edgecxr.cli import main
from edgecxr.core.errors import DataError
from edgecxr.dicom.sc import FRONTAL_ORIENTATION, heatmap_secondary_capture, sc_path, write_secondary_capture
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.heatmap import explain

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")


def source_dicom(path, **extra):
    uids = {"StudyInstanceUID": pydicom.uid.generate_uid(), "SeriesInstanceUID": pydicom.uid.generate_uid()}
    attrs = {"PatientName": "Test^Patient", "PatientID": "P-1", "StudyDate": "20261203", "StudyTime": "083000",
             "AccessionNumber": "A-1", "StudyID": "1", "ReferringPhysicianName": "", "PatientBirthDate": "",
             "PatientSex": "O", "ViewPosition": "PA", "BodyPartExamined": "CHEST", **uids, **extra}
    path.write_bytes(hostile.dicom_bytes(hostile.example(0, 512), **attrs))
    return path


@pytest.fixture(scope="module")
def clf(tiny_model):
    with Classifier.load(tiny_model) as c:
        yield c


def test_secondary_capture_is_in_the_source_study_in_a_new_series(clf, tmp_path):
    src = source_dicom(tmp_path / "src.dcm")
    ref = pydicom.dcmread(src)
    pred, heat = explain(clf, src)
    assert heat is not None, pred
    out = write_secondary_capture(sc_path(tmp_path / "out", ref.SOPInstanceUID),
                                  heatmap_secondary_capture(src, heat, model="tiny 1.0"))
    assert out.name == f"{ref.SOPInstanceUID}.sc.dcm"
    back = hd.imread(out)
    assert back.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert back.StudyInstanceUID == ref.StudyInstanceUID and back.PatientID == "P-1"
    assert back.AccessionNumber == "A-1"
    assert back.SeriesInstanceUID != ref.SeriesInstanceUID and back.SOPInstanceUID != ref.SOPInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == ref.SOPInstanceUID
    assert back.SourceImageSequence[0].ReferencedSOPClassUID == ref.SOPClassUID
    assert heat.target in back.SeriesDescription and heat.target in back.DerivationDescription
    assert "tiny 1.0" in back.DerivationDescription
    assert back.PhotometricInterpretation == "RGB" and back.BurnedInAnnotation == "NO"
    pixels = back.pixel_array
    assert pixels.shape == (ref.Rows, ref.Columns, 3) and pixels.dtype == np.uint8
    assert tuple(back.PatientOrientation) == FRONTAL_ORIENTATION
    assert back.BodyPartExamined == "CHEST" and "Laterality" not in back  # Type 2C: absent for a chest
    # a retry gives the same UIDs (the PACS replaces the capture, never doubles it); another model other ones
    again = heatmap_secondary_capture(src, heat, model="tiny 1.0")
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (back.SOPInstanceUID, back.SeriesInstanceUID)
    other = heatmap_secondary_capture(src, heat, audit={"artifact_sha256": "0" * 64})
    assert other.SOPInstanceUID != back.SOPInstanceUID and other.SeriesInstanceUID != back.SeriesInstanceUID


def test_the_source_orientation_is_kept_and_a_file_without_uids_is_refused(clf, tmp_path):
    src = source_dicom(tmp_path / "src.dcm", PatientOrientation=["R", "F"])
    _, heat = explain(clf, src)
    assert tuple(heatmap_secondary_capture(src, heat).PatientOrientation) == ("R", "F")
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match="not a readable DICOM"):
        heatmap_secondary_capture(png, heat)
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(hostile.dicom_bytes(hostile.example(0, 256)))  # no StudyInstanceUID
    with pytest.raises(DataError, match="StudyInstanceUID"):
        heatmap_secondary_capture(bare, heat)


def test_a_received_dataset_is_mapped_and_captured_without_a_file(clf, tmp_path):
    ds = pydicom.dcmread(source_dicom(tmp_path / "src.dcm"))
    pred, heat = explain(clf, ds)  # in memory, as a DICOM receiver hands it over
    assert heat is not None, pred
    sc = heatmap_secondary_capture(ds, heat)
    assert sc.StudyInstanceUID == ds.StudyInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert sc.pixel_array.shape == (ds.Rows, ds.Columns, 3)


def test_a_capture_replaces_only_an_earlier_capture(clf, tmp_path):
    src = source_dicom(tmp_path / "src.dcm")
    _, heat = explain(clf, src)
    sc = heatmap_secondary_capture(src, heat)
    path = sc_path(tmp_path / "out", pydicom.dcmread(src).SOPInstanceUID)
    write_secondary_capture(path, sc)
    write_secondary_capture(path, heatmap_secondary_capture(src, heat))  # a retry replaces it, same UID
    assert pydicom.dcmread(path).SOPInstanceUID == sc.SOPInstanceUID and len(list(path.parent.iterdir())) == 1
    path.unlink()
    path.write_bytes(src.read_bytes())  # someone's image under that name
    with pytest.raises(ValueError, match="refusing to replace"):
        write_secondary_capture(path, sc)
    assert path.read_bytes() == src.read_bytes()
    with pytest.raises(ValueError, match="not a valid SOP Instance UID"):
        sc_path(tmp_path, "../../etc/x")


def test_infer_dicom_sc_writes_one_capture_per_classified_dicom_input(tiny_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    dicoms = [source_dicom(src / f"{i}.dcm") for i in range(2)]
    png = src / "x.png"
    cv2.imwrite(str(png), hostile.example(1, 256))
    out = tmp_path / "sc"
    result = CliRunner().invoke(main, ["infer", "-m", str(tiny_model), str(src), "--dicom-sc", str(out), "--json"])
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    refs = {pydicom.dcmread(d).SOPInstanceUID: pydicom.dcmread(d) for d in dicoms}
    assert sorted(f.name for f in files) == sorted(f"{uid}.sc.dcm" for uid in refs)
    series = set()
    for f in files:
        back = hd.imread(f)
        ref = refs[back.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert back.StudyInstanceUID == ref.StudyInstanceUID and "tiny" not in back.DerivationDescription
        assert "coronet" in back.DerivationDescription  # the model named by the audit trail
        series.add(back.SeriesInstanceUID)
    assert len(series) == 2  # one heat map series per source series (these two come from two studies)
    again = CliRunner().invoke(main, ["infer", "-m", str(tiny_model), str(src), "--dicom-sc", str(out), "--json"])
    assert again.exit_code == 0, again.output
    assert {pydicom.dcmread(f).SOPInstanceUID for f in out.iterdir()} == {pydicom.dcmread(f).SOPInstanceUID
                                                                          for f in files}  # a rerun replaces
    heatmaps = json.loads(result.stdout)["heatmaps"]
    assert heatmaps[str(png)]["sc"] is None and heatmaps[str(png)]["path"] is None
    assert "none for 1 non-DICOM input(s)" in result.stderr
