"""prepare_dataset / assign_splits on small fixtures in the two public layouts (see conftest.py)."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import pytest
from cxr_fixtures import COVID_ROWS, KERMANY_FILES

from edgecxr.core.errors import ArgumentError, DataError
from edgecxr.data.check import check_manifest
from edgecxr.data.manifest import read_manifest
from edgecxr.data.prepare import assign_splits, parse_fractions, prepare_dataset


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def test_split_reproduces_the_curated_set(shared_cxr: Path) -> None:
    """The pandas-free reimplementation gives make_splits.py's split column exactly."""
    records = read_manifest(shared_cxr / "manifest.csv")
    splits = assign_splits([r.label for r in records], [r.patient_group for r in records], seed=1729)
    assert splits == [r.split for r in records]


def test_split_keeps_groups_together_and_follows_fractions() -> None:
    labels, groups = [], []
    for g in range(60):
        for _ in range(1 + g % 3):
            labels.append("normal" if g % 2 else "covid")
            groups.append(f"p{g}")
    splits = assign_splits(labels, groups, seed=7)
    split_of = defaultdict(set)
    for g, s in zip(groups, splits, strict=True):
        split_of[g].add(s)
    assert all(len(s) == 1 for s in split_of.values())
    n_train = splits.count("train")
    assert 0.6 * len(splits) < n_train < 0.8 * len(splits)
    assert assign_splits(labels, groups, seed=7) == splits
    assert assign_splits(labels, groups, seed=8) != splits


def test_prepare_both_layouts(covid_layout: Path, kermany_layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = prepare_dataset(out, covid_dir=covid_layout, kermany_dir=kermany_layout, progress=False)
    rows = _rows(result.manifest)
    assert list(rows[0])[:7] == ["relative_path", "label", "split", "patient_id", "patient_group", "source", "sha256"]
    by_name = {Path(r["relative_path"]).name: r for r in rows}

    # COVID: only selected rows; c1a_copy.jpg (patient 7) is the same bytes as c1a.jpg (patient 1):
    # listed once, the first in metadata order, and patients 1 and 7 merge into one group.
    covid = {Path(r["relative_path"]).name for r in rows if r["label"] == "covid"}
    selected = {name for *_, name, keep in COVID_ROWS if keep}
    assert covid == selected - {"c1a_copy.jpg"}
    assert by_name["c1a.jpg"]["patient_id"] == "ieee:1"
    assert by_name["c1a.jpg"]["patient_group"] == by_name["c1b.png"]["patient_group"] == "ieee:1"
    assert by_name["c2a.jpg"]["view"] == "AP Supine" and by_name["c3a.jpg"]["finding"] == "COVID-19, ARDS"
    assert result.skipped["covid: file listed in metadata.csv not found"] == 1

    # Kermany: labels and patient ids from the file names.
    assert by_name["IM-0100-0001.jpeg"]["label"] == "normal"
    assert by_name["IM-0100-0001.jpeg"]["patient_id"] == "kermany:IM-0100"
    assert by_name["IM-0100-0002.jpeg"]["patient_id"] == "kermany:IM-0100"
    assert by_name["NORMAL2-IM-0201-0001.jpeg"]["patient_id"] == "kermany:NORMAL2-IM-0201"
    assert by_name["person3_bacteria_13.jpeg"]["label"] == "pneumonia_bacterial"
    assert by_name["person7_virus_57.jpeg"]["label"] == "pneumonia_viral"
    assert by_name["person7_virus_57.jpeg"]["patient_id"] == by_name["person7_bacteria_17.jpeg"]["patient_id"] == "kermany:person7"
    kermany_names = {name for *_, name in KERMANY_FILES}
    assert {n for n in by_name if not n.startswith("c")} == kermany_names  # nested copies listed once, junk skipped
    assert result.skipped["duplicate file (same sha256, listed once)"] == 4  # 3 nested + c1a_copy
    assert by_name["IM-0100-0001.jpeg"]["source_path"] == "train/NORMAL/IM-0100-0001.jpeg"  # not the nested copy
    assert result.skipped["kermany: PNEUMONIA file name not person<N>_bacteria/virus_<M>"] == 1
    assert result.skipped["kermany: not a PNG/JPEG"] == 1
    assert result.n_images == len(rows) == len(kermany_names) + len(selected) - 1

    # Referenced in place: relative paths from out/, every split used, and no leak.
    assert all(r["relative_path"].startswith("../") for r in rows)
    report = check_manifest(result.manifest, progress=False)
    assert report.ok, report.problems
    assert {r["split"] for r in rows} == {"train", "val", "calib", "test"}
    splits_of = defaultdict(set)
    for r in rows:
        splits_of[r["patient_group"]].add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())


