"""`edgecxr data check|prepare` through Click's CliRunner: output, exit codes, no tracebacks."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from click.testing import CliRunner
from manifest_files import write_manifest

from edgecxr.cli import main


def _run(*args: str):
    return CliRunner().invoke(main, ["data", *args])


def test_check_examples_ok(examples: Path) -> None:
    result = _run("check", str(examples / "manifest.csv"), "--decode")
    assert result.exit_code == 0, result.output
    assert "OK: no problems found" in result.stdout
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("images "))
    assert header.split() == ["images", "train", "val", "calib", "test", "total"]
    total = next(line for line in lines if line.startswith("total "))
    assert total.split() == ["total", "3", "3", "3", "3", "12"]
    assert any(line.startswith("patients ") for line in lines)
    assert "decoded 12 images" in result.stdout


def test_check_curated_set_json(shared_cxr: Path) -> None:
    result = _run("check", str(shared_cxr / "manifest.csv"), "--json", "--no-hash")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["problems"] == [] and report["hashed"] == 0
    assert report["images"]["total"]["total"] == 1274


def test_check_broken_manifest_exits_1_and_lists_problems(examples: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    shutil.copytree(examples, root, ignore=shutil.ignore_patterns("*.py", "*.md"))
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["label"] = "covid19"
    rows[1]["patient_id"] = rows[0]["patient_id"]
    rows[1]["patient_group"] = rows[0]["patient_group"]
    (root / rows[2]["relative_path"]).unlink()
    write_manifest(root / "manifest.csv", rows)
    result = _run("check", str(root / "manifest.csv"))
    assert result.exit_code == 1
    out = result.stdout
    assert "FAILED: 3 problem(s)" in out
    assert "[label] line 2:" in out and "'covid19'" in out
    assert "[missing] line 4:" in out
    assert "[leak]" in out and rows[0]["patient_id"] in out
    assert "Traceback" not in result.output
    as_json = _run("check", str(root / "manifest.csv"), "--json")
    assert as_json.exit_code == 1
    assert {p["kind"] for p in json.loads(as_json.stdout)["problems"]} == {"label", "missing", "leak"}


def test_check_unreadable_manifest_is_an_error_line(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("a,b\n1,2\n")
    result = _run("check", str(tmp_path / "m.csv"))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "missing required column" in result.stderr
    assert "Traceback" not in result.output


def test_prepare_then_check(covid_layout: Path, kermany_layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    result = _run("prepare", "--covid", str(covid_layout), "--kermany", str(kermany_layout), "--out", str(out),
                  "--seed", "3", "--copy")
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'manifest.csv'}" in result.stdout
    assert "skipped 1: covid: file listed in metadata.csv not found" in result.stdout
    assert (out / "images" / "normal").is_dir()
    check = _run("check", str(out / "manifest.csv"))
    assert check.exit_code == 0, check.output
    again = _run("prepare", "--kermany", str(kermany_layout), "--out", str(out))
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_prepare_usage_errors(tmp_path: Path) -> None:
    result = _run("prepare", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and "at least one of" in result.stderr
    assert result.stderr.rstrip().endswith("(options: --covid, --kermany)")  # the library names the thing, the CLI the flags
    (tmp_path / "k").mkdir()
    result = _run("prepare", "--kermany", str(tmp_path / "k"), "--out", str(tmp_path / "o"), "--fractions", "0.5,0.5")
    assert result.exit_code == 2 and "--fractions" in result.output
    result = _run("prepare", "--kermany", str(tmp_path / "k"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "error: " in result.stderr and "not a Kaggle chest_xray" in result.stderr
    assert "Traceback" not in result.output


def test_check_refuses_rows_outside_unless_allowed(examples: Path, tmp_path: Path) -> None:
    root = tmp_path / "set"
    shutil.copytree(examples, root, ignore=shutil.ignore_patterns("*.py", "*.md"))
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["relative_path"] = "../../../../etc/passwd"
    rows[0]["sha256"] = ""
    write_manifest(root / "manifest.csv", rows)
    result = _run("check", str(root / "manifest.csv"))
    assert result.exit_code == 1
    assert "[outside] line 2: ../../../../etc/passwd: climbs out of the manifest's folder" in result.stdout
    allowed = _run("check", str(root / "manifest.csv"), "--allow-outside", "--json")
    assert "outside" not in json.loads(allowed.stdout)["problem_counts"]


def test_prepare_link_says_the_manifest_needs_allow_outside(covid_layout: Path, tmp_path: Path) -> None:
    out = tmp_path / "linked"
    result = _run("prepare", "--covid", str(covid_layout), "--out", str(out), "--fractions", "0.5,0.2,0.2,0.1")
    assert result.exit_code == 0, result.output
    assert "--allow-outside" in result.stderr
    assert _run("check", str(out / "manifest.csv")).exit_code == 1
    assert _run("check", str(out / "manifest.csv"), "--allow-outside").exit_code == 0
