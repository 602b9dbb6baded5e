"""What edgecxr writes as DICOM is valid for dicom3tools' `dciodvfy` (issue 22): SRs, heat map captures and
scripts/png_to_dicom.py's DX images, also for an anonymised source. Skipped where dicom3tools is missing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pydicom
import pytest

from dicom.conformance import dciodvfy_errors
from dicom.dicomfiles import source_pngs
from edgecxr import Classifier
from edgecxr.runtime.prediction import Prediction

pytest.importorskip("highdicom")

from edgecxr.dicom.attributes import TYPE2  # noqa: E402
from edgecxr.dicom.outputs import write_results  # noqa: E402
from edgecxr.dicom.sc import heatmap_secondary_capture, sc_path, write_secondary_capture  # noqa: E402
from edgecxr.runtime.heatmap import Occlusion, explain  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def png_to_dicom():
    spec = importlib.util.spec_from_file_location("png_to_dicom", REPO / "scripts" / "png_to_dicom.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A DX from scripts/png_to_dicom.py, and the same anonymised: Type 2 attributes and Body Part Examined gone."""
    folder = tmp_path_factory.mktemp("sources")
    assert png_to_dicom().main([str(source_pngs(1)[0]), "--out", str(folder)]) == 0
    [dx] = list(folder.glob("*.dcm"))
    ds = pydicom.dcmread(dx)
    for keyword in (*TYPE2, "BodyPartExamined"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    anonymised = folder / "anonymised.dcm"
    ds.save_as(anonymised, enforce_file_format=True)
    return {"dx": dx, "anonymised": anonymised}


def test_png_to_dicom_writes_valid_dx(sources):
    assert dciodvfy_errors(sources["dx"]) == []


@pytest.mark.parametrize("which", ["dx", "anonymised"])
def test_reports_and_captures_are_valid(sources, tiny_model, tmp_path, which):
    src = sources[which]
    header = pydicom.dcmread(src, stop_before_pixels=True)
    with Classifier.load(tiny_model) as clf:
        [pred] = clf.predict([src], workers=0)
        assert pred.status == "ok", pred.reason
        failed = Prediction(str(src), error="truncated DICOM pixel data")
        abstained = Prediction(str(src), label=pred.label, top1=pred.top1, probabilities=pred.probabilities,
                               status="abstained", reason="unlike the training X-rays", ood_score=9.5)
        for i, p in enumerate((pred, failed, abstained)):
            [(path, _)] = write_results(p, clf.audit, header, clf.classes, tmp_path / str(i))
            assert dciodvfy_errors(path) == [], (p.status, path)
        _, heat = explain(clf, src, config=Occlusion(patch=0.5, stride=0.5))
        sc = write_secondary_capture(sc_path(tmp_path, header.SOPInstanceUID),
                                     heatmap_secondary_capture(src, heat, audit=clf.audit))
    assert dciodvfy_errors(sc) == []
    back = pydicom.dcmread(sc)
    if which == "dx":
        assert back.BodyPartExamined == "CHEST" and "Laterality" not in back  # a chest: no laterality
    else:
        assert "BodyPartExamined" not in back and back.Laterality == ""  # unknown body part: Type 2C empty
        assert all(back[k].value in ("", None) for k in TYPE2 if k != "ReferringPhysicianName")
