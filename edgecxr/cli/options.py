"""Argument types and helpers shared by the commands that take a bundle and a manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgecxr.stages.gate.config import Gates

_MANIFEST = click.Path(exists=True, dir_okay=False, path_type=Path)

FIX_ORIENTATION_HELP = ("Turn a film the orientation gate finds turned, flipped or inverted upright and classify it "
                        "(said in each result's `orientation`), instead of rejecting it (docs/SAFETY.md).")


def input_rules(no_input_checks: bool, fix_orientation: bool) -> Any:
    """The InputRules that --no-input-checks and --fix-orientation ask for (None: no checks), for every command."""
    from dataclasses import replace

    from edgecxr.runtime.input_checks import DEFAULT_RULES

    if fix_orientation and no_input_checks:
        raise click.UsageError("--fix-orientation needs the input checks (the orientation gate is one); drop one")
    if no_input_checks:
        return None
    return replace(DEFAULT_RULES, orientation="fix") if fix_orientation else DEFAULT_RULES


def _allow_outside(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """Set the manifest rule for the whole command: its stages read the manifest deep inside."""
    from edgecxr.data.manifest import outside_allowed

    ctx.with_resource(outside_allowed(value))  # undone when the command's context closes
    return value


#: `--allow-outside`: every command that reads a manifest accepts rows outside its folder only when asked
allow_outside_option = click.option(
    "--allow-outside", is_flag=True, callback=_allow_outside, expose_value=False, is_eager=True,
    help="Accept manifest rows outside the manifest's folder (absolute paths, '..'), e.g. from `data prepare --link`.",
)

def _split_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _load_bundle(path: Path):  # -> Bundle (import kept inside for start-up time)
    from edgecxr.core.bundle import Bundle

    return Bundle.load(path)


def _gates(gates_file: Path | None, **flags: object):
    """Defaults < TOML file < flags (flags left unset are None and do not override)."""

    gates = Gates.from_toml(gates_file) if gates_file else Gates()
    return gates.with_values(**flags)


def _given_options(ctx: click.Context) -> set[str]:
    """Parameters set on the command line or from the environment (not left at their default)."""
    from click.core import ParameterSource

    return {
        name
        for name in ctx.params
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
    }


def model_option(what: str = "Model") -> Any:
    """`-m/--model`, the one way every command names its model."""
    return click.option(
        "-m", "--model", "model", default=None, metavar="NAME|PATH",
        help=f"{what}: a model name (see `edgecxr models`), a bundle directory or a model file  [default: coronet]",
    )


def bundle_for(model: str | None, writes: bool = False, before_copy: Callable[[Path], None] | None = None) -> Path:
    """The bundle directory `-m` names (a model file inside a bundle names its bundle).

    A command that writes into it (`writes`) gets a writable copy of a shipped reference model (in
    the models folder) instead of the installed package; `before_copy(reference_dir)` may refuse
    first, so nothing is copied for a run that cannot work.
    """
    from edgecxr.runtime import store

    path = store.resolve(model)
    if path.is_file():
        if not (path.parent / "bundle.json").is_file():
            raise click.BadParameter(f"{path} is a model file outside a bundle; this command needs a bundle",
                                     param_hint="-m/--model")
        path = path.parent
    if writes and store.is_reference(path):
        if before_copy is not None:
            before_copy(path)
        name = path.name
        path = store.writable(path)
        click.echo(f"working in {path} (a writable copy of the reference model {name})", err=True)
    return path
