"""check_manifest on the real curated set, the committed examples, and deliberately broken manifests."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from manifest_files import write_manifest

from edgecxr.core.errors import DataError
from edgecxr.data.check import TOTAL, check_manifest


def test_curated_set_has_no_problem_and_documented_counts(shared_cxr: Path) -> None:
    report = check_manifest(shared_cxr / "manifest.csv", progress=False)
    assert report.ok, report.problems[:5]
    assert report.hashed == report.n_images == 1274
    # The table of DATA_SOURCES.md.
    assert report.images[TOTAL] == {"train": 892, "val": 129, "calib": 127, "test": 126, TOTAL: 1274}
    assert report.images["covid"] == {"train": 212, "val": 31, "calib": 30, "test": 30, TOTAL: 303}
    assert report.patients["covid"] == {"train": 97, "val": 30, "calib": 29, "test": 30, TOTAL: 186}
    assert report.patients["pneumonia_bacterial"][TOTAL] == 215
    json.dumps(report.to_dict())  # JSON-ready


def test_examples_manifest_passes_with_decode(examples: Path) -> None:
    report = check_manifest(examples / "manifest.csv", decode=True, progress=False)
    assert report.ok, report.problems
    assert report.decoded == report.hashed == 12
    assert report.images["covid"][TOTAL] == 0
    for label in ("normal", "pneumonia_bacterial", "pneumonia_viral"):
        assert report.images[label] == {"train": 1, "val": 1, "calib": 1, "test": 1, TOTAL: 4}


def _copy_examples(examples: Path, dest: Path) -> list[dict[str, str]]:
    shutil.copytree(examples, dest, ignore=shutil.ignore_patterns("*.py", "*.md"))
    with open(dest / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    return write_manifest(path, rows)


def test_broken_manifest_lists_every_problem(examples: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    rows = _copy_examples(examples, root)
    # Lines are 2-based (line 1 is the header).
    rows[0]["relative_path"] = "normal/gone.png"  # line 2: missing file
    rows[1]["sha256"] = "0" * 64  # line 3: bad sha
    rows[2]["label"] = "tuberculosis"  # line 4: unknown label
    rows[3]["split"] = "holdout"  # line 5: unknown split
    rows[5]["patient_id"] = rows[4]["patient_id"]  # line 7 (val) joins line 6's patient (train): leak
    rows[5]["patient_group"] = rows[4]["patient_group"]
    rows[9]["patient_group"] = rows[8]["patient_group"]  # lines 10/11: group leak, ids distinct
    rows[10]["sha256"] = "XYZ"  # line 12: malformed sha
    (root / rows[11]["relative_path"]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # line 13: corrupt
    rows[11]["sha256"] = ""
    report = check_manifest(_write(root / "manifest.csv", rows), decode=True, progress=False)
    assert not report.ok
    found = {(p.kind, p.line) for p in report.problems}
    assert ("missing", 2) in found
    assert ("sha256", 3) in found
    assert ("label", 4) in found
    assert ("split", 5) in found
    assert ("sha256", 12) in found
    assert ("decode", 13) in found
    leaks = [p.message for p in report.problems if p.kind == "leak"]
    assert any(rows[4]["patient_id"] in m and "train" in m and "val" in m for m in leaks), leaks
    assert any("patient group" in m and rows[8]["patient_group"] in m for m in leaks), leaks
    # The patient-id leak is not reported a second time as a group leak.
    assert sum(rows[4]["patient_group"] in m for m in leaks) == 1
    assert report.without_sha256 == 1
    counts = report.problem_counts()
    assert counts["leak"] == 2 and counts["missing"] == 1 and counts["decode"] == 1
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and len(data["problems"]) == len(report.problems)


def test_duplicate_content_across_splits_is_a_leak(examples: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    rows = _copy_examples(examples, root)
    src = root / rows[0]["relative_path"]
    shutil.copyfile(src, root / "normal" / "copy.png")
    rows.append({**rows[0], "relative_path": "normal/copy.png", "split": "test", "patient_id": "kermany:other",
                 "patient_group": "kermany:other"})
    rows.append(dict(rows[1]))  # the same row twice
    report = check_manifest(_write(root / "manifest.csv", rows), progress=False)
    kinds = [(p.kind, p.message) for p in report.problems]
    assert any(k == "leak" and "identical image content in two splits" in m for k, m in kinds), kinds
    assert any(k == "duplicate" and "listed 2 times" in m for k, m in kinds), kinds
    # Without hashing, the declared sha256 still finds the copied content.
    report = check_manifest(root / "manifest.csv", verify_hash=False, progress=False)
    assert report.hashed == 0 and any(p.kind == "leak" for p in report.problems)


def test_patient_in_two_groups(examples: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    rows = _copy_examples(examples, root)
    rows[1]["patient_id"] = rows[0]["patient_id"]  # same patient, different group (and split)
    report = check_manifest(_write(root / "manifest.csv", rows), verify_hash=False, progress=False)
    messages = [p.message for p in report.problems if p.kind == "patient"]
    assert any("several patient groups" in m for m in messages), report.problems


def test_structurally_broken_manifest_raises(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("path,label\nx.png,normal\n")
    with pytest.raises(DataError, match="missing required column"):
        check_manifest(p, progress=False)
    with pytest.raises(DataError, match="not found"):
        check_manifest(tmp_path / "none.csv", progress=False)


def test_rows_outside_the_manifest_folder_are_problems_and_not_read(examples: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    rows = _copy_examples(examples, root)
    secret = tmp_path / "secret.png"
    shutil.copyfile(root / rows[0]["relative_path"], secret)
    rows[1]["relative_path"] = "../secret.png"  # line 3
    rows[2]["relative_path"] = str(secret)  # line 4: absolute
    rows[1]["sha256"] = rows[2]["sha256"] = "0" * 64  # would be a mismatch if the file were read
    manifest = _write(root / "manifest.csv", rows)
    report = check_manifest(manifest, decode=True, progress=False, allow_outside=False)  # as `edgecxr data check`
    found = {(p.kind, p.line) for p in report.problems}
    assert ("outside", 3) in found and ("outside", 4) in found
    assert not {("sha256", 3), ("sha256", 4), ("duplicate", 3), ("duplicate", 4)} & found  # not read
    assert report.hashed == report.n_images - 2
    allowed = check_manifest(manifest, progress=False, allow_outside=True)
    kinds = {(p.kind, p.line) for p in allowed.problems}
    assert ("sha256", 3) in kinds and ("sha256", 4) in kinds and not any(k == "outside" for k, _ in kinds)


def test_a_split_without_a_class_is_a_warning(examples: Path) -> None:
    """The committed examples have no COVID image: OK, but every split says so (no COVID gate there)."""
    from click.testing import CliRunner

    from edgecxr.cli import main

    report = check_manifest(examples / "manifest.csv", verify_hash=False, progress=False)
    assert report.ok
    assert sorted(report.warnings) == sorted(f"split {s!r} has no 'covid' images" for s in ("train", "val", "calib", "test"))
    res = CliRunner().invoke(main, ["data", "check", str(examples / "manifest.csv"), "--no-hash"])
    assert res.exit_code == 0 and "OK: no problems found, 4 warning(s)" in res.output
    assert "[warning] split 'test' has no 'covid' images" in res.output
