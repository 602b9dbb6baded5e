"""Output helpers every command shares: one-line errors, safe output paths, text safe for a terminal.

`check_output` is the one rule for a path a user gives an output option (`infer --csv`, `bench
--out`, `build --out`, `calibrate --calib-manifest-out`, `data prepare --out`): the command stops
before any work (one `error:` line, exit 2) rather than replace something that is not its output:

  * a symbolic link (writing would either go through it to a file elsewhere, or silently replace
    the link someone made on purpose);
  * something that is not a regular file (a folder, a device, a FIFO);
  * a file the same command reads (an input image, the manifest, the --image of bench), however
    it is spelled (another path, a hard link);
  * a file of a model bundle: bundle.json, the lock, the records the stages write (verify.json,
    evaluation-*.json, ...), anything in its engines/, calibration/ or folds/ folder, a model file;
  * any existing model file (.onnx, .keras, .h5, .engine, .plan) or image (.png, .jpg, .dcm, ...),
    and any file whose content is a DICOM, PNG or JPEG whatever its name (PACS exports are often
    named by their UID, without a suffix): no output of a command is one, so such a file there is
    somebody's data.

A command whose output *is* a model file (`build --out`) names the suffixes it may replace.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

import click

from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.fileutil import atomic_write_bytes
from edgecxr.runtime.results import printable  # noqa: F401 - re-exported: the CLI modules print with it

#: existing files with these suffixes are never replaced by an output option (unless the command says)
MODEL_SUFFIXES = (".onnx", ".keras", ".h5", ".engine", ".plan", ".trt", ".pb", ".tflite")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff", ".gif", ".webp")
#: files a bundle's stages write at its top level (besides the model files and the names bundle.json mentions)
BUNDLE_RECORDS = ("bundle.json", ".bundle.lock", "verify.json", "verify.md", "verify-subset.*", "reference_probs.json",
                  "evaluation-*.json", "confusion*.png", "curves.png", "history.json", "cv.json", "*.rejected.*")
#: a bundle's folders whose every file is the bundle's
BUNDLE_FOLDERS = ("engines", "calibration", "folds", "checkpoints", "ckpt")


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _bundle_of(path: Path) -> tuple[Path, Path] | None:
    """(bundle directory, path relative to it) when `path` lies in a bundle (up to 3 folders down)."""
    for up, folder in enumerate(path.parents):
        if up > 3:
            break
        if (folder / "bundle.json").is_file():
            return folder, path.relative_to(folder)
    return None


def _bundle_file_reason(path: Path) -> str | None:
    found = _bundle_of(path)
    if found is None:
        return None
    folder, rel = found
    name = rel.name
    own = (
        rel.parts[0] in BUNDLE_FOLDERS
        if len(rel.parts) > 1
        else any(fnmatch.fnmatch(name, pattern) for pattern in BUNDLE_RECORDS)
    )
    if not own:
        try:
            mentioned = f'"{name}"' in (text := (folder / "bundle.json").read_text("utf-8", "replace")) or f'/{name}"' in text
        except OSError:
            mentioned = False
        own = mentioned
    return f"is a file of the model bundle {folder}" if own else None


def _same_file(path: Path, inputs: Iterable[str | Path]) -> Path | None:
    for item in inputs:
        try:
            if os.path.samefile(path, item):
                return Path(item)
        except OSError:
            continue
    return None


def output_problem(path: Path, inputs: Iterable[str | Path] = (), replaces: Sequence[str] = ()) -> str | None:
    """Why writing an output to `path` would destroy something, or None when it is safe.

    Args:
        path: the output file.
        inputs: files (or folders) the command reads; the output may not be one of them.
        replaces: suffixes of model files this output may replace (".engine" for `build --out`).
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None  # a new file: nothing to lose (a file in the way of its folder is check_output's to say)
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link; refusing to write through it or replace it (give the real path)"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a device, FIFO or socket); refusing to replace it"
    source = _same_file(path, inputs)
    if source is not None:
        same = "" if Path(os.path.abspath(source)) == Path(os.path.abspath(path)) else f" ({source})"
        return f"is an input of this command{same}; refusing to overwrite it"
    suffix = path.suffix.lower()
    if suffix in replaces:
        return None  # the command's own kind of file (build replaces the engine it builds again)
    reason = _bundle_file_reason(path)
    if reason is not None:
        return reason + "; refusing to overwrite it"
    if suffix in MODEL_SUFFIXES:
        return f"is a model file ({suffix}); refusing to overwrite it"
    if suffix in IMAGE_SUFFIXES:
        return f"is an image ({suffix}); refusing to overwrite it"
    kind = _image_by_content(path)
    if kind is not None:
        return f"is {kind} (by its content, whatever its name); refusing to overwrite it"
    return None


