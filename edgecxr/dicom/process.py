"""The pipeline behind `edgecxr listen` and `edgecxr watch`: classify stored files, write their results, mark them.

`Processor.run` takes files already safe on disk and, for each, classifies it (one batch through
`Classifier.predict`, the same decoding rules and input checks as `infer`), writes its DICOM
results (`edgecxr.dicom.outputs`: the SR, named by the source SOP Instance UID), optionally a JSON
result, optionally sends the results to a destination AE by C-STORE, and returns one record per
file. The caller marks a file done only after its record came back, so a crash in between means
that file is processed again, with the same result names and UIDs (replaced, not doubled).

`Worker` runs a Processor in a thread over a queue of keys, a batch at a time: the receiver's
association threads only store and queue, so a slow model never holds up a C-STORE answer.
Nothing one input does stops the worker: an input that cannot be read, rejected or whose report
cannot be made gets its record with the reason; one whose results cannot be written (an OSError:
disk full, permissions) is not marked done, so it stays pending and is processed at the next start; an exception from the model half is retried
one input at a time, and an input that still raises is recorded as failed.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.dicom.outputs import durable_write, read_header, write_results
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
        except Exception:  # noqa: BLE001 - the model half failed for the batch: find the input that did it
            if len(items) == 1:
                raise
            return [rec for item in items for rec in self._run_one(item)]
        return [self._finish(key, path, pred) for (key, path), pred in zip(items, preds, strict=True)]

    def _run_one(self, item: tuple[str, Path]) -> list[dict[str, Any]]:
        try:
            return self.run([item])
        except Exception as exc:  # noqa: BLE001 - recorded, the worker goes on
            pred = Prediction(str(item[1]), error=f"classification failed ({type(exc).__name__}: {exc})"[:300])
            return [self._finish(item[0], item[1], pred)]

    def _finish(self, key: str, path: Path, pred: Prediction) -> dict[str, Any]:
        from edgecxr.dicom.sr import status_of

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
            except ValueError as exc:  # the source cannot be referenced, or a result may not replace a file
                record["results_error"] = str(exc)
            except OSError as exc:  # the folder cannot be written now (disk full...): try again later
                record["results_error"] = str(exc)
                record["retry"] = True
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


def forward(paths: Sequence[Path], dest: Destination, timeout_s: float = 30.0) -> str:
    """C-STORE `paths` to `dest` in one association; "sent" or "failed: why" (never raises)."""
    from edgecxr.dicom import require

    pynetdicom = require("pynetdicom", "sending results to a DICOM node")
    import pydicom

    ae = pynetdicom.AE(ae_title=dest.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    datasets = [pydicom.dcmread(p) for p in paths]
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class)
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
    finally:
        assoc.release()
    return "sent"


class Worker(threading.Thread):
    """Process queued keys in batches: path_of(key) -> file; done(key, record) after each result is written."""

    def __init__(self, processor: Processor, path_of: Callable[[str], Path], done: Callable[[str, dict], None],
                 log: Log, batch_size: int = 8):
        super().__init__(name="edgecxr-worker", daemon=True)
        self.processor = processor
        self.path_of = path_of
        self.done = done
        self.log = log
        self.batch_size = batch_size
        self.queue: queue.Queue[str] = queue.Queue()
        self._stop_event = threading.Event()
        self.idle = threading.Event()

    def submit(self, key: str) -> None:
        self.idle.clear()
        self.queue.put(key)

    def stop(self, timeout_s: float | None = None) -> None:
        """Finish the batch in hand and stop; what is still queued stays pending on disk for the next start."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout_s)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                keys = [self.queue.get(timeout=0.2)]
            except queue.Empty:
                self.idle.set()
                continue
            while len(keys) < self.batch_size:
                try:
                    keys.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                records = self.processor.run([(k, self.path_of(k)) for k in keys])
            except Exception as exc:  # noqa: BLE001 - one input raised on its own: recorded, the node goes on
                records = [self.processor._run_one((k, self.path_of(k)))[0] for k in keys]
                self.log(f"error: a batch raised ({type(exc).__name__}: {exc}); processed one by one")
            for key, record in zip(keys, records, strict=True):
                if record.get("retry"):  # not marked done: still pending, processed again at the next start
                    self.log(f"error: {key}: results not written ({record['results_error']}); "
                             "left pending for the next start")
                    continue
                try:
                    self.done(key, record)
                except OSError as exc:  # the marker cannot be written: processed again after a restart
                    self.log(f"error: {key}: cannot record it as done ({exc})")
                    continue
                self.log(describe(key, record))


def describe(key: str, record: dict[str, Any]) -> str:
    """One log line for a processed input."""
    status = record["status"]
    if status in ("ok", "abstained"):
        top = record["probabilities"].get(record["label"], 0.0)
        what = f"{status} {record['label']} {top:.3f}"
    else:
        what = f"{status}: {record.get('reason')}"
    results = ", ".join(Path(p).name for p in record["results"]) or record.get("results_note") or ""
    extra = f" (results not written: {record['results_error']})" if record.get("results_error") else ""
    sent = f" [forward {record['forwarded']}]" if "forwarded" in record else ""
    return f"{key}: {what} -> {results}{extra}{sent}"
