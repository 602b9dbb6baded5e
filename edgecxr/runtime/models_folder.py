"""Publishing a whole model folder into the models folder: build it aside, rename it into place, one writer at a time.

Why a module of its own: registering a model (`store.add`), copying a reference model to make it
writable (`store.writable`) and any later writer of the models folder must agree on one protocol,
or a kill, a full disk or two processes at once leave a half-written model under a name. The
protocol: hold the models folder's lock (`publishing`), build in a hidden `.NAME.tmp-HEX` folder
on the same file system, fsync, rename into place (an old model is set aside and removed after),
and sweep what killed publishers left behind, under the same lock. (core/publish.py is the
other half: one derived file inside a bundle, candidate -> check -> publish or reject.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from edgecxr.core.bundle import BUNDLE_FILE
from edgecxr.core.lock import bundle_lock

#: `bundle_lock` is re-entrant per process; this keeps two threads of one process apart too
_PUBLISH_THREADS = threading.Lock()
_TMP, _OLD = ".tmp-", ".old-"
#: `.NAME.tmp-HEX` (being built), `.NAME.old-HEX` (set aside while replaced), `.NAME.tmp` (older versions)
_LEFTOVER = re.compile(r"^\.(?P<name>[a-z0-9][a-z0-9._-]{0,63})(?P<kind>\.tmp|\.tmp-[0-9a-f]+|\.old-[0-9a-f]+)$")


@contextlib.contextmanager
def publishing(dest: Path) -> Iterator[None]:
    """Hold the models folder's lock (and this process's) while `dest` is checked and published."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _PUBLISH_THREADS, bundle_lock(dest.parent):
        sweep(dest.parent)
        yield


def sweep(folder: Path) -> None:
    """Clear what processes killed while publishing left in the models folder (only ever under its lock,
    which every publisher holds: so no one is building now, and every leftover is stale).

    A kill between the two renames of a replacement leaves no model and the old one aside: it is put
    back. Every other leftover (a half-built folder, an old model already replaced) is removed.
    """
    for leftover in sorted(folder.iterdir()):
        found = _LEFTOVER.match(leftover.name)
        if not found:
            continue
        dest = folder / found["name"]
        if found["kind"].startswith(_OLD) and not os.path.lexists(dest) and (leftover / BUNDLE_FILE).is_file():
            os.rename(leftover, dest)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


def publish(dest: Path, build: Callable[[Path], None]) -> None:
    """Build a model folder with `build(tmp)` in a hidden folder beside `dest`, then rename it to `dest`.

    Called under `publishing(dest)`. An existing `dest` is renamed aside first and removed after
    the new folder is in place (put back if that rename fails), so `dest` never holds a mix of the
    two. The temporary folder is inside the models folder (the same file system, so the rename is
    atomic) and is removed on any failure, a full disk included.
    """
    tmp = dest.with_name(f".{dest.name}{_TMP}{secrets.token_hex(4)}")
    tmp.mkdir()  # (not mkdtemp: the model folder gets the usual mode, not 0700)
    try:
        build(tmp)
        fsync_folder(tmp)
        if dest.exists() or dest.is_symlink():
            old = dest.with_name(f".{dest.name}{_OLD}{secrets.token_hex(4)}")
            os.rename(dest, old)
            try:
                os.rename(tmp, dest)
            except BaseException:
                os.rename(old, dest)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dest)
        fsync_folder(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_file(src: Path, dst: Path) -> str:
    """Copy `src` to the new file `dst` (fsynced); returns the sha256 of the bytes written."""
    digest = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest()


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries durable before it is renamed (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
