"""build."""

from __future__ import annotations

from pathlib import Path

import click

from edgecxr.cli.options import model_option
from edgecxr.cli.output import _check_output, _err
from edgecxr.core.errors import EdgeCXRError
from edgecxr.runtime.sysinfo import current_platform
from edgecxr.stages.engine.build import build_engine


# ------------------------------------------------------------------------------------------------
# build
# ------------------------------------------------------------------------------------------------
@click.command()
@model_option("Bundle to build from")
@click.option("--precision", type=click.Choice(["fp16", "int8"]), help="Engine precision (default: the profile's, else fp16).")
@click.option("--profile", help="Build profile: a TOML path or a shipped profile name: rtx-ampere, gtx16xx-turing, jetson-orin.")
@click.option("--batch-size", "batch", help="Batch range the engine accepts: N, MIN-MAX or MIN-OPT-MAX (e.g. 1-8).")
@click.option("--min-batch", type=click.IntRange(1), help="Smallest batch the engine accepts.")
@click.option("--opt-batch", type=click.IntRange(1), help="Batch TensorRT tunes kernels for.")
@click.option("--max-batch", type=click.IntRange(1), help="Largest batch the engine accepts.")
@click.option("--workspace-mb", type=click.IntRange(16), help="Builder workspace memory limit.")
@click.option("--timing-cache", help="Timing cache file ('' to disable); {gpu} and {trt} are expanded.")
@click.option("--dla-core", type=int, help="Build for this DLA core (Jetson); -1 for the GPU.")
@click.option("--no-verify", is_flag=True, help="Skip the accuracy gate on the new engine.")
@click.option("--data", "manifest", type=click.Path(dir_okay=False, path_type=Path), help="Manifest for the gate (default: the bundle's).")
@click.option("--split", default="test", show_default=True, help="Split the gate runs on.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Engine path (default: BUNDLE/engines/<model>-<precision>-<gpu>-trt<ver>.engine).")
def build(
    model: str | None,
    precision: str | None,
    profile: str | None,
    batch: str | None,
    min_batch: int | None,
    opt_batch: int | None,
    max_batch: int | None,
    workspace_mb: int | None,
    timing_cache: str | None,
    dla_core: int | None,
    no_verify: bool,
    manifest: Path | None,
    split: str,
    out: Path | None,
) -> None:
    """Build a TensorRT engine for this GPU from the model's FP16 or INT8 ONNX (default: the reference coronet).

    -m/--model is a model name (see `edgecxr models`) or a bundle directory. For a reference model
    the engine goes into a writable copy in the models folder, which `-m NAME` then uses.
    Needs TensorRT and an NVIDIA GPU (exit code 2 without them). Writes the engine and its
    .engine.json sidecar (TensorRT version, GPU, precision, hashes, profile), records it in
    bundle.json and runs the accuracy gate on it (exit 3 if it fails) unless --no-verify.

    \b
    Examples:
      edgecxr build --precision int8
      edgecxr build -m runs/coronet --precision int8 --profile rtx-ampere --batch-size 1-8
    """
    from edgecxr.runtime import store
    from edgecxr.stages.engine.profile import load_profile, resolve_profile

    if batch is not None and any(v is not None for v in (min_batch, opt_batch, max_batch)):
        raise click.UsageError("give either --batch-size or --min-batch/--opt-batch/--max-batch, not both")
    _check_output(out, "--out")

    base = load_profile(profile) if profile else None
    if base is not None and base.description:
        _err(f"profile {base.name}: {base.description}")
    settings = resolve_profile(
        base,
        precision=precision,
        batch=batch,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
        dla_core=dla_core,
    )
    path = store.resolve(model)
    if store.is_reference(path):
        current_platform()  # no TensorRT or GPU: refuse (exit 2) before copying anything
        from edgecxr.core.artifacts import onnx_key
        from edgecxr.core.bundle import Bundle

        if Bundle.load(path).artifact(onnx_key(settings.precision), must_exist=False) is None:
            raise EdgeCXRError(f"the reference model {path.name} ships no {settings.precision} ONNX that passed the "
                               "accuracy gate; see `edgecxr models` for its precisions")
        path = store.writable(path)
        _err(f"building into {path} (a writable copy of the reference model {path.name})")
    result = build_engine(path, settings, out=out, verify=not no_verify, manifest=manifest, split=split, log=_err)
    click.echo(str(result.engine))
