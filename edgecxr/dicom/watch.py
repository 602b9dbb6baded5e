"""`edgecxr watch DIR`: the listener's pipeline for a folder that a workstation drops files into.

Each file in DIR (top level; hidden files and names ending .tmp / .part / .partial / .crdownload
are skipped) goes through, in order:

1. **settled**: its size and mtime must stay unchanged for `settle_s` seconds, so a file still
   being copied in is not read half-written (a writer that pauses longer than `settle_s` should
   write under a temporary name and rename, which every copy tool can do);
2. **key**: a DICOM file's key is its SOP Instance UID, any other file's the sha256 of its bytes
   (so the same instance re-exported with other bytes, or the same PNG under another name, is the
   same input);
3. **done already?** a key with a marker in `.edgecxr-watch/done/` is not processed again: the
   file is moved to processed/ and the log says "duplicate" (except a DICOM instance whose first
   copy failed, dropped again with other bytes: a corrected copy is processed);
4. **processed**: classified and its results written (`edgecxr.dicom.process.Processor`: the SR for
   a DICOM file, and a JSON result `KEY.json` for every file) into the output folder; then its
   marker is written; then it is moved to processed/ (or failed/ when it could not be read at
   all, with its reason in the JSON result and the marker).

Exactly once across restarts: the marker is written after the results and before the move, so a
crash before the marker reprocesses the file (same result names, replaced), a crash after it
only moves the file on the next start. A name already in processed/ or failed/ gets the key's
first 12 characters added, so nothing there is overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecxr.core.fileutil import atomic_write_text
from edgecxr.dicom.outputs import fsync_dir, is_uid, read_header
from edgecxr.dicom.process import Destination, Log, Processor, describe

#: name endings of files still being written by common tools
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart")
STATE_DIR = ".edgecxr-watch"


class WatchFolder:
    """Poll `folder` every `interval_s`; process settled files in batches (see the module docstring)."""

    def __init__(self, clf: Any, folder: str | Path, out_dir: str | Path, interval_s: float = 1.0,
                 settle_s: float = 2.0, batch_size: int = 8, forward: Destination | None = None, log: Log = print,
                 clock: Callable[[], float] = time.monotonic):
        self.folder = Path(folder)
        self.processed = self.folder / "processed"
        self.failed = self.folder / "failed"
        self.state = self.folder / STATE_DIR / "done"
        for d in (self.processed, self.failed, self.state):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self.state.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self.processor = Processor(clf, out_dir, forward=forward, json_results=True, batch_size=batch_size)
        self.interval_s, self.settle_s, self.batch_size = interval_s, settle_s, batch_size
        self.log, self.clock = log, clock
        self._seen: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, unchanged since)
        self._stop = threading.Event()
        self.stats = {"processed": 0, "failed": 0, "duplicates": 0}

    def stop(self) -> None:
        self._stop.set()

    def run(self, once: bool = False) -> None:
        """Poll until stop() (or, with `once`, until nothing is left that will settle)."""
        while not self._stop.is_set():
            busy = self.poll()
            if once and not busy and not self._seen:
                return
            self._stop.wait(self.interval_s)

    def poll(self) -> bool:
        """One pass: process the files that have settled; True when any file was processed or is settling."""
        ready = self._settled()
        for start in range(0, len(ready), self.batch_size):
            if self._stop.is_set():
                break
            self._process(ready[start : start + self.batch_size])
        return bool(ready) or bool(self._seen)

    def _candidates(self) -> list[Path]:
        out = []
        with os.scandir(self.folder) as entries:
            for e in entries:
                name = e.name
                if name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES):
                    continue
                if e.is_file(follow_symlinks=False):
                    out.append(Path(e.path))
        return sorted(out)

    def _settled(self) -> list[Path]:
        now, ready, present = self.clock(), [], set()
        for path in self._candidates():
            try:
                st = path.stat()
            except OSError:
                continue
            present.add(path.name)
            sig = (st.st_size, st.st_mtime_ns)
            seen = self._seen.get(path.name)
            if seen is None or seen[:2] != sig:
                self._seen[path.name] = (*sig, now)
            elif now - seen[2] >= self.settle_s and st.st_size > 0:
                ready.append(path)
        for name in set(self._seen) - present:
            del self._seen[name]
        return ready

    def _process(self, paths: list[Path]) -> None:
        todo: list[tuple[str, Path]] = []
        for path in paths:
            self._seen.pop(path.name, None)
            key = key_of(path)
            if key is None:
                continue  # vanished
            if any(k == key for k, _ in todo) or self._done_before(key, path):
                self._move(path, self.processed, key)
                self.stats["duplicates"] += 1
                self.log(f"duplicate {path.name}: {key} was processed before; moved to processed/, not processed again")
                continue
            todo.append((key, path))
        for record in self.processor.run(todo):
            key, path = record["key"], Path(record["source"])
            if record.get("retry"):  # the results could not be written: left in place, tried again
                self.log(f"error: {path.name}: results not written ({record['results_error']}); will try again")
                continue
            failed = record["status"] == "failed"
            record["file"] = path.name
            atomic_write_text(self.state / f"{key}.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
            fsync_dir(self.state)
            record["moved_to"] = str(self._move(path, self.failed if failed else self.processed, key))
            self.stats["failed" if failed else "processed"] += 1
            self.log(f"{path.name}: " + describe(key, record))

    def _done_before(self, key: str, path: Path) -> bool:
        """`key` has a marker, unless it failed and this file has other bytes (a corrected copy of the instance)."""
        marker = self.state / f"{key}.json"
        if not marker.exists():
            return False
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return True
        return record.get("status") != "failed" or record.get("input_sha256") == _sha256(path)

    def _move(self, path: Path, folder: Path, key: str) -> Path:
        target = folder / path.name
        if target.exists():
            target = folder / f"{path.stem}.{key.replace('sha256-', '')[:12]}{path.suffix}"
            n = 1
            while target.exists():
                target = folder / f"{path.stem}.{key.replace('sha256-', '')[:12]}.{n}{path.suffix}"
                n += 1
        os.replace(path, target)
        fsync_dir(folder)
        return target


def key_of(path: Path) -> str | None:
    """The SOP Instance UID of a DICOM file, else 'sha256-<hex>' of its bytes; None if it is gone."""
    header = read_header(path, decoded=False)
    if header is not None:
        uid = str(header.get("SOPInstanceUID", "") or "").strip()
        if is_uid(uid):
            return uid
    digest = _sha256(path)
    return None if digest is None else f"sha256-{digest}"


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
