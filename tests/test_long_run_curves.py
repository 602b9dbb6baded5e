"""scripts/long_run_curves.py: the long runs' report comes from their own train.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_modules import load_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def curves():
    return load_script("long_run_curves")


def _log(folder: Path, records: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{\"epoch\": 3, \"va")


def _epoch(e: int, acc: float, raw: float, seconds: float = 3600.0) -> dict:
    return {"epoch": e, "of": 40, "val_accuracy": acc, "raw_val_accuracy": raw, "val_loss": 1 - acc,
            "raw_val_loss": 1 - raw, "seconds": seconds, "images_per_second": 1.5, "time": f"2026-12-07T0{e}:00:00"}


def test_report_reads_every_run_and_updates_the_doc_between_markers(curves, tmp_path):
    runs = tmp_path / "runs"
    # epoch 2 logged twice (a resumed run): the later record wins; the cut last line is skipped
    _log(runs / "b-run", [_epoch(1, 0.5, 0.6), _epoch(2, 0.4, 0.9), _epoch(2, 0.7, 0.8, 1800.0)])
    _log(runs / "a-run", [_epoch(1, 0.8, 0.7)])
    (runs / "a-run" / "bundle.json").write_text("{}")
    (runs / "empty").mkdir()
    doc = tmp_path / "docs" / "REPRODUCTION.md"
    doc.parent.mkdir()
    doc.write_text(f"before\n{curves.BEGIN}\nold table\n{curves.END}\nafter\n")

    assert curves.main(["--runs", str(runs), "--update-docs", "--doc", str(doc)]) == 0
    report = json.loads((tmp_path / "docs" / "results" / "long-runs.json").read_text())
    b = {r["run"]: r for r in report["runs"]}
    assert list(b) == ["a-run", "b-run"]
    assert b["b-run"]["epochs_done"] == 2 and [e["val_accuracy"] for e in b["b-run"]["epochs"]] == [0.5, 0.7]
    assert b["b-run"]["hours"] == 1.5 and b["b-run"]["best_val_epoch"] == 2 and b["b-run"]["best_raw_val_epoch"] == 2
    assert b["a-run"]["finished"] and not b["b-run"]["finished"]
    assert (tmp_path / "docs" / "results" / "long-runs.png").stat().st_size > 1000
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old table" not in text
    assert "| b-run | 2 of 40 | 1.5 | 1.5 | 70.0% / 80.0% | 70.0% (2) | 80.0% (2) |" in text
    assert "| a-run | 1 of 40 (finished) |" in text
    assert str(tmp_path) not in (tmp_path / "docs" / "results" / "long-runs.json").read_text()


def test_no_runs_and_no_markers_are_refused(curves, tmp_path, capsys):
    assert curves.main(["--runs", str(tmp_path / "nothing")]) == 2
    assert "no run with a train.jsonl" in capsys.readouterr().err
    _log(tmp_path / "runs" / "r", [_epoch(1, 0.5, 0.5)])
    doc = tmp_path / "docs" / "REPRODUCTION.md"
    doc.parent.mkdir()
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- long-runs:begin -->"):
        curves.main(["--runs", str(tmp_path / "runs"), "--update-docs", "--doc", str(doc)])


def test_a_recorded_run_whose_folder_is_gone_stays_in_the_report(curves, tmp_path):
    """The runs live on the build machine, which is not always kept: their committed record must stay."""
    doc = tmp_path / "docs" / "REPRODUCTION.md"
    (tmp_path / "docs" / "results").mkdir(parents=True)
    doc.write_text(f"{curves.BEGIN}\n{curves.END}\n")
    _log(tmp_path / "old" / "lost-run", [_epoch(1, 0.5, 0.6), _epoch(2, 0.6, 0.7)])
    _log(tmp_path / "old" / "kept-run", [_epoch(1, 0.3, 0.3)])
    assert curves.main(["--runs", str(tmp_path / "old"), "--update-docs", "--doc", str(doc)]) == 0

    _log(tmp_path / "new" / "kept-run", [_epoch(1, 0.4, 0.4), _epoch(2, 0.8, 0.8)])  # this machine's copy
    _log(tmp_path / "new" / "fresh-run", [_epoch(1, 0.9, 0.9)])
    assert curves.main(["--runs", str(tmp_path / "new"), "--update-docs", "--doc", str(doc)]) == 0
    report = {r["run"]: r for r in json.loads((tmp_path / "docs" / "results" / "long-runs.json").read_text())["runs"]}
    assert list(report) == ["fresh-run", "kept-run", "lost-run"]
    assert report["lost-run"]["folder_gone"] and report["lost-run"]["epochs_done"] == 2
    assert "folder_gone" not in report["kept-run"] and report["kept-run"]["epochs_done"] == 2  # the folder wins
    text = doc.read_text()
    assert "| lost-run | 2 of 40 (stopped: its folder was lost) |" in text and "| fresh-run | 1 of 40 |" in text
    # without --update-docs nothing committed is read: the table is this machine's runs only
    assert curves.main(["--runs", str(tmp_path / "new"), "--out", str(tmp_path / "out")]) == 0
    assert [r["run"] for r in json.loads((tmp_path / "out" / "long-runs.json").read_text())["runs"]] == [
        "fresh-run", "kept-run"]
