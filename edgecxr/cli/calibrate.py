"""calibrate."""

from __future__ import annotations

from pathlib import Path

import click

from edgecxr.cli.options import (
    _MANIFEST,
    _gates,
    _given_options,
    _load_bundle,
    _split_list,
    allow_outside_option,
    bundle_for,
    model_option,
)
from edgecxr.cli.output import _err, check_output
from edgecxr.cli.stagelog import StageLog
from edgecxr.core.lock import bundle_lock
from edgecxr.data.manifest import SPLITS
from edgecxr.stages.export.fallback import check_splits
from edgecxr.stages.export.int8 import calibrate_bundle


@click.command("calibrate")
@model_option("Bundle to calibrate (a shipped model is copied to the models folder first)")
@click.option("--data", "manifest", required=True, type=_MANIFEST, help="Manifest CSV with a calib split.")
@click.option("--split", type=click.Choice(SPLITS), default="calib", show_default=True, help="Calibration images.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--percentile", type=click.FloatRange(0, 100, min_open=True), default=99.99, show_default=True, help="For --method percentile.")
@click.option(
    "--keep-float",
    default="",
    help="Comma-separated nodes to leave in float: first-conv, head, lstm, depthwise, activations (every node without a weight), or ONNX node names.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Calibrate on a class-balanced subset of N images.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Run the accuracy gate before publishing.")
