"""Small file helpers: hashing and atomic writes (a crash never leaves half a JSON/CSV behind)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_mode(path: str | Path) -> int:
    """The permission bits a replacement of `path` should get.

    An existing regular file keeps its own mode (a private 0600 report stays private, a 0644
    bundle.json stays readable); a new file gets what a plain open() would give it (0666 & ~umask).
    A symbolic link is not followed: its target's mode says nothing about the new file.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return 0o666 & ~_umask()
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write via a temp file in the same folder + os.replace, so readers see old or new, never half.

    The new file keeps the mode of the file it replaces (`file_mode`). A symbolic link at `path`
    is replaced by the new file, never written through; callers that take a path from a user
    refuse links first (`edgecxr.cli.output.check_output`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where a folder should be; say which
        blocker = next(p for p in (path.parent, *path.parent.parents) if p.exists())
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(blocker)) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600: give it the replaced file's mode, or a new file's (shared bundles stay readable)
        os.chmod(tmp, file_mode(path))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, errors: str = "strict") -> Path:
    """`atomic_write_bytes` of UTF-8 text; `errors` as for str.encode ("surrogateescape" writes
    undecodable file names back as the bytes they were)."""
    return atomic_write_bytes(path, text.encode("utf-8", errors))


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write pretty, key-sorted JSON (stable diffs of bundle.json)."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def recorded_path(path: str | Path, base: str | Path | None = None) -> str:
    """How a path is written into a record that may be committed or shared (calibration sidecars,
    results JSON): relative to `base` (default: the working folder) when it is below it or below its
    parent (`../shared/data/cxr/manifest.csv` in a checkout), else `~/...` under the home
    folder, else the file name alone. Never this machine's absolute path: the sha256 beside a
    recorded path is what identifies the file; the path only says where it was found."""
    p = Path(path).expanduser().absolute()
    root = Path(base).absolute() if base is not None else Path.cwd()
    rel = Path(os.path.relpath(p, root))
    ups = len(rel.parts) - len(tuple(part for part in rel.parts if part != ".."))
    if ups <= 1:
        return rel.as_posix()
    try:
        return "~/" + p.relative_to(Path.home()).as_posix()
    except ValueError:
        return p.name
