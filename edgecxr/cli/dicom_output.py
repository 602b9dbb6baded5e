"""`infer --dicom-sr DIR`: one DICOM Structured Report per DICOM input, written safely.

Kept out of `cli/infer.py` (that command stays a page of option parsing); the work is
`edgecxr.dicom.outputs.write_for_predictions`. The folder is checked before the model loads: it
may not hold any input (the next `infer` of that folder would read the reports as inputs). A
report is named by its source's SOP Instance UID (`<uid>.sr.dcm`) and replaces only an earlier
report of that name. PNG/JPEG inputs get no report (an SR references a DICOM instance); stderr
says how many. A report that cannot be written is one stderr line, and the command exits 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from edgecxr.cli.output import _err, printable
from edgecxr.runtime.prediction import Prediction


def check_dicom_sr_dir(folder: Path | None, inputs: Sequence[Path], given: Sequence[str] = ()) -> None:
    """Refuse (exit 2) before any work a --dicom-sr folder that is a file, holds an input, lies in an input
    folder (`given`: the command's arguments) or cannot be written."""
    if folder is None:
        return
    from edgecxr.dicom import require

    require("highdicom", "--dicom-sr")  # now, not after the whole batch ran
    if folder.exists() and not folder.is_dir():
        raise click.BadParameter(f"{printable(folder)} is not a folder", param_hint="--dicom-sr")
    where = Path(os.path.abspath(folder))
    for path in inputs:
        if where in Path(os.path.abspath(path)).parents:
            raise click.BadParameter(
                f"{printable(folder)} holds the input {printable(path)}; the reports would be read as inputs by the "
                "next run over that folder (give another folder)", param_hint="--dicom-sr")
    for arg in given:
        if Path(arg).is_dir() and (where == Path(os.path.abspath(arg)) or Path(os.path.abspath(arg)) in where.parents):
            raise click.BadParameter(
                f"{printable(folder)} is inside the input folder {printable(arg)}; the reports would be read as inputs "
                "by the next run over it (give another folder)", param_hint="--dicom-sr")
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{printable(folder)}: cannot write in {printable(probe)}", param_hint="--dicom-sr")


def write_dicom_srs(folder: Path, preds: Sequence[Prediction], audit: Mapping[str, Any],
                    classes: Sequence[str]) -> tuple[dict[str, str], int]:
    """Write the reports; ({source: report path}, number that failed), each failure reported on stderr."""
    from edgecxr.dicom.outputs import write_for_predictions

    written, failed, skipped = {}, 0, 0
    for w in write_for_predictions(preds, audit, classes, folder):
        if w.error is not None:
            failed += 1
            _err(f"error: {printable(w.source)}: no DICOM SR written ({printable(w.error)})")
        elif w.skipped is not None:
            skipped += 1
        else:
            written[str(w.source)] = str(w.paths[0])
    line = f"{len(written)} DICOM SR(s) written to {printable(folder)}"
    if skipped:
        line += f"; {skipped} non-DICOM input(s) have none (an SR references a DICOM instance)"
    _err(line + (f"; {failed} failed" if failed else ""))
    return written, failed
