"""verify."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecxr.cli.options import (
    _MANIFEST,
    _gates,
    _load_bundle,
    _split_list,
    allow_outside_option,
    bundle_for,
    model_option,
)
from edgecxr.cli.output import _err
from edgecxr.core.errors import BundleError
from edgecxr.core.lock import bundle_lock
from edgecxr.data.manifest import SPLITS
from edgecxr.stages.gate.report import format_text
from edgecxr.stages.gate.run import run_gate


@click.command("verify")
@model_option("Bundle to verify (a shipped model is copied to the models folder first)")
@click.option("--data", "manifest", required=True, type=_MANIFEST, help="Manifest CSV.")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option("--gates", "gates_file", type=_MANIFEST, default=None, help="TOML file of gate thresholds ([gates] table).")
@click.option("--max-acc-drop", type=click.FloatRange(0, 100), default=None, help="Max accuracy drop vs reference, percentage points  [default: 1.0]")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None, help="Min top-1 agreement with the reference (fraction)  [default: 0.98]")
@click.option(
    "--covid-sensitivity-not-lower/--no-covid-sensitivity-not-lower",
    default=None,
    help="COVID sensitivity must not drop below the reference's  [default: on]",
)
@click.option("--max-prob-diff", type=click.FloatRange(0, 1), default=None, help="Max |probability difference| vs reference  [default: not gated]")
@click.option("--min-images", type=click.IntRange(min=1), default=None,
              help="Fewest images the split must hold for a verdict; a split lacking a class always fails  [default: 1]")
@click.option(
    "--artifact",
    "artifacts",
    default=None,
    metavar="KEY[,KEY...]",
    help="Artifacts to gate, comma-separated: keras, onnx_fp32, onnx_fp16, onnx_int8, engines (all built), "
    "engine:<file> or an artifact file  [default: all present]",
)
@click.option("--reference", type=click.Choice(["auto", "keras", "onnx_fp32", "stored_fp32"]), default="auto",
              show_default=True,
              help="auto: Keras when TensorFlow is installed, else ONNX FP32, else the FP32 probabilities stored "
                   "in the bundle (reference_probs.json, the shipped reference models).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score a class-balanced subset of N images: a quick look, reported in verify-subset.json, never the published verdict.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True, help="Resamples for the 95% CIs.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@allow_outside_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def verify(
    model: str | None,
    manifest: Path,
    split: str,
    gates_file: Path | None,
    max_acc_drop: float | None,
    min_agreement: float | None,
    covid_sensitivity_not_lower: bool | None,
    max_prob_diff: float | None,
    min_images: int | None,
    artifacts: str | None,
    reference: str,
    limit: int | None,
    batch_size: int,
    bootstrap: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Accuracy regression gate: every artifact of the bundle vs the FP32 reference on held-out images.

    \b
    Writes verify.json and verify.md into the bundle and a summary into bundle.json; exits 3
    when any artifact fails a gate.
    Example:  edgecxr verify -m runs/coronet --data ../shared/data/cxr/manifest.csv --split test
    """

    if artifacts is not None and not _split_list(artifacts):
        raise click.BadParameter("names no artifact; leave it out to verify all present", param_hint="--artifact")
    gates = _gates(
        gates_file,
        max_acc_drop=max_acc_drop,
        min_agreement=min_agreement,
        covid_sensitivity_not_lower=covid_sensitivity_not_lower,
        max_prob_diff=max_prob_diff,
        min_images=min_images,
    )
    bundle = bundle_for(model, writes=True)
    # held from before the bundle is read until after it is written: another command's record survives
    with bundle_lock(bundle, log=_err):
        result = run_gate(
            _load_bundle(bundle),
            manifest,
            split,
            artifacts=_split_list(artifacts) if artifacts is not None else None,
            gates=gates,
            reference=reference,
            limit=limit,
            batch_size=batch_size,
            bootstrap=bootstrap,
            progress=not quiet,
            write=True,
            raise_on_fail=False,
        )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        click.echo(format_text(result), nl=False)
    result.raise_for_failures()
    if not any(a.passed for a in result.artifacts):
        # A gate that compared nothing must not read as a pass in a deployment script.
        raise BundleError(
            f"{bundle}: nothing was verified: no artifact besides the reference could be run here "
            "(export one with `edgecxr export` / `edgecxr calibrate`, or see the skip reasons above)"
        )
