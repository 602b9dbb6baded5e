"""The node's durable store: every acknowledged instance on disk, every processed one marked, by SOP Instance UID.

Layout under the spool folder:

    received/<SOPInstanceUID>.dcm          the instance as received (DICOM Part 10 bytes)
    done/<SOPInstanceUID>.json             written after its results were written: what became of it
    attempts/<SOPInstanceUID>.json         processing began this many times and never finished
    quarantine/<SOPInstanceUID>.dcm        an instance set aside after `MAX_ATTEMPTS` unfinished attempts,
    quarantine/<SOPInstanceUID>.reason.txt   with why

Why attempts are counted on disk: an instance that kills the process (a decoder that crashes, an
out-of-memory kill) would be the first one classified again after every restart, and kill it
again; the node would never get past it. So an attempt is recorded (fsync) before the worker
starts on an instance and removed when its record is written; at the next start an instance
with unfinished attempts is a suspect, processed alone after the others (so one poison instance
cannot take its batch with it), and one with `MAX_ATTEMPTS` unfinished attempts is moved to
quarantine/ with a reason file instead of being processed. An exception inside the process never
counts (the worker records it as that instance's failure); only an attempt that never ended does.

Why this shape (Orthanc, dcm4che and STYLE.md 14): the receiver answers C-STORE Success only after
`accept` returned, and `accept` returns only after the bytes are in `received/` durably (a temporary
file, fsync, rename, fsync of the folder). So a crash, a power cut or SIGKILL after the
acknowledgement loses nothing: on the next start every instance in `received/` without a `done/`
marker is pending and gets processed. The marker is written after the results, so a crash between
the two reprocesses that instance once more; its results have the same names and UIDs (see
`edgecxr.dicom.sr`), so they are replaced, not doubled.

An instance sent again (same SOP Instance UID) while it is stored or done is acknowledged without
being stored or processed again, with one exception: an instance whose processing failed (its
pixels could not be decoded), sent again with other bytes, replaces the failed copy and is
processed (a corrected re-send must not be swallowed as a duplicate); two associations sending the same instance at the same moment
are serialised by UID, so it is written and queued once. Keys are SOP Instance UIDs checked to be
valid UIDs (digits and dots), so they are safe file names.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from edgecxr.core.fileutil import atomic_write_text
from edgecxr.dicom.outputs import durable_write, fsync_dir, is_uid
from edgecxr.runtime.prediction import now_utc

#: states of a key
STORED, DONE, QUARANTINED = "stored", "done", "quarantined"

#: unfinished processing attempts after which an instance is quarantined instead of processed again
MAX_ATTEMPTS = 3


class Attempts:
    """Unfinished processing attempts per key, durably: `folder/<key>.json` while one is under way or died."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def count(self, key: str) -> int:
        try:
            return int(json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))["attempts"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def begin(self, key: str) -> int:
        n = self.count(key) + 1
        atomic_write_text(self.folder / f"{key}.json", json.dumps({"attempts": n, "began_at": now_utc()}) + "\n")
        fsync_dir(self.folder)
        return n

    def end(self, key: str) -> None:
        (self.folder / f"{key}.json").unlink(missing_ok=True)


class Spool:
    """received/ and done/ under `root`, with the state of every key held in memory behind one lock."""

    def __init__(self, root: str | Path, max_attempts: int = MAX_ATTEMPTS):
        self.root = Path(root)
        self.received = self.root / "received"
        self.done = self.root / "done"
        self.attempts_dir = self.root / "attempts"
        self.quarantine_dir = self.root / "quarantine"
        self.max_attempts = max_attempts
        for folder in (self.received, self.done, self.attempts_dir, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".*.tmp"):  # a write that a crash interrupted: never acknowledged
                stale.unlink(missing_ok=True)
        self._attempts = Attempts(self.attempts_dir)
        self._lock = threading.Lock()
        self._state: dict[str, str | threading.Event] = {}
        for marker in self.done.glob("*.json"):
            self._state[marker.stem] = DONE
        for instance in self.received.glob("*.dcm"):  # incl. a corrected copy of a quarantined one
            self._state.setdefault(instance.stem, STORED)
        for instance in self.quarantine_dir.glob("*.dcm"):
            self._state.setdefault(instance.stem, QUARANTINED)

    def path(self, key: str) -> Path:
        return self.received / f"{key}.dcm"

    def pending(self) -> list[str]:
        """Keys stored and not yet done (what a restart must process): oldest first, suspects last.

        A suspect (processing began and never finished: `attempts`) comes after every other
        instance, the least suspect first, so what killed the process before cannot hold up the rest.
        """
        with self._lock:
            keys = [k for k, v in self._state.items() if v == STORED]
        return sorted(keys, key=lambda k: (self.attempts(k), _mtime(self.path(k)), k))

    # -- attempts and quarantine ---------------------------------------------------------------
    def attempts(self, key: str) -> int:
        """How many times processing of `key` began and never finished."""
        return self._attempts.count(key)

    def begin(self, key: str) -> int:
        """Record (durably) that processing of `key` begins; the number of unfinished attempts, this one included."""
        return self._attempts.begin(key)

    def end(self, key: str) -> None:
        """Processing of `key` ended (recorded, or left pending for a reason of its own): not a suspect."""
        self._attempts.end(key)

    def quarantine(self, key: str, reason: str) -> Path:
        """Move `key` from received/ to quarantine/ with `<key>.reason.txt`; it is not processed again."""
        n = self.attempts(key)
        note = (f"{reason}\nattempts: {n}\nquarantined_at: {now_utc()}\n"
                "To try it again, send a corrected copy (other bytes), or move it back to received/ "
                "and delete attempts/{key}.json.\n").replace("{key}", key)
        atomic_write_text(self.quarantine_dir / f"{key}.reason.txt", note)
        target = self.quarantine_dir / f"{key}.dcm"
        os.replace(self.path(key), target)
        fsync_dir(self.quarantine_dir)
        fsync_dir(self.received)
        self.end(key)
        with self._lock:
            self._state[key] = QUARANTINED
        return target

    def state(self, key: str) -> str | None:
        with self._lock:
            value = self._state.get(key)
        return value if isinstance(value, str) else ("writing" if value is not None else None)

    def accept(self, key: str, data: bytes, wait_s: float = 60.0) -> bool:
        """Store `data` durably under `key`; True when it is new, False for an instance already held.

        Returns only once the bytes are durable (for a duplicate: once the first copy is). Raises
        OSError when they cannot be written (the caller answers failure; nothing was acknowledged)
        and ValueError for a key that is not a UID.
        """
        if not is_uid(key):
            raise ValueError(f"not a valid SOP Instance UID: {key[:80]!r}")
        before = self.state(key)
        retry = (before == DONE and self._failed_with_other_bytes(key, data)) or (
            before == QUARANTINED and _sha256_file(self.quarantine_dir / f"{key}.dcm") != _sha256(data))
        with self._lock:
            current = self._state.get(key)
            if current is None or (retry and current == before):
                current = None
                mine = threading.Event()
                self._state[key] = mine
        if current is not None:
            if isinstance(current, threading.Event):  # another association is writing it right now
                current.wait(wait_s)
                if self.state(key) not in (STORED, DONE):
                    raise OSError(f"instance {key} could not be stored by the association that sent it first")
            return False
        try:
            durable_write(self.path(key), data)
            if retry:  # the corrected copy replaces the failed one and is processed like a new instance
                (self.done / f"{key}.json").unlink(missing_ok=True)
                fsync_dir(self.done)
                self.end(key)
        except BaseException:
            with self._lock:
                if retry:
                    self._state[key] = before
                else:
                    del self._state[key]
            mine.set()
            raise
        with self._lock:
            self._state[key] = STORED
        mine.set()
        return True

    def _failed_with_other_bytes(self, key: str, data: bytes) -> bool:
        """A done instance whose processing failed, sent again with other bytes (a corrected copy)."""
        record = self.record(key)
        if not record or record.get("status") != "failed":
            return False
        return record.get("input_sha256") != _sha256(data)

    def mark_done(self, key: str, record: dict[str, Any]) -> None:
        """Record what became of `key` (after its results were written): it is never processed again."""
        atomic_write_text(self.done / f"{key}.json", json.dumps(record, indent=2, sort_keys=True) + "\n")
        fsync_dir(self.done)
        self.end(key)
        with self._lock:
            self._state[key] = DONE

    def record(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.done / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def counts(self) -> dict[str, int]:
        with self._lock:
            values = list(self._state.values())
        return {"pending": sum(v == STORED for v in values), "done": sum(v == DONE for v in values),
                "quarantined": sum(v == QUARANTINED for v in values)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str | None:
    try:
        return _sha256(path.read_bytes())
    except OSError:
        return None


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
