"""Campaign family "special": what must never be read (FIFOs, devices, sockets, sparse giants), folders
that cannot be read, and inputs that are no input at all ('' , a closed stdout, a 1-D array).

Look before reading (issue 22): every path is stat'ed before it is opened, hashed or sniffed, so a
FIFO named `pipe.png`, a symlink to /dev/zero or a sparse 64 GiB `.png` is a per-file `failed`
result with its reason, at once. A regression here would not fail, it would hang: every case runs
under a deadline (a subprocess timeout, or a thread joined with a timeout), so it fails instead.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from integrity import hostile
from integrity.campaign import Case, Plan, run_case

EDGECXR = Path(sys.executable).parent / "edgecxr"
#: a hang is a failure after this long (a healthy case takes a second or two)
DEADLINE_S = 60


def within(seconds: float, fn: Callable[[], Any], fifos: tuple[Path, ...] = ()) -> Any:
    """fn() in a daemon thread; raises TimeoutError when it is still running after `seconds`.

    A reader blocked in open() on one of `fifos` is released (a writer opens and closes it) so the
    thread does not outlive the test; one stuck reading /dev/zero burns a core until the run ends.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        raise TimeoutError(f"still running after {seconds:g} s: it read something it should only have stat'ed")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _sparse(path: Path, size: int = 64 << 30) -> Path:
    """A PNG signature and IHDR, then a hole: `size` bytes that take no disk (refused from stat, unread)."""
    with open(path, "wb") as fh:
        fh.write(hostile.png_claiming(4096, 4096)[:33])
        fh.truncate(size)
    return path


def _socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    return sock


def _good(folder: Path, name: str = "good.png") -> Path:
    path = folder / name
    path.write_bytes(hostile.good_png(11))
    return path


def _failed(pred: Any, words: str) -> str | None:
    """None when a Prediction (object or dict) failed with `words` in its one-line reason."""
    get = pred.get if isinstance(pred, dict) else lambda k: getattr(pred, k)
    if get("status") != "failed" or get("error") is None or get("label") is not None:
        return f"{get('source')}: status {get('status')!r}, error {get('error')!r}, label {get('label')!r}"
    if words not in get("error") or "\n" in get("error") or get("reason") != get("error"):
        return f"{get('source')}: reason {get('reason')!r} / error {get('error')!r} lacks {words!r}"
    return None


# -- the CLI on a folder of things that must not be read --------------------------------------------
def cli_folder_of_special_files(folder: Path) -> Plan:
    scans = folder / "scans"
    (scans / "sub").mkdir(parents=True)
    good = _good(scans)
    os.mkfifo(scans / "pipe.png")
    os.mkfifo(scans / "pipe")  # suffix-less: a PACS-style name, sniffed for DICOM only if regular
    (scans / "zero.png").symlink_to("/dev/zero")
    _sparse(scans / "sub" / "huge.png")
    sock = _socket(scans / "sock.dcm")
    (scans / "notes.png").write_text("this is not an X-ray\n")
    (scans / "cut.png").write_bytes(hostile.good_png(0)[:500])
    out = folder / "out.csv"
    expected = {"pipe.png": "FIFO", "pipe": "FIFO", "zero.png": "character device", "huge.png": "too large",
                "sock.dcm": "socket", "notes.png": "not a PNG", "cut.png": "PNG"}

    def call() -> str | None:
        try:
            proc = subprocess.run([str(EDGECXR), "infer", "-m", str(folder / "bundle"), str(scans), "--json",
                                   "--csv", str(out)], capture_output=True, text=True, timeout=DEADLINE_S * 3)
        finally:
            sock.close()
        if "Traceback" in proc.stderr or proc.returncode != 1:
            return f"exit {proc.returncode}, expected 1: {proc.stderr[-300:]}"
        doc = json.loads(proc.stdout)
        by = {Path(p["source"]).name: p for p in doc["predictions"]}
        if set(by) != {good.name, *expected}:
            return f"listed {sorted(by)}"
        if by[good.name]["status"] != "ok" or by[good.name]["label"] is None:
            return f"the good file was not classified: {by[good.name]}"
        problems = [_failed(by[name], words) for name, words in expected.items()]
        if any(problems):
            return "; ".join(p for p in problems if p)
        if doc["failed"] != len(expected) or doc["classified"] != 1:
            return f"counts: {doc['classified']} classified, {doc['failed']} failed"
        rows = {Path(r["source"]).name: r for r in csv.DictReader(io.StringIO(out.read_text()))}
        wrong = [n for n in expected if rows[n]["status"] != "failed" or not rows[n]["reason"]]
        return f"CSV status not failed for {wrong}" if wrong else None

    return Plan(call=call, writes=(out,))


