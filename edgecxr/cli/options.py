"""Argument types and helpers shared by the commands that take a bundle and a manifest."""

from __future__ import annotations

from pathlib import Path

import click

from edgecxr.stages.gate.config import Gates

_MANIFEST = click.Path(exists=True, dir_okay=False, path_type=Path)


_BUNDLE = click.Path(exists=True, path_type=Path)


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