@click.option("--verify-split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option("--verify-limit", type=click.IntRange(min=1), default=None, help="Gate on a class-balanced subset (quick checks only).")
@click.option("--gates", "gates_file", type=_MANIFEST, default=None, help="TOML file of gate thresholds.")
@click.option(
    "--calib-manifest-out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder or .csv for the calibration manifest and its .json record  [default: BUNDLE/calibration/]",
)
@click.option("--fallback", type=click.Choice(["none", "auto"]), default="none", show_default=True,
              help="auto: keep the fewest nodes in float for the gate to pass on --select-split (minutes to an hour on a CPU).")
@click.option("--explain", is_flag=True, help="Rank every quantized node by its cost on --select-split; writes a table, JSON and plot.")
@click.option("--select-split", type=click.Choice(SPLITS), default="val", show_default=True,
              help="Where --fallback and --explain choose; never the gate's split.")
@click.option("--rank", type=click.Choice(["error", "agreement"]), default="error", show_default=True,
              help="error: each node's own quantization error, one pass, then bisection; agreement: one pass per node, then greedy.")
@click.option("--scope", type=click.Choice(["all", "weighted"]), default="all", show_default=True,
              help="Nodes --fallback may keep in float: all quantized nodes (activation-only too) or only those with a weight.")
@click.option("--views", type=click.IntRange(min=0), default=0, show_default=True,
              help="Augmented views of each calibration image added to the calibration set.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@allow_outside_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--verbose", "-v", is_flag=True, help="Every step of the fallback search (bisect/trim), not one status line.")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration record (bundle.json's section, with the gate) as JSON.")
def calibrate(
    model: str | None,
    manifest: Path,
    split: str,
    method: str,
    percentile: float,
    keep_float: str,
    limit: int | None,
    verify: bool,
    verify_split: str,
    verify_limit: int | None,
    gates_file: Path | None,
    calib_manifest_out: Path | None,
    fallback: str,
    explain: bool,
    select_split: str,
    rank: str,
    scope: str,
    views: int,
    batch_size: int,
    quiet: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """Calibrate the bundle's FP32 ONNX into a Q/DQ INT8 model (model.int8.onnx) for TensorRT and ONNX Runtime.

    \b
    The INT8 file is published only if it is TensorRT-compatible and passes the accuracy gate on
    --verify-split (exit 3 otherwise; the file is kept as model.int8.rejected.onnx).
    \b
    --fallback auto ranks the quantized nodes by what each costs on --select-split (val), keeps the
    most costly in float until the gate passes there, re-calibrates with them in float, and only
    then runs the publication gate on --verify-split (test), once. --rank error (default) ranks
    every quantized node, activation-only ones included, by its own quantization error in one pass
    and bisects over that ranking (a dozen passes); --rank agreement scores one variant per node.

    \b
    Examples:
      edgecxr calibrate -m runs/coronet --data ../shared/data/cxr/manifest.csv --method percentile
      edgecxr calibrate -m coronet --data ../shared/data/cxr/manifest.csv --fallback auto
    """

    given = _given_options(click.get_current_context())
    if method != "percentile" and "percentile" in given:
        raise click.UsageError(f"--percentile applies to --method percentile, not {method}")
    if not verify and given & {"verify_split", "verify_limit", "gates_file"}:
        raise click.UsageError("--verify-split/--verify-limit/--gates configure the gate that --no-verify skips")
    check_splits(split, verify, verify_split, fallback, explain, select_split)  # before copying a shipped model
    _check_record_out(calib_manifest_out, [p for p in (manifest, gates_file) if p is not None])
    path = bundle_for(model, writes=True)
    # held from before the bundle is read until after it is written: another command's record survives
    log = StageLog(verbose=verbose)
    with bundle_lock(path, log=_err):
        section = calibrate_bundle(
            _load_bundle(path),
            manifest,
            split=split,
            method=method,
            percentile=percentile,
            keep_float=_split_list(keep_float),
            limit=limit,
            verify=verify,
            verify_split=verify_split,
            verify_limit=verify_limit,
            fallback=fallback,
            explain=explain,
            select_split=select_split,
            rank=rank,
            scope=scope,
            views=views,
            log=log,
            gates=_gates(gates_file),
            calib_manifest_out=calib_manifest_out,
            batch_size=batch_size,
            progress=not quiet,
        )
    log.close()
    if as_json:
        import json

        click.echo(json.dumps(section, indent=2, sort_keys=True, default=str))
    else:
        _report(path, section, method, split)


def _check_record_out(out: Path | None, inputs: list[Path]) -> None:
    """--calib-manifest-out: a folder, or a .csv whose .json record goes beside it; neither may land on
    a file that is not the calibration's own (an input, bundle.json, a model, a link)."""
    if out is None:
        return
    if out.suffix.lower() != ".csv":
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise click.BadParameter(f"{out} is not a folder (give a folder, or a file name ending in .csv)",
                                     param_hint="--calib-manifest-out")
        return
    for path in (out, out.with_suffix(".json")):
        check_output(path, "--calib-manifest-out", inputs=inputs)


def _report(bundle_dir: Path, section: dict, method: str, split: str) -> None:
    """What calibrate prints: the published file, the record, the float nodes, the gate."""
    from edgecxr.core.artifacts import BUNDLE_FILES

    click.echo(
        f"wrote {bundle_dir / BUNDLE_FILES['onnx_int8']} ({method}, {section['images']} {split} images; "
        f"calibration manifest {section['manifest']} sha256 {section['manifest_sha256'][:12]})"
    )
    if section.get("excluded_nodes"):
        click.echo(f"  kept in float: {', '.join(section['excluded_nodes'])}")
    fb = section.get("fallback")
    if fb:
        chosen = f"{len(fb['float_nodes'])} node(s) kept in float, " if "float_nodes" in fb else ""
        click.echo(f"  fallback {fb['mode']} on {fb['selected_on']} ({fb['images']} images): {chosen}"
                   f"sensitivity table {', '.join(fb['report'].values())} beside the calibration manifest")
    gate = section.get("gate", {})
    if "skipped" in gate:
        _err(f"warning: accuracy gate skipped ({gate['skipped']})")
    else:
        a = gate["artifacts"]["onnx_int8"]
        click.echo(
            f"  gate on {gate['split']} (n={gate['n']}) vs {gate['reference']}: passed; accuracy {a['accuracy']:.2%}, "
            f"top-1 agreement {a['top1_agreement']:.2%}"
        )