# -- the Python API on paths that must not be read ----------------------------------------------------
def api_path(kind: str) -> Callable[[Path], Plan]:
    def build(folder: Path) -> Plan:
        fifos: tuple[Path, ...] = ()
        if kind == "dev-zero":
            path, words = Path("/dev/zero"), "character device"
        elif kind == "symlink-to-dev-zero":
            path, words = folder / "scan.png", "character device"
            path.symlink_to("/dev/zero")
        elif kind == "fifo":
            path, words = folder / "pipe.png", "FIFO"
            os.mkfifo(path)
            fifos = (path,)
        elif kind == "suffixless-fifo":
            path, words = folder / "1.2.840.113619.2.55", "FIFO"
            os.mkfifo(path)
            fifos = (path,)
        elif kind == "sparse-64gib-png":
            path, words = _sparse(folder / "huge.png"), "too large"
        elif kind == "empty-string":
            path, words = "", "empty path"
        else:  # a folder given to predict: no image, and never its files
            path, words = folder / "bundle", "is a directory"

        def call() -> str | None:
            from edgecxr import Classifier

            with Classifier.load(folder / "bundle") as clf:
                preds = within(DEADLINE_S, lambda: clf.predict([path, _good(folder)]), fifos)
            if len(preds) != 2 or not preds[1].ok:
                return f"{len(preds)} predictions; the good file: {preds[-1].status} {preds[-1].error}"
            if kind == "sparse-64gib-png" and preds[0].input_sha256 is not None:
                return "a 64 GiB file was hashed"
            return _failed(preds[0], words)

        return Plan(call=call)

    return build


def api_expand_suffixless_fifo(folder: Path) -> Plan:
    """`expand_inputs` sniffs suffix-less files for DICOM; a FIFO among them is listed, never opened."""
    (folder / "scans").mkdir()
    _good(folder / "scans")
    os.mkfifo(folder / "scans" / "IM0001")

    def call() -> str | None:
        from edgecxr.data.io import expand_inputs

        got = within(DEADLINE_S, lambda: expand_inputs([folder / "scans"]), (folder / "scans" / "IM0001",))
        names = sorted(p.name for p in got)
        return None if names == ["IM0001", "good.png"] else f"listed {names}"

    return Plan(call=call)


def api_expand_empty_string(folder: Path) -> Plan:
    def call() -> str | None:
        from edgecxr.data.io import expand_inputs

        expand_inputs([""])
        return None

    from edgecxr.core.errors import DataError

    return Plan(call=call, raises=DataError, error_has="empty path")


# -- a folder that cannot be read -------------------------------------------------------------------------
def cli_unreadable_subfolder(folder: Path) -> Plan:
    """A subfolder os.walk cannot list is a failed entry (exit 1), not silently fewer images and exit 0.

    As root every folder can be listed, so there the listing is made to fail as it does for a user
    without the permission (PermissionError from os.scandir of that folder).
    """
    scans = folder / "scans"
    locked = scans / "locked"
    locked.mkdir(parents=True)
    _good(scans)
    _good(locked, "hidden.png")

    def call() -> str | None:
        from click.testing import CliRunner

        from edgecxr.cli import main

        real_scandir = os.scandir

        def scandir(path: Any = ".") -> Any:
            if Path(os.fsdecode(path)) == locked:
                raise PermissionError(13, "Permission denied", os.fsdecode(path))
            return real_scandir(path)

        mp = pytest.MonkeyPatch()
        locked.chmod(0)
        try:
            if os.geteuid() == 0:
                mp.setattr(os, "scandir", scandir)
            result = CliRunner().invoke(main, ["infer", "-m", str(folder / "bundle"), str(scans), "--json"])
        finally:
            mp.undo()
            locked.chmod(0o755)
        if result.exit_code != 1:
            return f"exit {result.exit_code}, expected 1: {result.stderr[-300:]}"
        by = {p["source"]: p for p in json.loads(result.stdout)["predictions"]}
        if str(locked) not in by:
            return f"the unreadable folder is not reported: {sorted(by)}"
        return _failed(by[str(locked)], "folder cannot be read")

    return Plan(call=call)


