"""`edgecxr evaluate`: metrics of one bundle artifact on one manifest split.

Thin on purpose (STYLE.md 1): it parses options and calls `edgecxr.evaluate.evaluate_bundle`,
which is imported inside the command so `edgecxr --help` stays free of numpy-heavy imports and
TensorFlow loads only when the Keras artifact is evaluated.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click

from edgecxr.cli.options import allow_outside_option, bundle_for, model_option
from edgecxr.cli.output import _err
from edgecxr.core.artifacts import BUNDLE_FILES
from edgecxr.core.lock import bundle_lock
from edgecxr.data.manifest import SPLITS


@click.command("evaluate")
@model_option("Bundle to evaluate (a shipped model is copied to the models folder first)")
@click.option(
    "--data",
    "manifest",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Manifest CSV (e.g. ../shared/data/cxr/manifest.csv).",
)
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True, help="Split to score.")
@click.option(
    "--artifact",
    type=click.Choice(list(BUNDLE_FILES)),
    default="keras",
    show_default=True,
    help="Which bundle artifact to run; ONNX artifacts run on onnxruntime (no TensorFlow needed).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the 95% CIs (0: no CIs).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON instead of the report.")
@allow_outside_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def evaluate(
    model: str | None,
    manifest: Path,
    split: str,
    artifact: str,
    batch_size: int,
    bootstrap: int,
    seed: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Evaluate the bundle on a manifest split: confusion matrix, per-class metrics, bootstrap CIs.

    \b
    Writes evaluation-<split>.json, confusion-<split>.png, reliability-<split>.png (ECE before and
    after the bundle's temperature) and roc-<split>.png into the bundle (with -<artifact> appended
    for non-Keras artifacts) and a summary under "evaluations" in bundle.json.
    Example:  edgecxr evaluate -m runs/coronet --data ../shared/data/cxr/manifest.csv
    """
    from edgecxr.stages.evaluate import evaluate_bundle
    from edgecxr.stages.metrics_report import format_report

    backend = "keras" if artifact == "keras" else "onnxruntime"
    path = bundle_for(model, writes=True)  # it writes its report into the bundle
    # held from before the bundle is read until after it is written: another command's record survives
    with bundle_lock(path, log=_err), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = evaluate_bundle(
            path,
            manifest,
            split,
            backend=backend,
            artifact=artifact,
            batch_size=batch_size,
            bootstrap=bootstrap,
            seed=seed,
            progress=not quiet,
        )
    for w in caught:
        if issubclass(w.category, UserWarning):
            click.echo(f"warning: {w.message}", err=True)
    if as_json:
        out = {k: v for k, v in result.items() if k != "files"}
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    prov = result["provenance"]
    title = f"{prov['model']} [{artifact}, {prov['backend'].get('backend', backend)}] on {split}"
    click.echo(format_report(result, title), nl=False)
    cal = result["calibration"]
    if cal.get("calibrator", "none") == "none":
        click.echo(f"\ncalibration: ECE {cal['ece_before']:.3f} (no calibrator fitted: `edgecxr confidence`)")
    elif cal.get("temperature") is None:
        click.echo(f"\ncalibration: ECE {cal['ece_before']:.3f} raw, {cal['ece_after']:.3f} with the "
                   f"{cal['calibrator']} calibrator (fitted on held-out splits)")
    else:
        click.echo(f"\ncalibration: ECE {cal['ece_before']:.3f} raw, {cal['ece_after']:.3f} with temperature "
                   f"{cal['temperature']:.3g} (fitted on held-out splits)")
    files = result.get("files", {})
    click.echo(f"\nwritten: {files.get('json')}" + "".join(f", {files[k]}" for k in ("figure", "reliability", "roc")
                                                          if files.get(k)))