def _image_by_content(path: Path) -> str | None:
    """What image a file holds by its first bytes: a PACS export is often named by its UID, no suffix."""
    from edgecxr.data.io import _is_dicom_head, open_regular
    from edgecxr.data.raster import _JPEG_SOI, _PNG_SIGNATURE

    try:
        with open_regular(path, max_bytes=None) as fh:  # lstat said regular; never block on a swapped-in FIFO
            head = fh.read(132)
    except (OSError, EdgeCXRError):
        return None
    if _is_dicom_head(head):
        return "a DICOM file"
    if head.startswith(_PNG_SIGNATURE):
        return "a PNG image"
    if head.startswith(_JPEG_SOI):
        return "a JPEG image"
    return None


def check_output(
    path: Path | None,
    option: str,
    inputs: Iterable[str | Path] = (),
    replaces: Sequence[str] = (),
) -> None:
    """Fail before the work, not after it, when an output file cannot or must not be written where asked.

    Refuses (click.BadParameter: one `error:` line, exit 2) what `output_problem` finds, a file
    where a folder is needed, and a folder this user cannot write in.
    """
    if path is None:
        return
    problem = output_problem(path, inputs, replaces)
    if problem is not None:
        raise click.BadParameter(f"{printable(path)} {problem}", param_hint=option)
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # atomic_write creates missing folders below the first existing one
    if not folder.is_dir():
        raise click.BadParameter(f"{printable(path)}: {printable(folder)} is a file, not a folder", param_hint=option)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{printable(path)}: no permission to write in {printable(folder)}", param_hint=option)


def encode_output(text: str) -> bytes:
    """UTF-8 bytes of an output file; a file name that was not UTF-8 is written back as its own bytes.

    Python reads such a name as lone surrogates (os.fsdecode's surrogateescape). Writing them back
    with "surrogateescape" keeps the exact bytes, so the row still names the file (a reader opens
    it with the same error handler); replacing them ("backslashreplace") would give valid UTF-8
    that names no file. Anything else that cannot be encoded is backslash-escaped, never an error.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def check_stdout() -> None:
    """Refuse to run a command whose results go to stdout when stdout is closed (`cmd >&-`).

    Python sets `sys.stdout` to None when file descriptor 1 is closed, and `click.echo` then
    writes nothing without a word: the work would be done, its results lost, and the exit code 0.
    An in-memory stream (Click's test runner) has no file descriptor and is fine.

    Raises:
        ArgumentError: stdout is closed (one `error:` line, exit 2, before any work).
    """
    import io
    import sys

    from edgecxr.core.errors import ArgumentError

    closed = sys.stdout is None or getattr(sys.stdout, "closed", False)
    if not closed:
        try:
            os.fstat(sys.stdout.fileno())
        except (io.UnsupportedOperation, ValueError, AttributeError):
            pass  # not backed by a file descriptor
        except OSError:
            closed = True  # EBADF: the descriptor was closed under Python
    if closed:
        raise ArgumentError("standard output is closed, so the results would be lost; redirect it "
                            "(> results.txt, or > /dev/null to discard them) instead of closing it")


def _write_output(path: Path, text: str, option: str) -> None:
    """Atomically write an output file; an OS failure becomes one `error:` line (exit 1)."""
    from edgecxr.cli import os_error_message

    try:
        atomic_write_bytes(path, encode_output(text))
    except OSError as exc:
        raise EdgeCXRError(f"{printable(path)}: could not write the {option} file: {os_error_message(exc)}") from None
