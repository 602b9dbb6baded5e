"""The pipeline behind `edgecxr listen` and `edgecxr watch`: classify stored files, write their results, mark them.

`Processor.run` takes files already safe on disk and, for each, classifies it (one batch through
`Classifier.predict`, the same decoding rules and input checks as `infer`), writes its DICOM
results (`edgecxr.dicom.outputs`: the SR, named by the source SOP Instance UID), optionally a JSON
result, optionally sends the results to a destination AE by C-STORE, and returns one record per
file. The caller marks a file done only after its record came back, so a crash in between means
that file is processed again, with the same result names and UIDs (replaced, not doubled).

`Worker` runs a Processor in a thread over a queue of keys, a batch at a time: the receiver's
association threads only store and queue, so a slow model never holds up a C-STORE answer.
Nothing one input does stops the worker (issue 22: an exception used to end its thread, after
which every C-STORE was still answered Success and never classified):

* an input that cannot be read or is rejected gets its record (and its SR) with the reason;
* an exception from the model half is retried one input at a time, and an input that still
  raises is recorded as failed (status `failed`, its SR says why);
* results that cannot be built (the source cannot be referenced, a builder raised) make the
  record `failed` with `results_error` and an `error:` log line; results the disk refuses (an
  OSError: disk full, permissions) are not marked done, so that instance stays pending and is
  processed at the next start;
* anything else escaping a batch is that batch's instances' failure: each is retried alone, and
  one that fails `max_attempts` times is quarantined (`Store.quarantine`) with the reason;
* before an instance is processed, the store records the attempt durably (`Store.begin`), so an
  instance that kills the whole process is known at the next start (see `edgecxr.dicom.spool`).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edgecxr.dicom.outputs import durable_write, read_header, write_results
from edgecxr.dicom.sr import status_of
from edgecxr.runtime.prediction import Prediction, now_utc

Log = Callable[[str], None]


@dataclass(frozen=True)
class Destination:
    """A DICOM node results are sent to by C-STORE (the PACS): host, port, its AE title and ours."""

    host: str
    port: int
    ae_title: str
    calling_ae_title: str = "EDGECXR"

    @classmethod
    def parse(cls, text: str, calling: str = "EDGECXR") -> Destination:
        """'AE@host:port' (e.g. PACS@10.0.0.5:104) -> Destination; ValueError with the expected form."""
        ae, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and ae and host and port.isdigit() and 0 < int(port) < 65536 and len(ae) <= 16):
            raise ValueError(f"expected AE@host:port (e.g. PACS@10.0.0.5:104), got {text!r}")
        return cls(host, int(port), ae, calling)


class Processor:
    """Classify files and write their results into `out_dir` (see the module docstring)."""

    def __init__(self, clf: Any, out_dir: str | Path, kinds: Sequence[str] = ("sr",), forward: Destination | None = None,
                 json_results: bool = False, batch_size: int = 8):
        self.clf = clf
        self.out_dir = Path(out_dir)
        self.kinds = tuple(kinds)
        self.forward = forward
        self.json_results = json_results
        self.batch_size = batch_size
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def run(self, items: Sequence[tuple[str, Path]]) -> list[dict[str, Any]]:
        """[(key, path)] -> one record each, in order; never raises for a bad input."""
        if not items:
            return []
        try:
            preds = self.clf.predict([path for _, path in items], batch_size=self.batch_size, workers=0)
            if len(preds) != len(items):
                raise RuntimeError(f"{len(preds)} predictions for {len(items)} inputs")
        except Exception as exc:  # noqa: BLE001 - the model half failed for the batch: find the input that did it
            if len(items) > 1:
                return [rec for item in items for rec in self.run([item])]
            reason = f"classification failed ({type(exc).__name__}: {exc})"[:300]
            preds = [Prediction(str(items[0][1]), error=reason)]
        return [self._record(key, path, pred) for (key, path), pred in zip(items, preds, strict=True)]

    def _record(self, key: str, path: Path, pred: Prediction) -> dict[str, Any]:
        """`_finish`, and whatever it raises as this input's failure (never an exception for the batch)."""
        try:
            return self._finish(key, path, pred)
        except OSError as exc:  # a result the disk refused (the JSON result...): try again later
            return {"key": key, "source": str(path), "status": status_of(pred), "results": [],
                    "results_error": one_line(exc), "retry": True}
        except Exception as exc:  # noqa: BLE001 - recorded as this input's failure, the caller goes on
            return {"key": key, "source": str(path), "status": "failed", "label": None, "probabilities": {},
                    "reason": f"results failed ({one_line(exc)})", "input_sha256": pred.input_sha256,
                    "results": [], "results_error": one_line(exc), "done_at": now_utc()}

    def _finish(self, key: str, path: Path, pred: Prediction) -> dict[str, Any]:
        record: dict[str, Any] = {
            "key": key, "source": str(path), "status": status_of(pred), "label": pred.label,
            "probabilities": pred.probabilities, "reason": pred.error if pred.error is not None else pred.reason,
            "input_sha256": pred.input_sha256, "dicom": pred.dicom, "results": [], "classified_at": pred.time,
        }
        header = read_header(path, decoded=pred.error is None)
        if header is None:
            record["results_note"] = "not a DICOM input: no DICOM result (an SR references a DICOM instance)"
        else:
            try:
                written = write_results(pred, self.clf.audit, header, self.clf.classes, self.out_dir, self.kinds)
            except OSError as exc:  # the folder cannot be written now (disk full...): try again later
                record["results_error"] = one_line(exc)
                record["retry"] = True
            except Exception as exc:  # noqa: BLE001 - the source cannot be referenced, a result may not
                # replace a file, a builder raised: this instance failed, with its reason; a corrected copy
                # (other bytes) is processed again
                record["results_error"] = one_line(exc)
                record["classification"] = record["status"]
                record["status"] = "failed"
                record["reason"] = f"no DICOM result: {one_line(exc)}"
            else:
                record["results"] = [str(p) for p, _ in written]
                if self.forward is not None:
                    record["forwarded"] = forward([p for p, _ in written], self.forward)
        if self.json_results:
            from edgecxr.runtime.results import results_document

            doc = results_document([pred], self.clf.audit, self.clf.classes)
            target = durable_write(self.out_dir / f"{key}.json", (json.dumps(doc, indent=2) + "\n").encode())
            record["results"].append(str(target))
        record["done_at"] = now_utc()
        return record


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line: its message (with its type, unless a ValueError/OSError says it all)."""
    text = str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:limit]


#: transfer syntaxes proposed when forwarding, in order of preference, each in a presentation context of its
#: own (the acceptor picks one syntax per context, so one context with several cannot state a preference):
#: Explicit VR Little Endian, which every archive and tool reads; Implicit; Deflated only when neither is
#: accepted (strict or older archives store it as received, and tools such as dicom3tools cannot read it)
FORWARD_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99")


def forward(paths: Sequence[Path], dest: Destination, timeout_s: float = 30.0) -> str:
    """C-STORE `paths` to `dest` in one association; "sent" or "failed: why" (never raises).

    Each result goes in the most preferred of `FORWARD_SYNTAXES` the destination accepted: the
    files are Explicit VR Little Endian, which pynetdicom sends as they are or converts.
    """
    from edgecxr.dicom import require

    pynetdicom = require("pynetdicom", "sending results to a DICOM node")
    import pydicom

    ae = pynetdicom.AE(ae_title=dest.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    try:
        datasets = [pydicom.dcmread(p) for p in paths]
    except Exception as exc:  # noqa: BLE001 - a result that cannot be read back: reported, not raised
        return f"failed: {one_line(exc)}"
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        for syntax in FORWARD_SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    except Exception as exc:  # noqa: BLE001 - a bad address: reported, not raised
        return f"failed: {exc}"
    if not assoc.is_established:
        return f"failed: association with {dest.ae_title}@{dest.host}:{dest.port} rejected or not reachable"
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None or int(code) not in (0x0000, 0xB000, 0xB007, 0xB006):
                return f"failed: {dest.ae_title} answered C-STORE status {code!r}"
    except Exception as exc:  # noqa: BLE001 - no accepted context, the connection dropped: reported
        return f"failed: {one_line(exc)}"
    finally:
        assoc.release()
    return "sent"


class Store(Protocol):
    """Where the worker's instances are kept (`edgecxr.dicom.spool.Spool`)."""

    max_attempts: int

    def path(self, key: str) -> Path: ...
    def mark_done(self, key: str, record: dict[str, Any]) -> None: ...
    def begin(self, key: str) -> int: ...
    def end(self, key: str) -> None: ...
    def attempts(self, key: str) -> int: ...
    def quarantine(self, key: str, reason: str) -> Path: ...


