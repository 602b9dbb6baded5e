"""core.lock: two commands on one bundle serialize their read-modify-write; neither record is lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from runtime import tinymodels

from edgecxr.cli import main
from edgecxr.core.bundle import Bundle
from edgecxr.core.lock import LOCK_NAME, BundleLockedError, bundle_lock, held_since, lock_timeout

REPO = Path(__file__).resolve().parents[2]

#: load the bundle, work for a while, add one section: the read-modify-write every stage does
_UPDATER = textwrap.dedent(
    """
    import sys, time
    from edgecxr.core.bundle import Bundle
    from edgecxr.core.lock import bundle_lock

    directory, name, lock, pause = sys.argv[1], sys.argv[2], sys.argv[3] == "lock", float(sys.argv[4])
    def update():
        b = Bundle.load(directory)
        print("loaded", flush=True)
        time.sleep(pause)
        b.update(**{name: {"by": name}})
    if lock:
        with bundle_lock(directory):
            update()
    else:
        update()
    """
)


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", _UPDATER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            raise AssertionError(f"helper exited {proc.returncode}: {proc.stderr.read()}")
    raise AssertionError(f"helper did not say {text!r}")


@pytest.fixture
def bundle(tmp_path):
    return tinymodels.make_bundle(tmp_path / "bundle", int8=False, fp16=False)


def test_two_processes_updating_one_bundle_keep_both_records(bundle):
    first = _start(str(bundle.dir), "export", "lock", "1.5")
    _wait_for_line(first, "loaded")  # the first holds the lock and has read bundle.json
    second = _start(str(bundle.dir), "calibration", "lock", "0")
    out2, err2 = second.communicate(timeout=120)
    first.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err2
    meta = json.loads((bundle.dir / "bundle.json").read_text())
    assert meta["export"] == {"by": "export"} and meta["calibration"] == {"by": "calibration"}
    assert "waiting for the lock on" in err2 and f"held by pid {first.pid}" in err2


def test_without_the_lock_the_same_updates_lose_one(bundle):
    """The helper really races: without the lock the first writer's record is gone (the bug the lock fixes)."""
    first = _start(str(bundle.dir), "export", "nolock", "1.5")
    _wait_for_line(first, "loaded")
    second = _start(str(bundle.dir), "calibration", "nolock", "0")
    second.communicate(timeout=120)
    first.communicate(timeout=120)
    meta = json.loads((bundle.dir / "bundle.json").read_text())
    assert "export" in meta and "calibration" not in meta


def test_a_held_lock_times_out_with_the_holders_pid(bundle):
    holder = _start(str(bundle.dir), "export", "lock", "5")
    _wait_for_line(holder, "loaded")
    said: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(BundleLockedError, match=f"being changed by pid {holder.pid}"), bundle_lock(
        bundle.dir, timeout=0.5, log=said.append
    ):
        pass
    assert 0.4 < time.monotonic() - t0 < 4
    assert len(said) == 1 and said[0].startswith(f"waiting for the lock on {bundle.dir} held by pid {holder.pid}")
    holder.kill()  # kill -9: the kernel releases the lock with the process
    holder.communicate(timeout=30)
    with bundle_lock(bundle.dir, timeout=5):
        assert held_since(bundle.dir) is not None


def test_the_lock_is_reentrant_and_released(bundle):
    assert held_since(bundle.dir) is None
    with bundle_lock(bundle.dir, timeout=0) as key:
        since = held_since(bundle.dir)
        assert since is not None and key == bundle.dir.resolve()
        with bundle_lock(bundle.dir, timeout=0):  # a stage that locks again inside a command
            assert held_since(bundle.dir) == since
        assert held_since(bundle.dir) == since
    assert held_since(bundle.dir) is None
    assert (bundle.dir / LOCK_NAME).is_file()  # left in place: removing it would let two holders in


def test_a_read_only_bundle_needs_no_lock(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with bundle_lock(folder, timeout=0):
            pass
        assert not (folder / LOCK_NAME).exists()
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize(("value", "expected"), [("", 600.0), ("0", 0.0), ("2.5", 2.5)])
def test_lock_timeout_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("EDGECXR_LOCK_TIMEOUT", value)
    assert lock_timeout() == expected


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_lock_timeout_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("EDGECXR_LOCK_TIMEOUT", value)
    with pytest.raises(Exception, match="EDGECXR_LOCK_TIMEOUT"):
        lock_timeout()


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--no-fp16"],
        ["calibrate", "--data", "{manifest}", "--no-verify"],
        ["evaluate", "--data", "{manifest}", "--artifact", "onnx_fp32"],
        ["verify", "--data", "{manifest}"],
        ["build", "--precision", "fp16", "--no-verify"],
    ],
    ids=lambda c: c[0],
)
def test_every_command_that_writes_a_bundle_takes_its_lock(bundle, tmp_path, command):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("relative_path,label,split,patient_id\n")
    holder = _start(str(bundle.dir), "holder", "lock", "30")
    try:
        _wait_for_line(holder, "loaded")
        args = [a.replace("{manifest}", str(manifest)) for a in command]
        result = CliRunner().invoke(main, [args[0], "-m", str(bundle.dir), *args[1:]], env={"EDGECXR_LOCK_TIMEOUT": "0.3"})
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    if command[0] == "build" and result.exit_code == 2 and "tensorrt" in result.output.lower():
        pytest.skip("build stops earlier without TensorRT")  # pragma: no cover - the lock comes first today
    assert result.exit_code == 1, result.output
    assert f"being changed by pid {holder.pid}" in result.stderr
    assert f"waiting for the lock on {bundle.dir} held by pid {holder.pid}" in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        line for line in result.stderr.splitlines() if "being changed" in line
    ]


def test_evaluate_waits_then_reads_the_bundle_the_holder_wrote(bundle, tmp_path):
    """The command loads bundle.json only once it holds the lock, so the holder's record survives its write."""
    import cv2
    import numpy as np

    rows = ["relative_path,label,split,patient_id"]
    for i, label in enumerate(tinymodels.CLASSES * 2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((40, 40), 30 * i, np.uint8))
        rows.append(f"{i}.png,{label},test,p{i}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    holder = _start(str(bundle.dir), "holder", "lock", "2")
    _wait_for_line(holder, "loaded")
    result = CliRunner().invoke(main, ["evaluate", "-m", str(bundle.dir), "--data", str(manifest), "--artifact",
                                       "onnx_fp32", "--bootstrap", "0", "-q"])
    holder.communicate(timeout=60)
    assert result.exit_code == 0, result.output
    assert "waiting for the lock on" in result.stderr
    meta = Bundle.load(bundle.dir).meta
    assert meta["holder"] == {"by": "holder"} and "test-onnx_fp32" in meta["evaluations"]
