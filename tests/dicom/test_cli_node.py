"""The listen and watch commands' option handling (Click's CliRunner): refusals before any work, one line each."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from dicom.dicomfiles import cxr_files, source_pngs
from edgecxr.cli import main
from edgecxr.core.errors import MissingDependencyError
from edgecxr.dicom import require


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_lists_the_node_commands():
    result = run("--help")
    assert "listen" in result.output and "watch" in result.output
    for command in ("listen", "watch"):
        r = run(command, "--help")
        assert r.exit_code == 0 and "docs/DICOM.md" in r.output


def test_listen_refusals(tmp_path):
    r = run("listen", "--spool", str(tmp_path / "s"), "--out", str(tmp_path / "s" / "reports"))
    assert r.exit_code == 2 and "inside --spool" in r.stderr
    r = run("listen", "--spool", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--forward", "PACS:104")
    assert r.exit_code == 2 and "AE@host:port" in r.stderr
    assert not (tmp_path / "s").exists()


def test_watch_refusals(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    r = run("watch", str(tmp_path / "f.txt"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "is a file" in r.stderr
    r = run("watch", str(tmp_path), "--out", str(tmp_path))
    assert r.exit_code == 2 and "watched folder itself" in r.stderr


def test_watch_once_json(tmp_path, tiny_model):
    pytest.importorskip("highdicom")
    drop = tmp_path / "drop"
    cxr_files(drop, 2)
    shutil.copyfile(source_pngs(1)[0], drop / "x.png")
    r = run("watch", str(drop), "--out", str(tmp_path / "out"), "-m", str(tiny_model), "--once", "--settle", "0",
            "--interval", "0.05", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout) == {"processed": 3, "failed": 0, "duplicates": 0, "quarantined": 0}
    assert len(list((tmp_path / "out").glob("*.sr.dcm"))) == 2


def test_missing_package_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"edgecxr\[dicom-node\]"):
        require("edgecxr_no_such_module", "edgecxr listen")


def test_watch_refuses_a_missing_folder_and_does_not_create_it(tmp_path, tiny_model):
    """Issue 22: `watch nope --once` created nope/ and exited 0."""
    r = run("watch", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "-m", str(tiny_model), "--once")
    assert r.exit_code == 2 and "does not exist" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nope").exists() and not (tmp_path / "o").exists()
