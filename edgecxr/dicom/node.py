"""`edgecxr listen`: a DICOM Storage SCP (pynetdicom) that keeps what it acknowledges and answers with an SR.

What happens to one C-STORE (in the association's own thread; pynetdicom runs one per association):

1. only CR, DX for presentation and DX for processing are accepted (any transfer syntax pydicom
   knows but Deflated; one no installed plugin decodes is reported in the SR), from calling AE titles on the
   allow-list when one is given (others are rejected at association time);
2. the SOP Instance UID of the request must be a valid UID, the data set must be well formed
   (every element's, sequence item's and fragment's length fits in what was received:
   `edgecxr.dicom.structure`), and its header must parse and carry the same UID; else the answer
   is 0xC210 "cannot understand" and nothing is kept;
3. the encoded data set (with its file meta) is written to the spool durably (`Spool.accept`:
   fsync and atomic rename, keyed by SOP Instance UID) and only then is Success (0x0000)
   answered; a failed write answers 0xA700 "out of resources" (the sender keeps its copy);
4. a new instance is queued for the worker; one already stored or done is acknowledged and
   not queued again (a re-send is never processed twice).

The worker (`edgecxr.dicom.process.Worker`) classifies from the spool, writes the SR into the
output folder, optionally C-STOREs it to a destination AE, and marks the instance done. On start,
every stored instance not yet done is queued first. SIGINT / SIGTERM: stop accepting
associations, give open ones `grace_s` to finish, abort the rest (nothing they sent without an
answer was acknowledged), finish the batch in hand, exit; what is still queued is on disk and
processed at the next start.
"""

from __future__ import annotations

import io
import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecxr.dicom import require
from edgecxr.dicom.outputs import is_uid
from edgecxr.dicom.process import Destination, Log, Processor, Worker
from edgecxr.dicom.spool import MAX_ATTEMPTS, Spool

#: the storage SOP classes a chest X-ray arrives as: CR, DX for presentation, DX for processing
STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
}

IMPLICIT_VR_LE, EXPLICIT_VR_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"

#: C-STORE statuses this node answers
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC210


