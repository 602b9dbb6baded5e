"""Candidate -> check -> publish or reject: the one policy for writing a derived model file.

Every stage that derives a model file (export FP32 and FP16, calibrate INT8, build an engine) writes
it as a candidate beside its final path, checks it, and then either publishes it (an atomic rename
into place, so a reader never sees half a file and a failing file never replaces a good one) or
rejects it: the file is kept as `NAME.rejected.SUFFIX` for inspection, with an optional note of why,
and the final path keeps whatever was published before.

    with Candidate(bundle.default_path("onnx_int8")) as c:
        write(c.path)
        if check(c.path):
            c.publish()
        else:
            c.reject(note={...})

A candidate that is neither published nor rejected (an exception on the way) is deleted on exit.
Companion files that travel with the model (an engine's sidecar, `ENGINE.json`) are moved with it.

A process killed outright (kill -9, a power cut) cannot delete its candidate: the hidden
`.NAME.XXXXXXXX.candidate.SUFFIX` (and `.NAME.XXXXXXXX.tmp` of an atomic write) stays behind. The
next candidate made while this process holds the bundle's lock (`edgecxr.core.lock`) removes such
files older than the lock: with the lock held, no other edgecxr command can be writing them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecxr.core.fileutil import atomic_write_text, file_mode
from edgecxr.core.lock import held_since

#: hidden temporary files of Candidate (with companions) and of atomic_write_bytes (mkstemp's 8 random characters)
_TEMP_FILE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}(\.candidate(\..+)?|\.tmp)$")
#: candidates of this process that are still open (never swept, whatever their age)
_LIVE: set[Path] = set()


def rejected_path(final: str | Path) -> Path:
    """Where a failing file is kept: model.int8.onnx -> model.int8.rejected.onnx, x.engine -> x.rejected.engine."""
    final = Path(final)
    return final.with_name(f"{final.stem}.rejected{final.suffix}")


def sweep_stale(folder: str | Path) -> list[Path]:
    """Remove the temporary files killed runs left in `folder`, if this process holds its bundle's lock.

    Only files older than the lock (and not an open candidate of this process) go: they belong to
    a run that ended before this one started, since every edgecxr command that writes a bundle
    holds its lock. Without the lock nothing is removed. Returns the removed paths.
    """
    folder = Path(folder)
    since = held_since(folder)
    if since is None and (folder.parent / "bundle.json").is_file():
        since = held_since(folder.parent)  # BUNDLE/engines/
    if since is None:
        return []
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        path = Path(entry.path)
        if not _TEMP_FILE.match(entry.name) or any(path.name.startswith(live.name) for live in _LIVE if live.parent == folder):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < since:
                path.unlink()
                removed.append(path)
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


class Candidate:
    """A new model file on its way to `final`.

    Args:
        final: where the file goes when it passes.
        companions: name suffixes of files that belong to it (".json" for an engine's sidecar,
            `ENGINE` + ".json"): written by the stage beside `path`, moved with it.
    """

    def __init__(self, final: str | Path, companions: Sequence[str] = ()):
        self.final = Path(final)
        self.companions = tuple(companions)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        # Same suffix as the final file: backends are chosen by suffix, and the checks run this file.
        sweep_stale(self.final.parent)  # what a killed earlier run left here
        fd, tmp = tempfile.mkstemp(prefix=f".{self.final.stem}.", suffix=f".candidate{self.final.suffix}",
                                   dir=self.final.parent)
        os.close(fd)
        # mkstemp makes it private: the published model gets the mode of the file it replaces, or a new file's
        os.chmod(tmp, file_mode(self.final))
        self.path = Path(tmp)
        _LIVE.add(self.path)
        self.outcome: str | None = None

    def _move(self, dest: Path) -> Path:
        for suffix in self.companions:
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                os.replace(src, dest.with_name(dest.name + suffix))
        os.replace(self.path, dest)
        return dest

    def publish(self) -> Path:
        """Rename the candidate (and its companions) into place; returns the final path."""
        self.outcome = "published"
        return self._move(self.final)

    def reject(self, note: dict[str, Any] | None = None) -> Path:
        """Keep the candidate as NAME.rejected.SUFFIX (and `note` as NAME.rejected.json); returns that path."""
        self.outcome = "rejected"
        dest = self._move(rejected_path(self.final))
        if note is not None:
            text = json.dumps({"rejected": True, **note}, indent=2, sort_keys=True, default=str) + "\n"
            atomic_write_text(dest.with_suffix(".json"), text)
        return dest

    def __enter__(self) -> Candidate:
        return self

    def __exit__(self, *exc: object) -> None:
        _LIVE.discard(self.path)
        if self.outcome is None:
            for suffix in self.companions:
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
