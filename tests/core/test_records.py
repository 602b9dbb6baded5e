"""Committed records (results JSON, calibration sidecars, bundle.json) name files portably: a path
recorded on one machine must not be this machine's absolute path, or every clone carries a path that
exists nowhere else (and a diff each time someone else regenerates it)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgecxr.core.fileutil import recorded_path

REPO = Path(__file__).resolve().parents[2]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _absolute(s: str) -> bool:
    roots = {str(REPO), str(REPO.parent), str(Path.home()), "/tmp/", "/work/", "/root/", "/home/"}
    return s.startswith("/") and any(s.startswith(r) for r in roots)


def test_recorded_paths_are_relative_home_relative_or_bare_names(tmp_path, monkeypatch):
    work = tmp_path / "work" / "main"
    (work / "sub").mkdir(parents=True)
    monkeypatch.chdir(work)
    assert recorded_path(work / "sub" / "a.json") == "sub/a.json"
    assert recorded_path(tmp_path / "work" / "shared" / "m.csv") == "../shared/m.csv"  # the ../shared beside a clone
    assert recorded_path(tmp_path / "elsewhere" / "deep" / "m.csv") == "m.csv"
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    assert recorded_path(tmp_path / "elsewhere" / "deep" / "m.csv") == "~/deep/m.csv"


def test_no_committed_record_holds_an_absolute_path_of_this_machine():
    files = subprocess.run(["git", "ls-files", "*.json", "*.csv"], cwd=REPO, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    bad = []
    for name in files.stdout.splitlines():
        path = REPO / name
        if not path.is_file() or path.stat().st_size > 20 << 20:
            continue
        text = path.read_text(errors="replace")
        values = _strings(json.loads(text)) if name.endswith(".json") else text.replace(",", "\n").splitlines()
        bad += [f"{name}: {s}" for s in values if _absolute(s.strip())]
    assert not bad, "absolute paths in committed records:\n" + "\n".join(bad[:20])


def test_the_calibration_sidecar_records_its_manifest_portably(tmp_path, monkeypatch):
    from edgecxr.stages.export import calib_set

    manifest = tmp_path / "data" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("relative_path,label,split,patient_id\n")
    monkeypatch.chdir(tmp_path)
    _, sidecar, _ = calib_set.write_calibration_manifest(
        [], ["a", "b"], source_manifest=manifest.resolve(), split="calib", header={}, out=tmp_path / "out", stem="m")
    meta = json.loads(sidecar.read_text())
    assert meta["source_manifest"] == "data/manifest.csv"
    assert not any(_absolute(s) for s in _strings(meta)), meta
    assert os.sep not in meta["data_root"] or not meta["data_root"].startswith("/")
