"""`edgecxr watch DIR`: the listener's pipeline for a folder that a workstation drops files into.

Each file in DIR (top level; hidden files and names ending .tmp / .part / .partial / .crdownload
are skipped) goes through, in order:

1. **settled**: its size and mtime must stay unchanged for `settle_s` seconds, so a file still
   being copied in is not read half-written (a writer that pauses longer than `settle_s` should
   write under a temporary name and rename, which every copy tool can do);
2. **key**: a DICOM file's key is its SOP Instance UID (a deflated file's too: its header is
   inflated in bounded steps), any other file's the sha256 of its bytes (so the same instance
   re-exported with other bytes, or the same PNG under another name, is the same input); a file
   that cannot be read at all (permissions) gets `unreadable-<hash of its name, size, mtime>`;
3. **done already?** a key with a marker in `.edgecxr-watch/done/` is not processed again: the
   file is moved to processed/ (failed/ when that key failed) and the log says "duplicate"
   (except a DICOM instance whose first copy failed, dropped again with other bytes: a corrected
   copy is processed);
4. **processed**: classified and its results written (`edgecxr.dicom.process.Processor`: the SR for
   a DICOM file, and a JSON result `KEY.json` for every file) into the output folder; then its
   marker is written; then it is moved to processed/ (or failed/ when it could not be read at
   all, with its reason in the JSON result and the marker). A zero-byte file that stayed empty for
   `settle_s` is such a failure, as is an unreadable one.

Exactly once across restarts: the marker is written after the results and before the move, so a
crash before the marker reprocesses the file (same result names, replaced), a crash after it
only moves the file on the next start. A name already in processed/ or failed/ gets the key's
first 12 characters added, so nothing there is overwritten.

Never wedged (issue 22): nothing one file does stops the watch. Any exception for one file is
logged as its error and the file is left alone for the rest of the run (`--once` still ends); an
attempt is recorded in `.edgecxr-watch/attempts/` before a file is processed and removed after its
marker, so a file that killed the process is a suspect at the next start (processed alone, after
the others) and, after `MAX_ATTEMPTS` unfinished attempts, is moved to `DIR/quarantine/` with
`<name>.reason.txt` instead of being processed again.
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
from edgecxr.dicom.process import Destination, Log, Processor, describe, one_line
from edgecxr.dicom.spool import MAX_ATTEMPTS, Attempts
from edgecxr.runtime.prediction import now_utc

#: name endings of files still being written by common tools
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart")
STATE_DIR = ".edgecxr-watch"


class WatchFolder:
    """Poll `folder` every `interval_s`; process settled files in batches (see the module docstring)."""

    def __init__(self, clf: Any, folder: str | Path, out_dir: str | Path, interval_s: float = 1.0,
                 settle_s: float = 2.0, batch_size: int = 8, forward: Destination | None = None, log: Log = print,
                 clock: Callable[[], float] = time.monotonic, max_attempts: int = MAX_ATTEMPTS):
        self.folder = Path(folder)
        if not self.folder.is_dir():  # never created here: a typo must not become an empty watched folder
            raise FileNotFoundError(f"{self.folder} is not a folder")
        self.processed = self.folder / "processed"
        self.failed = self.folder / "failed"
        self.quarantined = self.folder / "quarantine"
        self.state = self.folder / STATE_DIR / "done"
        for d in (self.processed, self.failed, self.state):
            d.mkdir(parents=True, exist_ok=True)
        for stale in self.state.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        self.attempts = Attempts(self.folder / STATE_DIR / "attempts")
        self.max_attempts = max_attempts
        self.processor = Processor(clf, out_dir, forward=forward, json_results=True, batch_size=batch_size)
        self.interval_s, self.settle_s, self.batch_size = interval_s, settle_s, batch_size
        self.log, self.clock = log, clock
        self._seen: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, unchanged since)
        self._stuck: set[str] = set()  # names that raised this run: left alone until the next start
        self._stop = threading.Event()
        self.stats = {"processed": 0, "failed": 0, "duplicates": 0, "quarantined": 0}

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
        todo: list[tuple[str, Path]] = []
        suspects: list[tuple[int, str, Path]] = []
        for path in ready:
            self._seen.pop(path.name, None)
            item = self._guarded(path, self._triage, path, todo)
            if item is None:
                continue
            attempts, key = item
            if attempts:
                suspects.append((attempts, key, path))
            else:
                todo.append((key, path))
        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        batches += [[(key, path)] for _, key, path in sorted(suspects, key=lambda s: s[:2])]  # alone, last
        for batch in batches:
            if self._stop.is_set():
                break
            self._process(batch)
        return bool(ready) or bool(self._seen)

    def _guarded(self, path: Path, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args); an exception is `path`'s error: logged, and the file is left alone for the rest of this run."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - one file never stops the watch
            self._stuck.add(path.name)
            self.log(f"error: {path.name}: {one_line(exc)}; left in place until the next start")
            return None

    def _triage(self, path: Path, todo: list[tuple[str, Path]]) -> tuple[int, str] | None:
        """(unfinished attempts, key) of a file to process, or None when it was a duplicate, quarantined or gone."""
        key = key_of(path)
        if key is None:
            return None  # vanished
        if any(k == key for k, _ in todo) or self._done_before(key, path):
            failed = self._record_status(key) == "failed"
            self._move(path, self.failed if failed else self.processed, key)
            self.stats["duplicates"] += 1
            where = "failed/" if failed else "processed/"
            self.log(f"duplicate {path.name}: {key} was processed before; moved to {where}, not processed again")
            return None
        attempts = self.attempts.count(key)
        if attempts >= self.max_attempts:
            target = self._quarantine(path, key, attempts)
            self.log(f"error: {path.name}: processing never finished in {attempts} attempts; quarantined: {target}")
            return None
        return attempts, key

    def _process(self, todo: list[tuple[str, Path]]) -> None:
        for key, path in todo:
            try:
                self.attempts.begin(key)
            except OSError as exc:  # not counted: it is still processed
                self.log(f"error: {path.name}: cannot record the attempt ({one_line(exc)})")
        try:
            records = self.processor.run(todo)
        except Exception as exc:  # noqa: BLE001 - Processor.run handles every input; this is what it missed
            for _, path in todo:  # the attempt stays counted: MAX_ATTEMPTS such starts quarantine the file
                self._stuck.add(path.name)
                self.log(f"error: {path.name}: processing raised ({one_line(exc)}); left in place")
            return
        for record in records:
            path = Path(record["source"])
            self._guarded(path, self._finish, record)

    def _finish(self, record: dict[str, Any]) -> None:
        key, path = record["key"], Path(record["source"])
        self.attempts.end(key)
        if record.get("retry"):  # the results could not be written: left in place, tried again
            self._stuck.add(path.name)
            self.log(f"error: {path.name}: results not written ({record['results_error']}); will try again")
            return
        failed = record["status"] == "failed"
        record["file"] = path.name
        atomic_write_text(self.state / f"{key}.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        fsync_dir(self.state)
        record["moved_to"] = str(self._move(path, self.failed if failed else self.processed, key))
        self.stats["failed" if failed else "processed"] += 1
        self.log(("error: " if record.get("results_error") else "") + f"{path.name}: " + describe(key, record))

    def _quarantine(self, path: Path, key: str, attempts: int) -> Path:
        self.quarantined.mkdir(exist_ok=True)
        target = self._move(path, self.quarantined, key)
        atomic_write_text(target.with_name(target.name + ".reason.txt"),
                          f"processing began {attempts} times and never finished (the process died or was killed "
                          f"while classifying it)\nkey: {key}\nquarantined_at: {now_utc()}\n"
                          "To try it again, drop a corrected copy (other bytes) into the watched folder.\n")
        self.attempts.end(key)
        self.stats["quarantined"] += 1
        return target

    def _candidates(self) -> list[Path]:
        out = []
        with os.scandir(self.folder) as entries:
            for e in entries:
                name = e.name
                if name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES) or name in self._stuck:
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
            elif now - seen[2] >= self.settle_s:  # an empty file too: it fails, it does not wait forever
                ready.append(path)
        for name in set(self._seen) - present:
            del self._seen[name]
        return ready

    def _record_status(self, key: str) -> str | None:
        try:
            return json.loads((self.state / f"{key}.json").read_text(encoding="utf-8")).get("status")
        except (OSError, ValueError, AttributeError):
            return None

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
    """The SOP Instance UID of a DICOM file (deflated too), else 'sha256-<hex>' of its bytes; None if it is gone.

    A file that exists but cannot be read (permissions, an I/O error) gets 'unreadable-<hex>' of its
    name, size and mtime: it is processed (and fails) once, instead of being seen again forever.
    """
    header = read_header(path, decoded=False)
    if header is not None:
        uid = str(header.get("SOPInstanceUID", "") or "").strip()
        if is_uid(uid):
            return uid
    try:
        return f"sha256-{_hash_file(path)}"
    except FileNotFoundError:
        return None
    except OSError:
        try:
            st = os.stat(path)
        except OSError:
            return None
        ident = f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape")
        return f"unreadable-{hashlib.sha256(ident).hexdigest()}"


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str | None:
    try:
        return _hash_file(path)
    except OSError:
        return None
