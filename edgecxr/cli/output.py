"""Output helpers every command shares: one-line errors, and outputs that never overwrite an input."""

from __future__ import annotations

import os
from pathlib import Path

import click

from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.fileutil import atomic_write_text


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _check_output(path: Path | None, option: str) -> None:
    """Fail before the work, not after it, when an output file cannot be created where asked."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # atomic_write creates missing folders below the first existing one
    if not folder.is_dir():
        raise click.BadParameter(f"{path}: {folder} is a file, not a folder", param_hint=option)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{path}: no permission to write in {folder}", param_hint=option)


def _write_output(path: Path, text: str, option: str) -> None:
    """Atomically write an output file; an OS failure becomes one `error:` line (exit 1)."""
    from edgecxr.cli import os_error_message

    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise EdgeCXRError(f"{path}: could not write the {option} file: {os_error_message(exc)}") from None