def test_prepare_is_deterministic(kermany_layout: Path, tmp_path: Path) -> None:
    a = prepare_dataset(tmp_path / "a", kermany_dir=kermany_layout, seed=11, progress=False).manifest
    b = prepare_dataset(tmp_path / "b", kermany_dir=kermany_layout, seed=11, progress=False).manifest
    c = prepare_dataset(tmp_path / "c", kermany_dir=kermany_layout, seed=12, progress=False).manifest
    assert a.read_bytes() == b.read_bytes()
    assert [r["split"] for r in _rows(a)] != [r["split"] for r in _rows(c)]


def test_prepare_copy_mode(covid_layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "copied"
    result = prepare_dataset(out, covid_dir=covid_layout, copy=True, fractions="0.5,0.2,0.2,0.1", progress=False)
    rows = _rows(result.manifest)
    assert all(r["relative_path"].startswith("images/covid/ieee_") for r in rows)
    assert all((out / r["relative_path"]).is_file() for r in rows)
    assert check_manifest(result.manifest, progress=False).ok


def test_prepare_refuses_other_layouts(covid_layout: Path, kermany_layout: Path, tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="not a covid-chestxray-dataset folder"):
        prepare_dataset(tmp_path / "o1", covid_dir=tmp_path / "random", progress=False)
    with pytest.raises(DataError, match="not a Kaggle chest_xray"):
        prepare_dataset(tmp_path / "o2", kermany_dir=tmp_path / "random", progress=False)
    with pytest.raises(DataError, match="not a covid-chestxray-dataset folder"):
        prepare_dataset(tmp_path / "o3", covid_dir=kermany_layout, progress=False)
    with pytest.raises(DataError, match="not a Kaggle chest_xray"):
        prepare_dataset(tmp_path / "o4", kermany_dir=covid_layout, progress=False)
    with pytest.raises(DataError, match="not a folder"):
        prepare_dataset(tmp_path / "o5", covid_dir=tmp_path / "missing", progress=False)
    bad = tmp_path / "badmeta"
    bad.mkdir()
    (bad / "metadata.csv").write_text("id,label\n1,covid\n")
    with pytest.raises(DataError, match=r"missing column\(s\)"):
        prepare_dataset(tmp_path / "o6", covid_dir=bad, progress=False)
    with pytest.raises(ArgumentError, match="at least one") as info:
        prepare_dataset(tmp_path / "o7", progress=False)
    assert info.value.params == ("covid_dir", "kermany_dir")


def test_prepare_finds_layout_one_level_down_and_keeps_existing_manifest(covid_layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    prepare_dataset(out, covid_dir=covid_layout.parent, progress=False)  # the folder holding the download
    with pytest.raises(DataError, match="already exists"):
        prepare_dataset(out, covid_dir=covid_layout, progress=False)
    prepare_dataset(out, covid_dir=covid_layout, overwrite=True, progress=False)


@pytest.mark.parametrize("text", ["0.7,0.1,0.1", "0.7,0.1,0.1,0.2", "a,b,c,d", "0,0.5,0.25,0.25", "0.8,-0.1,0.2,0.1"])
def test_bad_fractions(text: str) -> None:
    with pytest.raises(DataError):
        parse_fractions(text)


def test_good_fractions() -> None:
    assert parse_fractions("0.8,0.1,0.1,0") == (0.8, 0.1, 0.1, 0.0)
