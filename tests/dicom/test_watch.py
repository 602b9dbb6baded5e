"""`edgecxr watch DIR` (issue 14, item 4): each dropped file processed exactly once, even across SIGKILL."""

from __future__ import annotations

import json
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
    assert w.stats == {"processed": 5, "failed": 1, "duplicates": 2}
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
    assert w.stats == {"processed": 1, "failed": 0, "duplicates": 0}
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
    assert w.stats == {"processed": 1, "failed": 1, "duplicates": 1}
    [sr] = list((tmp_path / "out").glob("*.sr.dcm"))
    assert read_sr(sr).status == "ok"