# -- stdout closed: the results would be lost ----------------------------------------------------------------
def cli_closed_stdout(folder: Path) -> Plan:
    good = _good(folder)

    def call() -> str | None:
        proc = subprocess.run(["bash", "-c", 'exec "$0" infer -m "$1" "$2" >&-', str(EDGECXR), str(folder / "bundle"),
                               str(good)], capture_output=True, text=True, timeout=DEADLINE_S * 2)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        if proc.returncode == 0 or len(errors) != 1 or "standard output is closed" not in errors[0]:
            return f"exit {proc.returncode}, stderr {proc.stderr[-300:]!r}"
        return None if "Traceback" not in proc.stderr else "traceback"

    return Plan(call=call)


# -- DICOM: a RescaleSlope of 0 makes every pixel the intercept -------------------------------------------------
def api_rescale_slope_zero(folder: Path) -> Plan:
    """Failed with its reason, also with the input checks off (before: a blank image got a label)."""
    path = folder / "slope0.dcm"
    path.write_bytes(hostile.dicom_bytes(hostile.example(9), RescaleSlope="0", RescaleIntercept="0"))

    def call() -> str | None:
        from edgecxr import Classifier

        for rules in ({}, {"input_rules": None}):
            with Classifier.load(folder / "bundle", **rules) as clf:
                (pred,) = clf.predict([path])
            problem = _failed(pred, "RescaleSlope")
            if problem:
                return f"{rules or 'input checks on'}: {problem}"
        return None

    return Plan(call=call)


# -- arrays that are no image ---------------------------------------------------------------------------------
ARRAYS: dict[str, Any] = {
    "1d": np.arange(64, dtype=np.float32) / 64,
    "0d": np.array(0.5, np.float32),
    "5d": np.zeros((1, 1, 2, 64, 64), np.uint8),
    "list-of-numbers": [0.1, 0.2, 0.3],
}


def api_array(kind: str) -> Callable[[Path], Plan]:
    def build(folder: Path) -> Plan:
        def call() -> str | None:
            from edgecxr import Classifier

            with Classifier.load(folder / "bundle") as clf:
                preds = clf.predict(ARRAYS[kind])
            return f"{len(preds)} predictions for a {kind} input"

        return Plan(call=call, raises=ValueError, error_has="no image")

    return build


CASES = [
    Case("special", "cli-folder-of-fifo-device-socket-sparse", cli_folder_of_special_files),
    *[Case("special", f"api-predict-{k}", api_path(k))
      for k in ("dev-zero", "symlink-to-dev-zero", "fifo", "suffixless-fifo", "sparse-64gib-png", "empty-string",
                "folder")],
    Case("special", "api-expand-suffixless-fifo", api_expand_suffixless_fifo),
    Case("special", "api-expand-empty-string", api_expand_empty_string),
    Case("special", "cli-unreadable-subfolder", cli_unreadable_subfolder),
    Case("special", "cli-closed-stdout", cli_closed_stdout),
    Case("special", "api-dicom-rescale-slope-0", api_rescale_slope_zero),
    *[Case("special", f"api-array-{k}", api_array(k)) for k in ARRAYS],
]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs, devices and sockets are POSIX")
@pytest.mark.parametrize("case", CASES, ids=str)
def test_special_case(case: Case, case_dir: Path) -> None:
    outcome, detail = run_case(case, case_dir)
    assert outcome == "clean", f"{case}: {outcome}: {detail}"
