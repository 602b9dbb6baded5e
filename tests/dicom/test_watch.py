"""`edgecxr watch DIR` (issue 14, item 4): each dropped file processed exactly once, even across SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest

from dicom.dicomfiles import cxr_dataset, cxr_files, source_pngs, write
from dicom.node_proc import NodeProcess, wait_until
from edgecxr import Classifier

pytest.importorskip("highdicom")

from edgecxr.dicom.sr import read_sr  # noqa: E402
from edgecxr.dicom.watch import STATE_DIR, WatchFolder  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def markers(folder: Path) -> set[str]:
    return {p.stem for p in (folder / STATE_DIR / "done").glob("*.json")}


def test_folder_processed_once_with_processed_and_failed(tmp_path, tiny_model):
    drop, out = tmp_path / "drop", tmp_path / "out"
    dicoms = cxr_files(drop, 4)
    png = shutil.copyfile(source_pngs(1)[0], drop / "plain.png")
    (drop / "notes.png").write_text("not an image")
    (drop / "copying.dcm.part").write_bytes(b"half")  # a copy in progress under a temporary name
    clock = Clock()
    with Classifier.load(tiny_model) as clf:
        w = WatchFolder(clf, drop, out, settle_s=1.0, log=lambda line: None, clock=clock)
        assert w.poll() and not list(out.iterdir())  # seen, not yet settled
        clock.now = 2.0
        w.poll()
        # the same PNG again under another name, and an instance sent twice: duplicates, not reprocessed
        shutil.copyfile(png.parent / "processed" / "plain.png", drop / "plain-again.png")
        write(pydicom.dcmread(drop / "processed" / dicoms[0].name), drop / "again.dcm")
        w.poll()
        clock.now = 4.0
        w.poll()
    assert w.stats == {"processed": 5, "failed": 1, "duplicates": 2, "quarantined": 0}
    assert sorted(p.name for p in (drop / "processed").iterdir()) == sorted(
        [d.name for d in dicoms] + ["plain.png", "plain-again.png", "again.dcm"])
    assert [p.name for p in (drop / "failed").iterdir()] == ["notes.png"]
    assert (drop / "copying.dcm.part").exists()
    srs = sorted(out.glob("*.sr.dcm"))
    assert {read_sr(p).referenced["SOPInstanceUID"] for p in srs} == {
        str(pydicom.dcmread(drop / "processed" / d.name).SOPInstanceUID) for d in dicoms}
    results = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert len(results) == 6  # 4 DICOM, the PNG, the unreadable file
    failed = [r for r in results if r["failed"]]
    assert len(failed) == 1 and "text file" in failed[0]["predictions"][0]["error"]


def test_a_file_still_being_written_waits(tmp_path, tiny_model):
    drop = tmp_path / "drop"
    data = write(cxr_dataset(source_pngs(1)[0]), tmp_path / "whole.dcm").read_bytes()
    drop.mkdir()
    target = drop / "scan.dcm"
    target.write_bytes(data[: len(data) // 2])
    clock = Clock()
    with Classifier.load(tiny_model) as clf:
        w = WatchFolder(clf, drop, tmp_path / "out", settle_s=1.0, log=lambda line: None, clock=clock)
        w.poll()
        clock.now = 0.5
        w.poll()
        with open(target, "ab") as fh:  # the copy goes on
            fh.write(data[len(data) // 2:])
        clock.now = 1.2  # a second since it was first seen, but its size changed
        w.poll()
        assert w.stats["processed"] == 0 and target.exists()
        clock.now = 2.5
        w.poll()
    assert w.stats == {"processed": 1, "failed": 0, "duplicates": 0, "quarantined": 0}
    [sr] = list((tmp_path / "out").glob("*.sr.dcm"))
    assert read_sr(sr).status == "ok"


def test_watch_exactly_once_across_sigkill(tmp_path, tiny_model):
    drop, out = tmp_path / "drop", tmp_path / "out"
    files = cxr_files(drop, 12)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    args = ["watch", "drop", "--out", "out", "-m", str(tiny_model), "--settle", "0.3", "--interval", "0.1",
            "--batch-size", "2"]
    with NodeProcess(args, tmp_path) as node:
        wait_until(lambda: len(markers(drop)) >= 2, what="the first files processed")
        node.kill()
    before = markers(drop)
    assert 2 <= len(before) < 12, "the kill must land mid-folder"
    with NodeProcess([*args, "--once"], tmp_path) as node:
        assert node.proc.wait(180) == 0
    processed_again = [line for line in node.lines if "->" in line and line.split(": ")[1] in before]
    assert processed_again == [], "a file marked done before the kill was processed again"
    assert markers(drop) == uids
    assert sorted(p.name for p in (drop / "processed").iterdir()) == sorted(f.name for f in files)
    assert not any(p.suffix == ".dcm" for p in drop.iterdir())
    assert {read_sr(p).referenced["SOPInstanceUID"] for p in out.glob("*.sr.dcm")} == uids
    assert len(list(out.glob("*.sr.dcm"))) == 12


def test_a_corrected_copy_of_a_failed_dicom_is_processed(tmp_path, tiny_model):
    drop = tmp_path / "drop"
    ds = cxr_dataset(source_pngs(1)[0])
    good = write(ds, tmp_path / "good.dcm").read_bytes()
    ds.PixelData = ds.PixelData[:500]
    drop.mkdir()
    clock = Clock()
    with Classifier.load(tiny_model) as clf:
        w = WatchFolder(clf, drop, tmp_path / "out", settle_s=1.0, log=lambda line: None, clock=clock)
        write(ds, drop / "scan.dcm")
        for clock.now in (0.0, 2.0):
            w.poll()
        assert [p.name for p in (drop / "failed").iterdir()] == ["scan.dcm"]
        (drop / "scan.dcm").write_bytes(good)  # the workstation exports it again, whole
        for clock.now in (3.0, 5.0):
            w.poll()
        (drop / "scan-again.dcm").write_bytes(good)  # and once more: now a duplicate
        for clock.now in (6.0, 8.0):
            w.poll()
    assert w.stats == {"processed": 1, "failed": 1, "duplicates": 1, "quarantined": 0}
    [sr] = list((tmp_path / "out").glob("*.sr.dcm"))
    assert read_sr(sr).status == "ok"


def run_once(w: WatchFolder, timeout_s: float = 60) -> None:
    """w.run(once=True) in a thread: a watch that never ends fails the test instead of hanging it."""
    import threading

    t = threading.Thread(target=w.run, kwargs={"once": True}, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        w.stop()
        raise AssertionError(f"watch --once did not end within {timeout_s} s; seen: {sorted(w._seen)}")


def test_once_ends_on_empty_broken_anonymised_and_deflated_files(tmp_path, tiny_model):
    """Issue 22: watch --once never ended on a zero-byte file and crashed on an anonymised DX; a deflated DICOM
    was keyed by its bytes' sha256 instead of its SOP Instance UID."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    png = source_pngs(1)[0]
    (drop / "empty.dcm").write_bytes(b"")
    (drop / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    anonymised = cxr_dataset(png)
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                    "PatientID", "PatientName"):
        delattr(anonymised, keyword)
    write(anonymised, drop / "anonymised.dcm")
    deflated = cxr_dataset(png, crop=1)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write(deflated, drop / "deflated.dcm")
    lines: list[str] = []
    with Classifier.load(tiny_model) as clf:
        w = WatchFolder(clf, drop, out, interval_s=0.05, settle_s=0, log=lines.append)
        run_once(w)
    assert w.stats == {"processed": 2, "failed": 2, "duplicates": 0, "quarantined": 0}, lines
    assert sorted(p.name for p in (drop / "failed").iterdir()) == ["empty.dcm", "garbage.dcm"]
    assert sorted(p.name for p in (drop / "processed").iterdir()) == ["anonymised.dcm", "deflated.dcm"]
    assert markers(drop) >= {anonymised.SOPInstanceUID, deflated.SOPInstanceUID}  # keyed by UID, deflated too
    for ds in (anonymised, deflated):
        assert read_sr(out / f"{ds.SOPInstanceUID}.sr.dcm").status == "ok"
        assert (out / f"{ds.SOPInstanceUID}.json").exists()
    empty = [json.loads(p.read_text()) for p in out.glob("sha256-*.json")]
    assert len(empty) == 2 and all(doc["predictions"][0]["status"] == "failed" for doc in empty)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads a file whatever its mode; the unreadable-file key is also checked below")
