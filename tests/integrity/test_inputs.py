"""Campaign family "inputs": corrupt, lying and hostile image files through the CLI and the API.

Every hostile file must come back as a per-file error (exit 1 on the CLI) while the good files
beside it are still classified, and a good variant must never be refused.
"""

from __future__ import annotations

import csv as _csv
import io
import json
import os
from pathlib import Path

import pytest

from integrity import hostile
from integrity.campaign import Case, Plan, run_case

GOOD = "good.png"


def _files(folder: Path, name: str) -> tuple[Path, Path, bool]:
    maker, suffix, accepted = hostile.IMAGES[name]
    good = folder / GOOD
    good.write_bytes(hostile.good_png(11))
    target = folder / f"input{suffix}"
    target.write_bytes(maker())
    return good, target, accepted


def _batch_check(good: Path, target: Path, accepted: bool, csv: Path):
    def check(result) -> str | None:
        doc = json.loads(result.stdout)
        by = {p["source"]: p for p in doc["predictions"]}
        if by[str(good)]["error"] is not None:
            return f"good file refused: {by[str(good)]['error']}"
        bad = by[str(target)]
        if accepted and bad["error"] is not None:
            return f"good variant refused: {bad['error']}"
        if not accepted and (bad["error"] is None or bad["label"] is not None):
            return f"hostile file classified: {bad['label']} {bad['top1']}"
        if not accepted and (bad["status"] != "failed" or bad["reason"] != bad["error"]):
            return f"a failed input has status {bad['status']!r}, reason {bad['reason']!r}"
        if not csv.is_file() or len(csv.read_text().splitlines()) != 3:
            return "CSV missing or incomplete"
        rows = {r["source"]: r for r in _csv.DictReader(io.StringIO(csv.read_text()))}
        if rows[str(target)]["status"] != ("ok" if accepted else "failed"):
            return f"CSV status {rows[str(target)]['status']!r}"
        return None

    return check


def cli_batch(name: str) -> Case:
    def build(folder: Path) -> Plan:
        good, target, accepted = _files(folder, name)
        csv = folder / "out.csv"
        return Plan(
            args=["infer", "-m", str(folder / "bundle"), str(good), str(target), "--json", "--csv", str(csv)],
            exit_code=0 if accepted else 1,
            check=_batch_check(good, target, accepted, csv),
            writes=(csv,),
            per_file=True,
        )

    return Case("inputs", f"cli-batch-{name}", build)


def cli_single(name: str) -> Case:
    def build(folder: Path) -> Plan:
        _, target, accepted = _files(folder, name)

        def check(result) -> str | None:
            if accepted and target.name not in result.stdout:
                return "no row for the file"
            if not accepted and "FAILED" not in result.stdout:
                return f"no FAILED row: {result.stdout[-200:]}"
            return None

        return Plan(args=["infer", "-m", str(folder / "bundle"), str(target)], exit_code=0 if accepted else 1, check=check,
                    per_file=True)

    return Case("inputs", f"cli-single-{name}", build)


def api_batch(name: str) -> Case:
    def build(folder: Path) -> Plan:
        good, target, accepted = _files(folder, name)

        def call() -> str | None:
            from edgecxr import Classifier

            with Classifier.load(folder / "bundle") as clf:
                preds = clf.predict([good, target, good])
            if not (preds[0].ok and preds[2].ok):
                return f"good file refused: {preds[0].error or preds[2].error}"
            if accepted != preds[1].ok:
                return f"accepted={preds[1].ok} ({preds[1].error or preds[1].label}), expected {accepted}"
            if not accepted and (not preds[1].error.strip() or "\n" in preds[1].error):
                return f"error is not one line: {preds[1].error!r}"
            if preds[1].status != ("ok" if accepted else "failed"):
                return f"status {preds[1].status!r} for a {'good' if accepted else 'failed'} input"
            return None

        return Plan(call=call)

    return Case("inputs", f"api-batch-{name}", build)


def _sparse_png(folder: Path) -> Path:
    """A '4 GB' file that starts like a PNG (sparse: no disk used); it must be refused unread."""
    path = folder / "huge.png"
    with open(path, "wb") as fh:
        fh.write(hostile.png_claiming(4096, 4096)[:33])
        fh.truncate(4 << 30)
    return path


