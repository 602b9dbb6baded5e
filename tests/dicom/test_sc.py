"""The heat map Secondary Capture (runtime/heatmap_dicom.py), read back with highdicom."""

from __future__ import annotations

import numpy as np
import pytest
from integrity import hostile

from edgecxr.core.errors import DataError
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.heatmap import explain
from edgecxr.runtime.heatmap_dicom import (
    FRONTAL_ORIENTATION,
    heatmap_secondary_capture,
    write_secondary_capture,
)

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")


def source_dicom(path, **extra):
    uids = {"StudyInstanceUID": pydicom.uid.generate_uid(), "SeriesInstanceUID": pydicom.uid.generate_uid()}
    attrs = {"PatientName": "Test^Patient", "PatientID": "P-1", "StudyDate": "20261203", "StudyTime": "083000",
             "AccessionNumber": "A-1", "StudyID": "1", "ReferringPhysicianName": "", "PatientBirthDate": "",
             "PatientSex": "O", "ViewPosition": "PA", **uids, **extra}
    path.write_bytes(hostile.dicom_bytes(hostile.example(0, 512), **attrs))
    return path


@pytest.fixture(scope="module")
def clf(tiny_onnx):
    with Classifier.load(tiny_onnx) as c:
        yield c


def test_secondary_capture_is_in_the_source_study_in_a_new_series(clf, tmp_path):
    src = source_dicom(tmp_path / "src.dcm")
    ref = pydicom.dcmread(src)
    pred, heat = explain(clf, src)
    assert heat is not None, pred
    out = write_secondary_capture(tmp_path / "out" / "sc.dcm", heatmap_secondary_capture(src, heat, model="tiny 1.0"))
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
    # one series per run: a second map goes into the series given
    again = heatmap_secondary_capture(src, heat, series_uid=back.SeriesInstanceUID)
    assert again.SeriesInstanceUID == back.SeriesInstanceUID and again.SOPInstanceUID != back.SOPInstanceUID


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
