"""`infer --heatmap DIR` / `--dicom-sc DIR`: one occlusion overlay (PNG, DICOM SC) per classified input, written safely.

Kept out of `cli/infer.py` so that command stays a page of option parsing. The policy is that of
every output option (`cli/output.check_output`): the folder is checked before the model loads, a
file is never written over an input, through a link or over someone else's image; only this
option's own earlier overlays (`*.heatmap.png`) are replaced on a rerun. A folder that holds any
of the inputs is refused: the overlays would be read as X-rays by the next `infer` of that folder.

`--dicom-sc` writes the same overlay as a DICOM Secondary Capture for each DICOM input
(`edgecxr.dicom.sc`: `<source SOP Instance UID>.sc.dcm`, replacing only an earlier capture).
Failed and rejected inputs get no overlay (there is no class to explain), nor do abstained ones
(their label is not for use). An overlay that cannot be made (the file changed since it was
classified, the disk is full) is reported on stderr with its reason, the others are still
written, and the command exits 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from edgecxr.cli.output import _err, output_problem, printable
from edgecxr.runtime.prediction import Prediction


def check_heatmap_dir(folder: Path | None, inputs: Sequence[Path], given: Sequence[str] = (),
                      option: str = "--heatmap") -> None:
    """Refuse (exit 2) before any work a --heatmap (or --dicom-sc) folder that cannot be or must not be written.

    `inputs` are the files the command reads, `given` its arguments: the folder may neither hold
    an input nor lie inside an input folder (the next run over it would read the outputs as X-rays).
    """
    if folder is None:
        return
    if option == "--dicom-sc":
        from edgecxr.dicom import require

        require("highdicom", "--dicom-sc")  # now, not after the whole batch ran
    if folder.exists() and not folder.is_dir():
        raise click.BadParameter(f"{printable(folder)} is not a folder", param_hint=option)
    where = Path(os.path.abspath(folder))
    for path in inputs:
        if where in Path(os.path.abspath(path)).parents:
            raise click.BadParameter(
                f"{printable(folder)} holds the input {printable(path)}; the outputs would be read as X-rays "
                "by the next run over that folder (give another folder)", param_hint=option)
    for arg in given:
        here = Path(os.path.abspath(arg))
        if Path(arg).is_dir() and (where == here or here in where.parents):
            raise click.BadParameter(
                f"{printable(folder)} is inside the input folder {printable(arg)}; the outputs would be read as "
                "X-rays by the next run over it (give another folder)", param_hint=option)
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise click.BadParameter(f"{printable(folder)}: {printable(probe)} is a file, not a folder", param_hint=option)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{printable(folder)}: no permission to write in {printable(probe)}",
                                 param_hint=option)


def check_heatmap_class(target: str | None, classes: Sequence[str], wanted: bool = True) -> None:
    """Refuse (exit 2) a --heatmap-class the model does not have (or given without a map to make),
    before any image is classified."""
    if target is not None and not wanted:
        raise click.UsageError("--heatmap-class needs --heatmap DIR or --dicom-sc DIR (where the maps go)")
    if target is not None and target not in classes:
        raise click.BadParameter(f"{target!r} is not one of the model's classes {list(classes)}",
                                 param_hint="--heatmap-class")


def write_heatmaps(
    classifier: Any,
    preds: Sequence[Prediction],
    items: Sequence[Any],
    folder: Path | None,
    target: str | None = None,
    batch_size: int = 8,
    show_progress: bool = False,
    sc_folder: Path | None = None,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Map every classified prediction; write its PNG overlay to `folder` and, for a DICOM input, its
    Secondary Capture to `sc_folder` (either may be None); one stderr line per failure.

    Returns ({source: {"path": PNG, "sc": capture, **HeatMap.to_dict()}} for what was written,
    number of failures). `items[i]` is the input of `preds[i]`, so the map is computed on the same
    input. A capture's UIDs are derived from its source and the model (`edgecxr.dicom.sc`): the
    captures of one source series share one heat map series, and a rerun replaces them.
    """
    from tqdm import tqdm

    from edgecxr.core.errors import EdgeCXRError
    from edgecxr.runtime.heatmap import explain
    from edgecxr.runtime.overlay import overlay_name, write_overlay

    written: dict[str, dict[str, Any]] = {}
    failed = 0
    taken: set[str] = set()
    todo = [(p, item) for p, item in zip(preds, items, strict=True) if p.ok]
    for pred, item in tqdm(todo, file=sys.stderr, disable=not show_progress, unit="map", desc="heat maps"):
        path = None if folder is None else folder / overlay_name(pred.source, taken)
        label = printable(pred.source)
        problem = None if path is None else output_problem(
            path, inputs=[i for i in items if isinstance(i, (str, Path))], replaces=(".png",))
        if problem is not None:
            _err(f"error: heat map for {label}: {printable(path)} {problem}")
            failed += 1
            continue
        try:
            again, heat = explain(classifier, item, target=target or pred.label, batch_size=batch_size)
            if heat is None:  # it changed since it was classified: unreadable or rejected now
                raise EdgeCXRError(again.error or again.reason or "the input no longer reaches the model")
            entry: dict[str, Any] = {"path": None if path is None else str(write_overlay(path, item, heat))}
            if sc_folder is not None:
                entry["sc"] = _write_sc(sc_folder, item, heat, classifier)
        except (EdgeCXRError, OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            _err(f"error: heat map for {label}: {reason}")
            failed += 1
            continue
        except Exception as exc:  # noqa: BLE001 - one input's map or capture, never a traceback for the run
            _err(f"error: heat map for {label}: {type(exc).__name__}: {exc}")
            failed += 1
            continue
        written[str(pred.source)] = {**entry, **heat.to_dict()}
    return written, failed


def _write_sc(folder: Path, item: Any, heat: Any, classifier: Any) -> str | None:
    """The Secondary Capture of a DICOM input's map (its path), None for a PNG/JPEG input (nothing to reference)."""
    from edgecxr.dicom.outputs import read_header
    from edgecxr.dicom.sc import heatmap_secondary_capture, sc_path, write_secondary_capture

    header = read_header(Path(item)) if isinstance(item, (str, Path)) else None
    if header is None:
        return None
    audit = classifier.audit
    model = (f"{audit.get('model')} {audit.get('precision')} sha256 {str(audit.get('artifact_sha256') or '')[:12]}, "
             f"edgecxr {audit.get('edgecxr_version')}")
    sc = heatmap_secondary_capture(item, heat, model=model, audit=audit)
    return str(write_secondary_capture(sc_path(folder, str(header.SOPInstanceUID)), sc))


def summary(written: dict[str, dict[str, Any]], failed: int, folder: Path | None, sc_folder: Path | None = None) -> str:
    """The stderr line after the maps: how many, where, and what one cost."""
    where = " and ".join(printable(f) for f in (folder, sc_folder) if f is not None)
    if not written:
        return f"no heat maps written to {where}" + (f" ({failed} failed)" if failed else "")
    first = next(iter(written.values()))
    mean_s = sum(w["seconds"] for w in written.values()) / len(written)
    line = (f"wrote {len(written)} heat map(s) to {where}: occlusion, {first['model_runs']} model runs "
            f"each (batches of {first['batch_size']}), {mean_s:.2f} s per map")
    if sc_folder is not None:
        n_sc = sum(1 for w in written.values() if w.get("sc"))
        line += f"; {n_sc} DICOM Secondary Capture(s)"
        if n_sc < len(written):
            line += f", none for {len(written) - n_sc} non-DICOM input(s)"
    return line + (f"; {failed} failed" if failed else "")