class StorageNode:
    """The Storage SCP plus its spool and worker; `start()` returns once it accepts associations."""

    def __init__(self, clf: Any, spool_dir: str | Path, out_dir: str | Path, ae_title: str = "EDGECXR",
                 host: str = "127.0.0.1", port: int = 11112, allowed: Sequence[str] = (),
                 forward: Destination | None = None, batch_size: int = 8, log: Log = print,
                 grace_s: float = 10.0, max_attempts: int = MAX_ATTEMPTS):
        self.pynetdicom = require("pynetdicom", "edgecxr listen")
        require("highdicom", "edgecxr listen")
        if not 0 < len(ae_title) <= 16:
            raise ValueError(f"AE title must be 1 to 16 characters, got {ae_title!r}")
        self.ae_title, self.host, self.port = ae_title, host, port
        self.allowed = [a.strip() for a in allowed if a.strip()]
        self.log = log
        self.grace_s = grace_s
        self.spool = Spool(spool_dir, max_attempts=max_attempts)
        processor = Processor(clf, out_dir, forward=forward, batch_size=batch_size)
        self.worker = Worker(processor, self.spool, log, batch_size)
        self.stats = {"stored": 0, "duplicates": 0, "refused": 0}
        self._stats_lock = threading.Lock()
        self._server: Any = None
        self._ae: Any = None
        self._stopped = threading.Event()

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Queue what a previous run left pending, start the worker and the server; (host, port) it listens on."""
        pynetdicom = self.pynetdicom
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        resumed, suspects = 0, 0
        for key in self.spool.pending():
            attempts = self.spool.attempts(key)
            if attempts >= self.spool.max_attempts:  # it never finished, that many times: it stops the node
                where = self.spool.quarantine(key, f"processing began {attempts} times and never finished "
                                                   "(the process died or was killed while classifying it)")
                self.log(f"error: {key}: processing never finished in {attempts} attempts; quarantined: {where}")
                continue
            self.worker.submit(key, alone=attempts > 0)  # a suspect is processed alone, after the others
            resumed, suspects = resumed + 1, suspects + (attempts > 0)
        if resumed:
            self.log(f"resuming: {resumed} instance(s) received but not yet classified"
                     + (f" ({suspects} whose processing did not finish before: each alone, last)" if suspects else ""))
        self.worker.start()
        ae = pynetdicom.AE(ae_title=self.ae_title)
        # Deflated data sets are not accepted: pydicom inflates one whole to read even its header,
        # before any size is known (data/dicom.py bounds that for files; here it would be unbounded).
        syntaxes = [ts for ts in pynetdicom.ALL_TRANSFER_SYNTAXES if ts != "1.2.840.10008.1.2.1.99"]
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        ae.add_supported_context(pynetdicom.sop_class.Verification)
        ae.require_called_aet = True
        if self.allowed:
            ae.require_calling_aet = self.allowed
        ae.maximum_associations = 32
        handlers = [(pynetdicom.evt.EVT_C_STORE, self._on_store)]
        self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self._ae = ae
        self.host, self.port = self._server.server_address[:2]
        return self.host, self.port

    def serve_forever(self) -> None:
        """start(), then block until SIGINT/SIGTERM (or stop()), then shut down gracefully."""
        previous = {sig: signal.signal(sig, lambda *_: self._stopped.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self._server is None:
                self.start()
            while not self._stopped.wait(0.5):
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self) -> None:
        """Stop accepting, let open associations finish for grace_s, abort the rest, stop the worker."""
        self._stopped.set()
        if self._server is not None:
            self._server.shutdown()
            deadline = time.monotonic() + self.grace_s
            while self._ae.active_associations and time.monotonic() < deadline:
                time.sleep(0.1)
            self._ae.shutdown()
            self._server = None
        self.worker.stop(timeout_s=120)

    # -- C-STORE ---------------------------------------------------------------------------------
    def _on_store(self, event: Any) -> int:
        """Keep the instance durably, then answer; never raises (pynetdicom would answer 0xC211)."""
        calling = _calling_ae(event)
        try:
            uid = str(event.request.AffectedSOPInstanceUID or "").strip()
            data = event.encoded_dataset(include_meta=True)
            problem = self._check(uid, data)
        except Exception as exc:  # noqa: BLE001 - a data set pynetdicom cannot even hand over
            uid, problem = "?", f"unreadable data set ({type(exc).__name__}: {exc})"
        if problem is not None:
            self._count("refused")
            self.log(f"refused {uid[:64]} from {calling}: {problem}")
            return CANNOT_UNDERSTAND
        try:
            new = self.spool.accept(uid, data)
        except (OSError, ValueError) as exc:
            self.log(f"error: {uid} from {calling} not stored ({exc}); answered out of resources")
            return OUT_OF_RESOURCES
        if new:
            self._count("stored")
            self.worker.submit(uid)
            self.log(f"stored {uid} from {calling}")
        else:
            self._count("duplicates")
            self.log(f"duplicate {uid} from {calling}: already {self.spool.state(uid)}, not processed again")
        return SUCCESS

    def _check(self, uid: str, data: bytes) -> str | None:
        """Why an instance is refused before it is kept (None: keep it)."""
        if not is_uid(uid):
            return f"invalid SOP Instance UID {uid[:64]!r}"
        import pydicom

        from edgecxr.dicom.structure import Malformed, check_dataset

        try:
            fh = io.BytesIO(data)
            pydicom.filereader.read_preamble(fh, False)
            meta = pydicom.filereader._read_file_meta_info(fh)
            syntax = str(meta.get("TransferSyntaxUID", "") or "")
            # every element's length must fit: pydicom would read a 2 GB claim as whatever bytes are there
            check_dataset(data, fh.tell(), implicit=syntax == IMPLICIT_VR_LE, little=syntax != EXPLICIT_VR_BE)
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            header_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        except Malformed as exc:
            return f"malformed data set ({str(exc)[:160]})"
        except Exception as exc:  # noqa: BLE001 - any parse failure is a malformed data set
            return f"malformed data set ({type(exc).__name__}: {str(exc)[:160]})"
        if header_uid != uid:
            return f"the data set's SOP Instance UID {header_uid[:64]!r} is not the request's"
        return None

    def _count(self, what: str) -> None:
        with self._stats_lock:
            self.stats[what] += 1


def _calling_ae(event: Any) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip()
    except Exception:  # noqa: BLE001
        return "?"
