"""`edgecxr export`, `edgecxr calibrate`, `edgecxr verify`: from Keras to gated ONNX artifacts.

Thin on purpose (STYLE.md 1): each command parses options and calls one library function
(`edgecxr.export.onnx.export_bundle`, `edgecxr.quantize.calibrate_bundle`,
`edgecxr.verify.run_gate`), imported inside the command so `edgecxr --help` imports none of them.
Errors are `EdgeCXRError`s that the group turns into one line and an exit code: 1 for bad
input, 2 for a missing dependency, 3 when an artifact fails its parity check or the accuracy gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecxr.data.manifest import SPLITS
from edgecxr.errors import BundleError

_MANIFEST = click.Path(exists=True, dir_okay=False, path_type=Path)
_BUNDLE = click.Path(exists=True, path_type=Path)


def _split_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _load_bundle(path: Path):  # -> Bundle (import kept inside for start-up time)
    from edgecxr.bundle import Bundle

    return Bundle.load(path)


def _gates(gates_file: Path | None, **flags: object):
    """Defaults < TOML file < flags (flags left unset are None and do not override)."""
    from edgecxr.verify import Gates

    gates = Gates.from_toml(gates_file) if gates_file else Gates()
    return gates.with_values(**flags)


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _given_options(ctx: click.Context) -> set[str]:
    """Parameters set on the command line or from the environment (not left at their default)."""
    from click.core import ParameterSource

    return {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
    }


# -- export -----------------------------------------------------------------------------------------


@click.command("export")
@click.argument("bundle", type=_BUNDLE)
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True, help="ONNX opset (>= 13 for INT8 Q/DQ).")
@click.option("--data", "manifest", type=_MANIFEST, help="Manifest CSV: compare Keras and ONNX on held-out images of it.")
@click.option(
    "--parity-split",
    type=click.Choice(SPLITS),
    default=None,
    help="Split of --data for the parity check  [default: val]",
)
@click.option(
    "--parity-images",
    type=click.IntRange(min=1),
    default=None,
    help="With --data: a class-balanced subset of this size (default: whole split). "
    "Without: this many random inputs in the preprocessing's range (default 16).",
)
@click.option("--fp16/--no-fp16", default=True, show_default=True, help="Also write model.fp16.onnx (FP32 I/O).")
@click.option("--optimize/--no-optimize", default=True, show_default=True, help="ONNX Runtime basic offline optimisation (standard ops only).")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-4, show_default=True, help="Max |probability difference| ONNX FP32 vs Keras.")
@click.option("--fp16-atol", type=click.FloatRange(min=0), default=1e-2, show_default=True, help="Max |probability difference| FP16 vs FP32.")
@click.option("--fp16-keep-float", default="", help="Extra op types to keep in FP32 in the FP16 model (comma-separated).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def export(
    bundle: Path,
    opset: int,
    manifest: Path | None,
    parity_split: str | None,
    parity_images: int | None,
    fp16: bool,
    optimize: bool,
    atol: float,
    fp16_atol: float,
    fp16_keep_float: str,
    batch_size: int,
    quiet: bool,
) -> None:
    """Export BUNDLE's Keras model to model.onnx (and model.fp16.onnx), checked against Keras.

    \b
    Parity: ONNX vs Keras on the val split of --data (or random inputs without --data, which
    proves the conversion only); fails (exit 3) above --atol and publishes nothing.
    Example:  edgecxr export runs/coronet --data ../shared/data/cxr/manifest.csv
    """
    from edgecxr.export.onnx import export_bundle

    if parity_split is not None and manifest is None:
        raise click.UsageError("--parity-split needs --data")
    b = _load_bundle(bundle)
    if manifest is None:
        _err("note: no --data given: parity is checked on random inputs, not X-rays")
    section = export_bundle(
        b,
        manifest=manifest,
        parity_split=parity_split,
        parity_images=parity_images,
        opset=opset,
        optimize=optimize,
        atol=atol,
        fp16=fp16,
        fp16_atol=fp16_atol,
        fp16_block_ops=_split_list(fp16_keep_float),
        batch_size=batch_size,
        progress=not quiet,
    )
    p, src = section["parity"], section["parity_inputs"]
    click.echo(f"wrote {b.default_path('onnx_fp32')} (opset {opset}; {section['optimization']})")
    click.echo(
        f"  parity vs Keras on {src['images']} {src.get('split', '') + ' ' if src['source'] == 'manifest' else 'random '}"
        f"images: max |dp| {p['max_abs_diff']:.2e}, top-1 agreement {p['top1_agreement']:.2%}"
    )
    for warning in section.get("warnings", []):
        _err(f"warning: {warning}")
    if "fp16" in section:
        f = section["fp16"]["parity_vs_fp32"]
        click.echo(
            f"wrote {b.default_path('onnx_fp16')}: vs FP32 max |dp| {f['max_abs_diff']:.2e}, "
            f"top-1 agreement {f['top1_agreement']:.2%}"
        )


# -- calibrate --------------------------------------------------------------------------------------


@click.command("calibrate")
@click.argument("bundle", type=_BUNDLE)
@click.option("--data", "manifest", required=True, type=_MANIFEST, help="Manifest CSV with a calib split.")
@click.option("--split", type=click.Choice(SPLITS), default="calib", show_default=True, help="Calibration images.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True)
@click.option("--percentile", type=click.FloatRange(0, 100, min_open=True), default=99.99, show_default=True, help="For --method percentile.")
@click.option(
    "--keep-float",
    default="",
    help="Comma-separated nodes to leave in float: first-conv, head, lstm, depthwise, or ONNX node names.",
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
    help="Folder or .csv for the calibration manifest  [default: calibration/]",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def calibrate(
    bundle: Path,
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
    batch_size: int,
    quiet: bool,
) -> None:
    """Calibrate BUNDLE's FP32 ONNX into a Q/DQ INT8 model (model.int8.onnx) for TensorRT and ONNX Runtime.

    \b
    The INT8 file is published only if it is TensorRT-compatible and passes the accuracy gate on
    --verify-split (exit 3 otherwise; the file is kept as model.int8.rejected.onnx).
    Example:  edgecxr calibrate runs/coronet --data ../shared/data/cxr/manifest.csv --method percentile
    """
    from edgecxr.quantize import calibrate_bundle

    if verify_split == split and verify:
        raise click.UsageError(f"--verify-split {verify_split} is the calibration split; the gate needs held-out images")
    given = _given_options(click.get_current_context())
    if method != "percentile" and "percentile" in given:
        raise click.UsageError(f"--percentile applies to --method percentile, not {method}")
    if not verify and given & {"verify_split", "verify_limit", "gates_file"}:
        raise click.UsageError("--verify-split/--verify-limit/--gates configure the gate that --no-verify skips")
    b = _load_bundle(bundle)
    section = calibrate_bundle(
        b,
        manifest,
        split=split,
        method=method,
        percentile=percentile,
        keep_float=_split_list(keep_float),
        limit=limit,
        verify=verify,
        verify_split=verify_split,
        verify_limit=verify_limit,
        gates=_gates(gates_file),
        calib_manifest_out=calib_manifest_out,
        batch_size=batch_size,
        progress=not quiet,
    )
    click.echo(
        f"wrote {b.default_path('onnx_int8')} ({method}, {section['images']} {split} images; "
        f"calibration manifest {section['manifest']} sha256 {section['manifest_sha256'][:12]})"
    )
    if section.get("excluded_nodes"):
        click.echo(f"  kept in float: {', '.join(section['excluded_nodes'])}")
    gate = section.get("gate", {})
    if "skipped" in gate:
        _err(f"warning: accuracy gate skipped ({gate['skipped']})")
    else:
        a = gate["artifacts"]["onnx_int8"]
        click.echo(
            f"  gate on {gate['split']} (n={gate['n']}) vs {gate['reference']}: passed; accuracy {a['accuracy']:.2%}, "
            f"top-1 agreement {a['top1_agreement']:.2%}"
        )


# -- verify -----------------------------------------------------------------------------------------


@click.command("verify")
@click.argument("bundle", type=_BUNDLE)
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
@click.option(
    "--artifacts",
    default=None,
    help="Comma-separated: keras,onnx_fp32,onnx_fp16,onnx_int8,engines (or engine files)  [default: all present]",
)
@click.option("--reference", type=click.Choice(["auto", "keras", "onnx_fp32", "stored_fp32"]), default="auto",
              show_default=True,
              help="auto: Keras when TensorFlow is installed, else ONNX FP32, else the FP32 probabilities stored "
                   "in the bundle (reference_probs.json, the shipped reference models).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score a class-balanced subset of N images.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--bootstrap", type=click.IntRange(min=0), default=1000, show_default=True, help="Resamples for the 95% CIs.")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def verify(
    bundle: Path,
    manifest: Path,
    split: str,
    gates_file: Path | None,
    max_acc_drop: float | None,
    min_agreement: float | None,
    covid_sensitivity_not_lower: bool | None,
    max_prob_diff: float | None,
    artifacts: str | None,
    reference: str,
    limit: int | None,
    batch_size: int,
    bootstrap: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Accuracy regression gate: every artifact of BUNDLE vs the FP32 reference on held-out images.

    \b
    Writes verify.json and verify.md into the bundle and a summary into bundle.json; exits 3
    when any artifact fails a gate.
    Example:  edgecxr verify runs/coronet --data ../shared/data/cxr/manifest.csv --split test
    """
    from edgecxr.verify import format_text, run_gate

    if artifacts is not None and not _split_list(artifacts):
        raise click.BadParameter("names no artifact; leave it out to verify all present", param_hint="--artifacts")
    gates = _gates(
        gates_file,
        max_acc_drop=max_acc_drop,
        min_agreement=min_agreement,
        covid_sensitivity_not_lower=covid_sensitivity_not_lower,
        max_prob_diff=max_prob_diff,
    )
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
