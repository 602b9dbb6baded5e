"""`infer --heatmap DIR`: one occlusion overlay PNG per classified input, written safely.

Kept out of `cli/infer.py` so that command stays a page of option parsing. The policy is that of
every output option (`cli/output.check_output`): the folder is checked before the model loads, a
file is never written over an input, through a link or over someone else's image; only this
option's own earlier overlays (`*.heatmap.png`) are replaced on a rerun. A folder that holds any
of the inputs is refused: the overlays would be read as X-rays by the next `infer` of that folder.

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


def check_heatmap_dir(folder: Path | None, inputs: Sequence[Path], target: str | None = None) -> None:
    """Refuse (exit 2) before any work a --heatmap folder that cannot be or must not be written."""
    if folder is None:
        if target is not None:
            raise click.UsageError("--heatmap-class needs --heatmap DIR (where the overlays go)")
        return
    if folder.exists() and not folder.is_dir():
        raise click.BadParameter(f"{printable(folder)} is not a folder", param_hint="--heatmap")
    where = Path(os.path.abspath(folder))
    for path in inputs:
        if where in Path(os.path.abspath(path)).parents:
            raise click.BadParameter(
                f"{printable(folder)} holds the input {printable(path)}; the overlays would be read as X-rays "
                "by the next run over that folder (give another folder)", param_hint="--heatmap")
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise click.BadParameter(f"{printable(folder)}: {printable(probe)} is a file, not a folder", param_hint="--heatmap")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{printable(folder)}: no permission to write in {printable(probe)}",
                                 param_hint="--heatmap")


def check_heatmap_class(target: str | None, classes: Sequence[str]) -> None:
    """Refuse (exit 2) a --heatmap-class the model does not have, before any image is classified."""
    if target is not None and target not in classes:
        raise click.BadParameter(f"{target!r} is not one of the model's classes {list(classes)}",
                                 param_hint="--heatmap-class")


def write_heatmaps(
    classifier: Any,
    preds: Sequence[Prediction],
    items: Sequence[Any],
    folder: Path,
    target: str | None = None,
    batch_size: int = 8,
    show_progress: bool = False,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Map and write an overlay for every classified prediction; prints one stderr line per failure.

    Returns ({source: {"path": ..., **HeatMap.to_dict()}} for what was written, number of failures).
    `items[i]` is the input of `preds[i]`, so the map is computed on the same input.
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
        path = folder / overlay_name(pred.source, taken)
        label = printable(pred.source)
        problem = output_problem(path, inputs=[i for i in items if isinstance(i, (str, Path))], replaces=(".png",))
        if problem is not None:
            _err(f"error: heat map for {label}: {printable(path)} {problem}")
            failed += 1
            continue
        try:
            again, heat = explain(classifier, item, target=target or pred.label, batch_size=batch_size)
            if heat is None:  # it changed since it was classified: unreadable or rejected now
                raise EdgeCXRError(again.error or again.reason or "the input no longer reaches the model")
            write_overlay(path, item, heat)
        except (EdgeCXRError, OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            _err(f"error: heat map for {label}: {reason}")
            failed += 1
            continue
        written[str(pred.source)] = {"path": str(path), **heat.to_dict()}
    return written, failed


def summary(written: dict[str, dict[str, Any]], failed: int, folder: Path) -> str:
    """The stderr line after the overlays: how many, where, and what one cost."""
    if not written:
        return f"no heat maps written to {printable(folder)}" + (f" ({failed} failed)" if failed else "")
    first = next(iter(written.values()))
    mean_s = sum(w["seconds"] for w in written.values()) / len(written)
    return (f"wrote {len(written)} heat map(s) to {printable(folder)}: occlusion, {first['model_runs']} model runs "
            f"each (batches of {first['batch_size']}), {mean_s:.2f} s per map"
            + (f"; {failed} failed" if failed else ""))
