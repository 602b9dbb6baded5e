"""Patient and study attributes in the results, by DICOM Type (issue 22): anonymised sources give valid reports.

Anonymisers drop or empty Type 2 attributes (Patient's Birth Date, Sex, Accession Number...); before
this, the SR writer raised AttributeError on such a source and the DICOM node's worker died on it.
"""

from __future__ import annotations

import copy

import pydicom
import pytest

from dicom.dicomfiles import cxr_dataset, source_pngs
from edgecxr.runtime.prediction import Prediction

hd = pytest.importorskip("highdicom")

from edgecxr.dicom.attributes import TYPE2, reference  # noqa: E402
from edgecxr.dicom.outputs import encode  # noqa: E402
from edgecxr.dicom.sr import build_sr, read_sr  # noqa: E402

CLASSES = ["covid", "normal", "pneumonia_bacterial", "pneumonia_viral"]
AUDIT = {"model": "tiny", "artifact_sha256": "a" * 64, "edgecxr_version": "0"}
PRED = Prediction(0, label="normal", top1=0.7, probabilities=dict(zip(CLASSES, [0.1, 0.7, 0.1, 0.1], strict=True)),
                  status="ok")


@pytest.fixture(scope="module")
def header():
    ds = cxr_dataset(source_pngs(1)[0], PatientBirthDate="19700101", AccessionNumber="A-1",
                     ReferringPhysicianName="Doe^John", StudyDescription="CHEST PA")
    del ds.PixelData
    return ds


def without(ds, *keywords):
    out = copy.deepcopy(ds)
    for k in keywords:
        delattr(out, k)
    return out


@pytest.mark.parametrize("missing", [(k,) for k in TYPE2] + [TYPE2], ids=[*TYPE2, "all"])
def test_a_source_without_type2_attributes_gets_a_report_with_them_empty(header, missing):
    sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encode(build_sr(PRED, AUDIT, without(header, *missing),
                                                                         CLASSES))))
    for keyword in TYPE2:
        assert keyword in sr, f"Type 2 {keyword} must be present"
        if keyword in missing:
            assert sr[keyword].value in ("", None), keyword
        else:
            assert str(sr[keyword].value) == str(header[keyword].value), keyword
    got = read_sr(sr)
    assert got.status == "ok" and got.label == "normal" and got.referenced["SOPInstanceUID"] == header.SOPInstanceUID


def test_invalid_values_are_unknown_not_a_crash(header):
    ds = without(header)
    ds.PatientBirthDate, ds.PatientSex, ds.StudyTime = "1970-01-01", "male", "25:61"
    ds.StudyDate = "20261399"  # the right form, no such month: highdicom's DA() raised on it
    ds.PatientAge = "45 years"  # Type 3, invalid (AS is 045Y): dropped
    sr = build_sr(PRED, AUDIT, ds, CLASSES)
    for keyword in ("PatientBirthDate", "PatientSex", "StudyTime", "StudyDate"):
        assert sr[keyword].value in ("", None), keyword
    assert "PatientAge" not in sr
    assert sr.StudyDescription == "CHEST PA"  # a valid Type 3 study attribute is copied
    assert sr.PatientID == header.PatientID and sr.StudyInstanceUID == header.StudyInstanceUID


@pytest.mark.parametrize("keyword,value,message", [
    ("StudyInstanceUID", None, "no StudyInstanceUID"),
    ("SOPClassUID", None, "no SOPClassUID"),
    ("SeriesInstanceUID", "1.2.3.abc", "an invalid SeriesInstanceUID"),
])
def test_a_source_without_a_type1_uid_fails_cleanly(header, keyword, value, message):
    ds = without(header, keyword) if value is None else without(header)
    if value is not None:
        setattr(ds, keyword, value)
    with pytest.raises(ValueError, match=message):
        build_sr(PRED, AUDIT, ds, CLASSES)


def test_an_unknown_sop_class_fails_cleanly(header):
    ds = without(header)
    ds.SOPClassUID = "1.2.3.4.5"
    with pytest.raises(ValueError, match="not a standard one"):
        build_sr(PRED, AUDIT, ds, CLASSES)


def test_reference_keeps_identification_not_pixels(header):
    ds = cxr_dataset(source_pngs(1)[0])
    ref = reference(ds)
    assert "PixelData" not in ref and "Rows" not in ref
    assert ref.BodyPartExamined == "CHEST" and ref.StudyInstanceUID == ds.StudyInstanceUID