def _special() -> list[Case]:
    def sparse_cli(folder: Path) -> Plan:
        good = folder / GOOD
        good.write_bytes(hostile.good_png(11))
        huge = _sparse_png(folder)
        return Plan(args=["infer", "-m", str(folder / "bundle"), str(good), str(huge)], exit_code=1, per_file=True)

    def sparse_api(folder: Path) -> Plan:
        huge = _sparse_png(folder)

        def call() -> str | None:
            from edgecxr.core.errors import ImageLoadError
            from edgecxr.data.io import load_image

            try:
                load_image(huge)
            except ImageLoadError:
                return None
            return "a 4 GB file was decoded"

        return Plan(call=call)

    def folder_named_png(folder: Path) -> Plan:
        (folder / "scan.png").mkdir()
        return Plan(args=["infer", "-m", str(folder / "bundle"), str(folder / "scan.png")], exit_code=1)

    def missing(folder: Path) -> Plan:
        return Plan(args=["infer", "-m", str(folder / "bundle"), str(folder / "nope.png")], exit_code=1)

    def glob_nothing(folder: Path) -> Plan:
        return Plan(args=["infer", "-m", str(folder / "bundle"), str(folder / "*.jpg")], exit_code=1)

    def fifo(folder: Path) -> Plan:
        good = folder / GOOD
        good.write_bytes(hostile.good_png(11))
        os.mkfifo(folder / "pipe.png")
        return Plan(args=["infer", "-m", str(folder / "bundle"), str(good), str(folder / "pipe.png")], exit_code=1,
                    per_file=True)

    def api_array(kind: str):
        import numpy as np

        arrays = {
            "nan": np.full((64, 64), np.nan, np.float32),
            "inf": np.full((64, 64), np.inf, np.float32),
            "4d": np.zeros((2, 2, 64, 64), np.uint8),
            "object": np.array([[object()]] * 20, dtype=object),
            "bool": np.ones((64, 64), bool),
            "empty": np.zeros((0, 0), np.uint8),
        }

        def build(folder: Path) -> Plan:
            def call() -> str | None:
                from edgecxr import Classifier

                with Classifier.load(folder / "bundle") as clf:
                    preds = clf.predict([hostile.example(0), arrays[kind]])
                if not preds[0].ok:
                    return f"good array refused: {preds[0].error}"
                return None if not preds[1].ok else f"{kind} array classified as {preds[1].label}"

            return Plan(call=call)

        return build

    cases = [
        Case("inputs", "cli-sparse-4gb-png", sparse_cli),
        Case("inputs", "api-sparse-4gb-png", sparse_api),
        Case("inputs", "cli-folder-named-png", folder_named_png),
        Case("inputs", "cli-missing-file", missing),
        Case("inputs", "cli-glob-matches-nothing", glob_nothing),
        Case("inputs", "cli-fifo", fifo),
    ]
    cases += [Case("inputs", f"api-array-{k}", api_array(k)) for k in ("nan", "inf", "4d", "object", "bool", "empty")]
    return cases


CASES = [make(name) for name in hostile.IMAGES for make in (cli_batch, cli_single, api_batch)] + _special()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_input_case(case: Case, case_dir: Path) -> None:
    outcome, detail = run_case(case, case_dir)
    assert outcome == "clean", f"{case}: {outcome}: {detail}"


def _memory_capped_batch(folder: Path) -> Plan:
    """`edgecxr infer` under an 8 GB address-space cap (ulimit -v) with a bomb between good files."""
    import subprocess
    import sys

    good = [folder / f"good{i}.png" for i in range(2)]
    for i, p in enumerate(good):
        p.write_bytes(hostile.good_png(i))
    bomb = folder / "bomb.png"
    bomb.write_bytes(hostile.png_bomb())
    edgecxr = Path(sys.executable).parent / "edgecxr"
    cmd = f"ulimit -v 8000000 && exec {edgecxr} infer -m {folder / 'bundle'} {good[0]} {bomb} {good[1]} --json"

    def call() -> str | None:
        proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
        if "Traceback" in proc.stderr or proc.returncode != 1:
            return f"exit {proc.returncode}: {proc.stderr[-300:]}"
        preds = {p["source"]: p for p in json.loads(proc.stdout)["predictions"]}
        if any(preds[str(g)]["label"] is None for g in good):
            return "a good file was not classified"
        return None if preds[str(bomb)]["error"] else "the bomb was classified"

    return Plan(call=call)


CASES.append(Case("inputs", "cli-bomb-in-batch-under-8gb-ulimit", _memory_capped_batch))