class Worker(threading.Thread):
    """Process queued keys in batches from `store`; mark each done after its results are written.

    `submit(key, alone=True)` (a suspect: see `edgecxr.dicom.spool`) processes that key in a batch
    of its own. Nothing raised while processing ends the thread (see the module docstring).
    """

    def __init__(self, processor: Processor, store: Store, log: Log, batch_size: int = 8):
        super().__init__(name="edgecxr-worker", daemon=True)
        self.processor = processor
        self.store = store
        self.log = log
        self.batch_size = batch_size
        self._items: deque[tuple[str, bool]] = deque()
        self._cond = threading.Condition()
        self._stop_event = threading.Event()
        self.idle = threading.Event()

    def submit(self, key: str, alone: bool = False) -> None:
        with self._cond:
            self.idle.clear()
            self._items.append((key, alone))
            self._cond.notify()

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the batch in hand and stop; what is still queued stays pending on disk for the next start."""
        self._stop_event.set()
        with self._cond:
            self._cond.notify()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        while not self._stop_event.is_set():
            keys = self._next_batch()
            if not keys:
                continue
            try:
                self._process(keys)
            except Exception as exc:  # noqa: BLE001 - the last line of defence: the worker never dies
                self.log(f"error: processing {', '.join(keys)} raised ({one_line(exc)}); "
                         "they stay pending for the next start")

    def _next_batch(self) -> list[str]:
        """Up to batch_size keys queued together (a key submitted alone is a batch of its own); [] when idle."""
        with self._cond:
            if not self._items:
                self.idle.set()
                self._cond.wait(0.2)
                if not self._items:
                    return []
            key, alone = self._items.popleft()
            keys = [key]
            while not alone and self._items and len(keys) < self.batch_size and not self._items[0][1]:
                keys.append(self._items.popleft()[0])
            return keys

    def _process(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.store.begin(key)
            except OSError as exc:  # not counted: it is still processed
                self.log(f"error: {key}: cannot record the attempt ({one_line(exc)})")
        try:
            records = self.processor.run([(k, self.store.path(k)) for k in keys])
        except Exception as exc:  # noqa: BLE001 - Processor.run handles every input; this is what it missed
            for key in keys:
                self._failed_attempt(key, one_line(exc))
            return
        for key, record in zip(keys, records, strict=True):
            self._record(key, record)

    def _failed_attempt(self, key: str, reason: str) -> None:
        """An attempt on `key` raised: try it again alone, or quarantine it after max_attempts."""
        attempts = self.store.attempts(key)
        if attempts >= self.store.max_attempts:
            where = self.store.quarantine(key, f"processing failed {attempts} times; last: {reason}")
            self.log(f"error: {key}: failed {attempts} times ({reason}); quarantined: {where}")
        else:
            self.log(f"error: {key}: processing raised ({reason}); trying it again alone")
            self.submit(key, alone=True)

    def _record(self, key: str, record: dict[str, Any]) -> None:
        if record.get("retry"):  # not marked done: still pending, processed again at the next start
            self.store.end(key)
            self.log(f"error: {key}: results not written ({record['results_error']}); left pending for the next start")
            return
        try:
            self.store.mark_done(key, record)
        except OSError as exc:  # the marker cannot be written: processed again after a restart
            self.store.end(key)
            self.log(f"error: {key}: cannot record it as done ({one_line(exc)})")
            return
        self.log(("error: " if record.get("results_error") else "") + describe(key, record))


def describe(key: str, record: dict[str, Any]) -> str:
    """One log line for a processed input."""
    status = record["status"]
    if status in ("ok", "abstained"):
        top = record["probabilities"].get(record["label"], 0.0)
        what = f"{status} {record['label']} {top:.3f}"
    else:
        what = f"{status}: {record.get('reason')}"
    results = ", ".join(Path(p).name for p in record["results"]) or record.get("results_note") or ""
    error = record.get("results_error")
    extra = f" (results not written: {error})" if error and error not in str(record.get("reason")) else ""
    sent = f" [forward {record['forwarded']}]" if "forwarded" in record else ""
    return f"{key}: {what} -> {results}{extra}{sent}"
