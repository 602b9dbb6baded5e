from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecxr.core.errors import DataError, EdgeCXRError
from edgecxr.core.fileutil import sha256_file
from edgecxr.data.manifest import (
    CLASSES_3,
    CLASSES_4,
    checked_sha256,
    label_indices,
    map_label,
    outside_allowed,
    outside_reason,
    read_manifest,
    select,
)
from edgecxr.models import get as get_model

HEADER = "relative_path,label,split,patient_id,patient_group,sha256,source\n"


def write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(header + body)
    return path


def test_read_and_select(tmp_path):
    path = write(
        tmp_path,
        "a.png,covid,train,p1,g1,,x\n"
        "b.png,pneumonia_viral,test,p2,,ABC,y\n",
    )
    recs = read_manifest(path)
    assert [r.label for r in recs] == ["covid", "pneumonia_viral"]
    assert recs[0].path == tmp_path.resolve() / "a.png"
    assert recs[1].patient_group == "p2"  # defaults to patient_id
    assert recs[1].sha256 == "abc"
    assert recs[0].sha256 is None
    assert recs[0].extra["source"] == "x"
    assert select(recs, "test") == [recs[1]]
    assert select(recs, None) == recs
    with pytest.raises(DataError, match="no images in split"):
        select(recs, "calib")


def test_missing_columns_and_empty(tmp_path):
    with pytest.raises(DataError, match="missing required column"):
        read_manifest(write(tmp_path, "a.png,covid\n", header="relative_path,label\n"))
    with pytest.raises(DataError, match="no rows"):
        read_manifest(write(tmp_path, ""))
    with pytest.raises(DataError, match="line|:2"):
        read_manifest(write(tmp_path, ",covid,train,p1,,,\n"))
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def test_spreadsheet_csv_with_byte_order_mark(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM and uses CRLF; the first column must still be found."""
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"\xef\xbb\xbfrelative_path,label,split,patient_id\r\na.png,covid,test,p1\r\n")
    (rec,) = read_manifest(path)
    assert (rec.relative_path, rec.label, rec.split) == ("a.png", "covid", "test")


def test_semicolon_separated_manifest_says_so(tmp_path):
    path = write(tmp_path, "a.png;covid;test;p1\n", header="relative_path;label;split;patient_id\n")
    with pytest.raises(DataError, match="must be comma-separated"):
        read_manifest(path)


def test_three_class_mapping():
    assert get_model("coronet").classes == CLASSES_4
    assert get_model("cnn-lstm").classes == CLASSES_3
    assert map_label("pneumonia_bacterial", CLASSES_3) == "pneumonia"
    assert map_label("pneumonia_viral", CLASSES_3) == "pneumonia"
    assert map_label("normal", CLASSES_3) == "normal"
    with pytest.raises(DataError):
        map_label("pneumonia", CLASSES_4)
    with pytest.raises(EdgeCXRError, match="unknown model 'vgg'"):
        get_model("vgg")


def test_label_indices(tmp_path):
    recs = read_manifest(
        write(tmp_path, "a,covid,train,1,,,\nb,pneumonia_bacterial,train,2,,,\nc,normal,train,3,,,\n")
    )
    np.testing.assert_array_equal(label_indices(recs, CLASSES_3), [0, 1, 2])
    np.testing.assert_array_equal(label_indices(recs, CLASSES_4), [0, 2, 1])


def test_real_manifest(shared_cxr):
    recs = read_manifest(shared_cxr / "manifest.csv")
    assert len(recs) == 1274
    assert {r.split for r in recs} == {"train", "val", "calib", "test"}
    assert {r.label for r in recs} == set(CLASSES_4)
    assert all(r.path.is_file() for r in recs[:20])


# -- rows outside the manifest's folder ---------------------------------------------------------------
@pytest.mark.parametrize("rel", ["../../../../etc/passwd", "/etc/passwd", "images/../../x.png", ".."])
def test_rows_outside_the_manifest_folder_are_refused_when_asked(tmp_path, rel):
    path = write(tmp_path, f"a.png,covid,train,p1,g1,,x\n{rel},normal,test,p2,,,y\n")
    with pytest.raises(DataError, match=r"manifest.csv:3: relative_path .* (absolute|climbs out)") as info:
        read_manifest(path, allow_outside=False)
    assert info.value.params == ("allow_outside",)  # the CLI adds "(options: --allow-outside)"
    with outside_allowed(False), pytest.raises(DataError):  # what every CLI command sets without --allow-outside
        read_manifest(path)
    assert [r.relative_path for r in read_manifest(path)][1] == rel  # the Python API's default
    with outside_allowed(False), outside_allowed(True):
        assert len(read_manifest(path)) == 2


def test_dotdot_that_stays_inside_is_fine(tmp_path):
    path = write(tmp_path, "images/../a.png,covid,train,p1,g1,,x\n")
    assert read_manifest(path)[0].path == tmp_path.resolve() / "images/../a.png"
    assert outside_reason("images/../a.png") is None and outside_reason("a/b.png") is None


# -- one sha256 check for every stage that reads the files ----------------------------------------------
def test_checked_sha256_refuses_a_changed_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"original")
    good = sha256_file(tmp_path / "a.png")
    path = write(tmp_path, f"a.png,covid,train,p1,g1,{good},x\nb.png,covid,train,p1,g1,,x\n")
    rec, unhashed = read_manifest(path)
    (tmp_path / "b.png").write_bytes(b"anything")
    assert checked_sha256(rec) == good and checked_sha256(unhashed) == sha256_file(tmp_path / "b.png")
    (tmp_path / "a.png").write_bytes(b"replaced")
    with pytest.raises(DataError, match=r"a.png: sha256 mismatch: manifest .* \(manifest line 2\)"):
        checked_sha256(rec)


def test_loading_a_split_refuses_a_changed_image_like_calibration_does(tmp_path):
    """evaluate, verify, train and calibrate all load through load_arrays / checked_sha256."""
    import cv2

    from edgecxr.data.dataset import load_arrays
    from edgecxr.stages.export import calib_set

    spec = get_model("coronet").spec.with_size(16)
    cv2.imwrite(str(tmp_path / "a.png"), np.full((20, 20), 128, np.uint8))
    path = write(tmp_path, f"a.png,covid,test,p1,g1,{'0' * 64},x\n")
    with pytest.raises(DataError, match="sha256 mismatch"):
        load_arrays(read_manifest(path), spec, CLASSES_4, progress=False)
    assert calib_set.checked_sha256 is checked_sha256  # the calibration manifest uses the same check
