"""`edgecxr export`, `edgecxr calibrate`, `edgecxr verify`: from Keras to gated ONNX artifacts.

Thin on purpose (STYLE.md 1): each command parses options and calls one library function
(`edgecxr.export.onnx.export_bundle`, `edgecxr.quantize.calibrate_bundle`,
`edgecxr.verify.run_gate`), imported inside the command so `edgecxr --help` imports none of them.
Errors are `EdgeCXRError`s that the group turns into one line and an exit code: 1 for bad
input, 2 for a missing dependency, 3 when an artifact fails its parity check or the accuracy gate.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgecxr.cli.options import (
    _MANIFEST,
    _load_bundle,
    _split_list,
    allow_outside_option,
    bundle_for,
    model_option,
)
from edgecxr.cli.output import _err
from edgecxr.core.lock import bundle_lock
from edgecxr.data.manifest import SPLITS
from edgecxr.stages.export.onnx import export_bundle


@click.group("export", invoke_without_command=True, subcommand_metavar="[triton [OPTIONS]]")
@model_option("Bundle with a Keras model")
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
@allow_outside_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.pass_context
def export(
    ctx: click.Context,
    model: str | None,
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
    """Export the bundle's Keras model to model.onnx (and model.fp16.onnx), checked against Keras.

    \b
    Parity: ONNX vs Keras on the val split of --data (or random inputs without --data, which
    proves the conversion only); fails (exit 3) above --atol and publishes nothing.
    Example:  edgecxr export -m runs/coronet --data ../shared/data/cxr/manifest.csv
    Triton:   edgecxr export triton --out REPO   (a Triton model repository; see its --help)
    """
    if ctx.invoked_subcommand is not None:
        given = [p.opts[-1] for p in ctx.command.params
                 if ctx.get_parameter_source(p.name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"options before '{ctx.invoked_subcommand}' ({', '.join(given)}) are the ONNX "
                                   f"export's; put them after '{ctx.invoked_subcommand}'")
        return

    path = bundle_for(model)
    # held from before the bundle is read until after it is written: another command's record survives
    with bundle_lock(path, log=_err):
        b = _load_bundle(path)
        if manifest is None and parity_split is None:  # a parity split without --data is refused by export_bundle
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


def _add_subcommands() -> None:
    from edgecxr.cli.triton import triton

    export.add_command(triton)


_add_subcommands()
