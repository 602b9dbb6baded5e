"""Classifier.predict on inputs held in memory: pydicom Datasets, bytes and arrays (issue 14, item 1).

Each kind must give the answer its file gives (same decoding rules, same preprocessing), carry an
audit sha256 and the DICOM UIDs, and be refused for the same reasons a file is.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pydicom
import pytest

from dicom.dicomfiles import cxr_dataset, source_pngs, write
from edgecxr import Classifier
from edgecxr.data.dicom import encode_dataset


@pytest.fixture(scope="module")
def clf(tiny_model):
    with Classifier.load(tiny_model) as c:
        yield c


def one(clf, item):
    [pred] = clf.predict(item, workers=0)
    return pred


def test_dataset_and_bytes_match_the_file(clf, tmp_path):
    path = write(cxr_dataset(source_pngs(1)[0]), tmp_path / "a.dcm")
    by_path = one(clf, path)
    ds = pydicom.dcmread(path)
    by_ds, by_bytes = one(clf, ds), one(clf, path.read_bytes())
    assert by_path.ok and by_path.label is not None
    for pred in (by_ds, by_bytes):
        assert pred.ok, pred.error
        assert pred.probabilities == pytest.approx(by_path.probabilities, abs=1e-7)
        assert pred.dicom == by_path.dicom
        assert pred.dicom["SOPInstanceUID"] == ds.SOPInstanceUID
    assert by_bytes.input_sha256 == by_path.input_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert by_ds.input_sha256 == hashlib.sha256(encode_dataset(ds)).hexdigest()
    assert by_bytes.source == 0 and by_path.source == str(path)


def test_dataset_without_file_meta_is_not_changed(clf):
    """A Dataset as a network receiver may hand it over (no file meta): classified, and left as it was."""
    ds = cxr_dataset(source_pngs(1)[0])
    del ds.file_meta
    before = ds.to_json_dict()
    pred = one(clf, ds)
    assert pred.ok, pred.error
    assert ds.to_json_dict() == before and not hasattr(ds, "file_meta")


def test_png_bytes_and_arrays_match_the_file(clf):
    png = source_pngs(1)[0]
    by_path = one(clf, png)
    gray = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    for item in (png.read_bytes(), gray, np.dstack([gray] * 3), gray[:, :, None]):
        pred = one(clf, item)
        assert pred.ok, pred.error
        assert pred.probabilities == pytest.approx(by_path.probabilities, abs=1e-5)
        assert pred.input_sha256 and pred.dicom is None
    assert one(clf, png.read_bytes()).input_sha256 == by_path.input_sha256
    for item in (gray.astype(np.float32) / 255, gray.astype(np.uint16) * 257):  # resized in another dtype
        assert one(clf, item).probabilities == pytest.approx(by_path.probabilities, abs=2e-3)


def test_header_rules_apply_to_datasets_and_bytes(clf):
    png = source_pngs(1)[0]
    ct = cxr_dataset(png, Modality="CT")
    lateral = cxr_dataset(png, ViewPosition="LL")
    pred = one(clf, ct)
    assert pred.status == "rejected" and "Modality CT" in pred.reason
    buf = encode_dataset(lateral)
    pred = one(clf, buf)
    assert pred.status == "rejected" and "lateral" in pred.reason
    assert pred.dicom["SOPInstanceUID"] == lateral.SOPInstanceUID


def test_bad_inputs_fail_one_by_one(clf):
    """Truncated pixel data, garbage bytes, an object and a tiny array: one error each, the batch goes on."""
    png = source_pngs(1)[0]
    truncated = cxr_dataset(png)
    truncated.PixelData = truncated.PixelData[: len(truncated.PixelData) // 2]
    preds = clf.predict([truncated, b"GIF89a not really", object(), np.zeros((4, 4), np.uint8),
                         np.zeros((64, 64), object), png], workers=0)
    assert [p.source for p in preds] == [0, 1, 2, 3, 4, str(png)]
    assert "truncated DICOM pixel data" in preds[0].error
    assert "GIF" in preds[1].error
    assert "not an image" in preds[2].error
    assert "outside the decode limits" in preds[3].error
    assert "not an image" in preds[4].error
    assert preds[5].ok


def test_decoded_pixels_identical_for_file_bytes_and_dataset(tmp_path):
    """The data layer itself: load_image, load_image_bytes and a Dataset's bytes decode to the same array."""
    from edgecxr.data.io import load_image, load_image_bytes

    path = write(cxr_dataset(source_pngs(1)[0], WindowCenter=100, WindowWidth=120), tmp_path / "w.dcm")
    a = load_image(path)
    b = load_image_bytes(path.read_bytes())
    c = load_image_bytes(encode_dataset(pydicom.dcmread(path)))
    assert a.dtype == np.float32 and np.array_equal(a, b) and np.array_equal(a, c)


def test_bytes_meet_the_same_rules_as_files(tmp_path):
    """Every file of the hostile-input corpus: refused as bytes exactly when refused as a file, same pixels otherwise."""
    from integrity import hostile

    from edgecxr.core.errors import ImageLoadError
    from edgecxr.data.io import load_image, load_image_bytes

    def outcome(call, arg):
        try:
            return call(arg)
        except ImageLoadError as exc:
            return exc.reason

    checked = 0
    for name, (maker, suffix, accepted) in hostile.IMAGES.items():
        data = maker()
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(data)
        as_file, as_bytes = outcome(load_image, path), outcome(load_image_bytes, data)
        assert isinstance(as_file, np.ndarray) == isinstance(as_bytes, np.ndarray) == accepted, (name, as_file, as_bytes)
        if accepted:
            assert np.array_equal(as_file, as_bytes), name
        checked += 1
    assert checked > 50
