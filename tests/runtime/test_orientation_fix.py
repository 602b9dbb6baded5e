"""--fix-orientation on every command that classifies: infer (tests/runtime/test_orientation.py), serve, watch, listen.

A committed CC BY film turned 180 degrees is refused by default and, with the option, turned upright,
classified, and said so in its result; the option without the input checks is a usage error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.data.io import load_image
from edgecxr.runtime.orientation import BY_NAME

REPO = Path(__file__).resolve().parents[2]
FILM = REPO / "examples/images/normal/kermany_IM-0122-0001.png"


@pytest.fixture()
def turned(tmp_path) -> Path:
    path = tmp_path / "turned.png"
    assert cv2.imwrite(str(path), BY_NAME["rot180"].apply(load_image(FILM)))
    return path


@pytest.mark.parametrize("command", ["serve", "watch", "listen"])
def test_fix_orientation_without_input_checks_is_a_usage_error(tmp_path, command):
    args = {"serve": ["serve", "--port", "0"], "watch": ["watch", str(tmp_path), "--out", str(tmp_path / "o"), "--once"],
            "listen": ["listen", "--spool", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--port", "0"]}[command]
    r = CliRunner().invoke(main, [*args, "--fix-orientation", "--no-input-checks"])
    assert r.exit_code == 2 and "--fix-orientation needs the input checks" in r.output


def test_watch_fix_orientation_classifies_a_turned_film(tmp_path, tiny_bundle, turned):
    pytest.importorskip("highdicom")
    drop = tmp_path / "drop"
    drop.mkdir()
    shutil.copyfile(turned, drop / "turned.png")
    results = {}
    for flag in ([], ["--fix-orientation"]):
        out = tmp_path / f"out{len(flag)}"
        if flag:  # the file was moved to processed/ by the first run
            shutil.copyfile(turned, drop / "turned-again.png")
            (drop / "turned-again.png").write_bytes((drop / "turned-again.png").read_bytes() + b"\0")  # another sha256
        r = CliRunner().invoke(main, ["watch", str(drop), "--out", str(out), "--once", "--settle", "0",
                                      "--interval", "0.05", "-m", str(tiny_bundle.dir), *flag])
        assert r.exit_code == 0, r.output
        (result,) = [json.loads(p.read_text())["predictions"][0] for p in out.glob("*.json")]
        results[bool(flag)] = result
    assert results[False]["status"] == "rejected" and "orientation gate" in results[False]["reason"]
    assert results[True]["status"] == "ok" and "turned upright before classification" in results[True]["orientation"]


def test_serve_fix_orientation_classifies_a_turned_film(tiny_bundle, turned):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from dataclasses import replace

    from edgecxr.runtime.input_checks import DEFAULT_RULES
    from edgecxr.serve import ModelSpec, ServeConfig
    from edgecxr.serve.server import start_in_thread

    config = ServeConfig((ModelSpec.parse(f"tiny={tiny_bundle.dir}"),), port=0,
                         input_rules=replace(DEFAULT_RULES, orientation="fix"))
    running = start_in_thread(config)
    try:
        r = httpx.post(f"{running.url}/v1/classify", content=turned.read_bytes(), params={"filename": "turned.png"})
    finally:
        running.stop()
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert pred["status"] == "ok" and "turned upright before classification" in pred["orientation"]