def test_once_ends_on_an_unreadable_file(tmp_path, tiny_model):
    drop = tmp_path / "drop"
    drop.mkdir()
    locked = drop / "locked.dcm"
    locked.write_bytes(b"x" * 100)
    locked.chmod(0)
    with Classifier.load(tiny_model) as clf:
        w = WatchFolder(clf, drop, tmp_path / "out", interval_s=0.05, settle_s=0, log=lambda line: None)
        run_once(w)
    assert w.stats["failed"] == 1 and [p.name for p in (drop / "failed").iterdir()] == ["locked.dcm"]


def test_an_unreadable_file_has_a_key(tmp_path, monkeypatch):
    """A file that exists but cannot be read is keyed (and fails once), not taken for a vanished one."""
    import edgecxr.dicom.watch as watch

    path = tmp_path / "locked.png"
    path.write_bytes(b"x" * 10)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(watch, "_hash_file", denied)
    key = watch.key_of(path)
    assert key is not None and key.startswith("unreadable-")
    assert watch.key_of(tmp_path / "gone.png") is None


class Died(BaseException):
    """What a process killed mid-classification looks like from inside: nothing after it runs."""


class Deadly:
    """A classifier that dies on files named poison*."""

    def __init__(self, clf):
        self.clf = clf

    def predict(self, items, **kwargs):
        if any(Path(str(i)).name.startswith("poison") for i in items):
            raise Died()
        return self.clf.predict(items, **kwargs)

    def __getattr__(self, name):
        return getattr(self.clf, name)


def test_a_file_that_kills_the_watch_is_quarantined_after_three_tries(tmp_path, tiny_model):
    from edgecxr.dicom.spool import MAX_ATTEMPTS

    drop, out = tmp_path / "drop", tmp_path / "out"
    files = cxr_files(drop, 3)
    poison = files[0].rename(drop / "poison.dcm")
    starts = 0
    with Classifier.load(tiny_model) as clf:
        while True:
            starts += 1
            w = WatchFolder(Deadly(clf), drop, out, interval_s=0.05, settle_s=0, log=lambda line: None)
            try:
                w.run(once=True)
            except Died:
                assert starts <= MAX_ATTEMPTS
                continue
            break
    assert starts == MAX_ATTEMPTS + 1
    assert w.stats["quarantined"] == 1
    assert sorted(p.name for p in (drop / "quarantine").iterdir()) == ["poison.dcm", "poison.dcm.reason.txt"]
    assert "never finished" in (drop / "quarantine" / "poison.dcm.reason.txt").read_text()
    assert sorted(p.name for p in (drop / "processed").iterdir()) == sorted(f.name for f in files[1:])
    assert not poison.exists() and len(list(out.glob("*.sr.dcm"))) == 2
