"""build: a TensorRT engine for this GPU, or (--dry-run) every check up to the TensorRT call, on any machine."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecxr.cli.options import _MANIFEST, allow_outside_option, bundle_for, model_option
from edgecxr.cli.output import _err, check_output
from edgecxr.core.artifacts import BY_KEY, MAX_BATCH
from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.lock import bundle_lock
from edgecxr.data.manifest import SPLITS
from edgecxr.runtime.sysinfo import current_platform
from edgecxr.stages.engine.build import build_engine

ENGINE_SUFFIXES = BY_KEY["engine"].suffixes


def _batch_range(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--batch-size is checked as it is parsed, so a bad range is a usage error (exit 2), not a build failure."""
    from edgecxr.stages.engine.profile import BuildError, parse_batch

    if value is None:
        return None
    try:
        lo, opt, hi = parse_batch(value)
    except BuildError:
        raise click.BadParameter(f"{value!r}: expected N, MIN-MAX or MIN-OPT-MAX (e.g. 8 or 1-8)") from None
    if not 1 <= lo <= opt <= hi <= MAX_BATCH:
        raise click.BadParameter(f"{value!r}: need 1 <= MIN <= OPT <= MAX <= {MAX_BATCH}")
    return value


def _engine_out(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """An engine file name: its suffix picks the backend, and its sidecar (OUT.json) must not land on
    another file (`--out runs/x/bundle` would put the sidecar on runs/x/bundle.json)."""
    if value is not None and value.suffix.lower() not in ENGINE_SUFFIXES:
        raise click.BadParameter(f"{value}: an engine file name must end in {' or '.join(ENGINE_SUFFIXES)}")
    return value


# ------------------------------------------------------------------------------------------------
# build
# ------------------------------------------------------------------------------------------------
@click.command()
@model_option("Bundle to build from (a shipped model is copied to the models folder first)")
@click.option("--precision", type=click.Choice(["fp16", "int8"]), help="Engine precision (default: the profile's, else fp16).")
@click.option("--profile", help="Build profile: a TOML path or a shipped profile name: rtx-ampere, gtx16xx-turing, jetson-orin, jetson-orin-nano.")
@click.option("--batch-size", "batch", metavar="N|MIN-MAX|MIN-OPT-MAX", callback=_batch_range,
              help="Batch sizes the engine accepts (e.g. 1-8; OPT is the one TensorRT tunes for)  [default: the profile's]")
@click.option("--min-batch", type=click.IntRange(1), help="Only the smallest batch (the rest from the profile).")
@click.option("--opt-batch", type=click.IntRange(1), help="Only the batch TensorRT tunes kernels for.")
@click.option("--max-batch", type=click.IntRange(1), help="Only the largest batch the engine accepts.")
@click.option("--workspace-mb", type=click.IntRange(16), help="Builder workspace memory limit.")
@click.option("--timing-cache", help="Timing cache file ('' to disable); {gpu} and {trt} are expanded.")
@click.option("--dla-core", type=int, help="Build for this DLA core (Jetson); -1 for the GPU.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Run the accuracy gate on the new engine.")
@click.option("--data", "manifest", type=_MANIFEST, help="Manifest for the gate  [default: the one recorded in the bundle]")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True, help="Split the gate runs on.")
@allow_outside_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), callback=_engine_out, help="Engine path (default: BUNDLE/engines/<model>-<precision>-<gpu>-trt<ver>.engine).")
@click.option("--dry-run", is_flag=True, help="Check everything up to the TensorRT call (operators, Q/DQ, shapes, memory) and print what the build would do; needs no GPU or TensorRT.")
@click.option("--trt-version", "trt_versions", multiple=True, metavar="VERSION",
              help="With --dry-run: TensorRT version(s) to check for, e.g. 8.6 or 10.3 (repeatable)  [default: the profile's lines]")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (the dry-run report, or the built engine's facts).")
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
    verify: bool,
    manifest: Path | None,
    split: str,
    out: Path | None,
    dry_run: bool,
    trt_versions: tuple[str, ...],
    as_json: bool,
) -> None:
    """Build a TensorRT engine for this GPU from the model's FP16 or INT8 ONNX (default: the reference coronet).

    -m/--model is a model name (see `edgecxr models`), a bundle directory or an ONNX file in one.
    For a reference model the engine goes into a writable copy in the models folder, which
    `-m NAME` then uses. Needs TensorRT and an NVIDIA GPU (exit code 2 without them). Writes the
    engine and its .engine.json sidecar (TensorRT version, GPU, precision, hashes, profile),
    records it in bundle.json and runs the accuracy gate on it (exit 3 if it fails) unless
    --no-verify. --batch-size gives the whole range; --min/--opt/--max-batch change one bound of
    the profile's. Engines are built through Polygraphy (pip install 'edgecxr[gpu]').

    --dry-run needs neither: it checks the model's operators against TensorRT's ONNX parser list of
    each targeted version, the Q/DQ rules (INT8), the input against the profile's batch range and
    the workspace against the profile's device memory, and prints what the build would do (exit 1
    if a check fails). Nothing is written.

    \b
    Examples:
      edgecxr build --precision int8
      edgecxr build -m runs/coronet --precision int8 --profile rtx-ampere --batch-size 1-8
      edgecxr build -m cnn-lstm --profile jetson-orin-nano --dry-run --trt-version 10.3
    """
    from edgecxr.stages.engine.profile import BuildError, load_profile, resolve_profile

    if trt_versions and not dry_run:
        raise click.UsageError("--trt-version goes with --dry-run (a real build uses the installed TensorRT)")
    inputs = [p for p in (manifest, profile) if p is not None and Path(p).is_file()]
    check_output(out, "--out", inputs=inputs, replaces=ENGINE_SUFFIXES)
    if out is not None:  # the sidecar written beside the engine, OUT.json
        check_output(out.with_name(out.name + ".json"), "--out", inputs=inputs, replaces=(".json",))

    base = load_profile(profile) if profile else None
    if base is not None and base.description:
        _err(f"profile {base.name}: {base.description}")
    try:
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
    except BuildError as exc:  # the profile itself was checked when it loaded: the options contradict it
        raise click.UsageError(str(exc)) from None

    if dry_run:
        _dry_run(model, settings, trt_versions, as_json)
        return

    def can_build(reference: Path) -> None:
        """Refuse before copying a reference model: no TensorRT or GPU (exit 2), or no such precision."""
        current_platform()
        from edgecxr.core.artifacts import onnx_key
        from edgecxr.core.bundle import Bundle

        if Bundle.load(reference).artifact(onnx_key(settings.precision), must_exist=False) is None:
            raise EdgeCXRError(f"the reference model {reference.name} ships no {settings.precision} ONNX that passed "
                               "the accuracy gate; see `edgecxr models` for its precisions")

    path = bundle_for(model, writes=True, before_copy=can_build)
    if timing_cache and "{" not in timing_cache:  # a literal path: read and rewritten by the build
        cache = Path(timing_cache).expanduser()
        check_output(cache if cache.is_absolute() else path / cache, "--timing-cache", inputs=inputs)
    with bundle_lock(path, log=_err):  # the build records its engine in bundle.json
        result = build_engine(path, settings, out=out, verify=verify, manifest=manifest, split=split, log=_err)
    if as_json:
        side = result.sidecar_data
        click.echo(json.dumps({"engine": str(result.engine), "sidecar": str(result.sidecar),
                               "precision": side.get("precision"), "tensorrt": side.get("tensorrt"),
                               "gate_passed": None if result.gate is None else bool(result.gate.passed)}, indent=2))
    else:
        click.echo(str(result.engine))


def _dry_run(model: str | None, settings: object, trt_versions: tuple[str, ...], as_json: bool) -> None:
    """Print the dry-run report (text or JSON) for the bundle `-m` names; exit 1 when a check failed."""
    from edgecxr.stages.engine.dryrun import dry_run, format_dry_run, raise_for_problems

    path = bundle_for(model, writes=False)  # read only: a reference model is not copied
    try:
        result = dry_run(path, settings, list(trt_versions) or None)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trt-version") from None
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_dry_run(result))
    raise_for_problems(result)
