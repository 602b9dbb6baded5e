from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecxr.core.errors import DataError, EdgeCXRError
from edgecxr.data.manifest import CLASSES_3, CLASSES_4, label_indices, map_label, read_manifest, select
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
