"""A scanner for the node tests: pynetdicom's Storage SCU sending files, in parallel associations."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path


def send(paths: Sequence[Path], port: int, calling: str = "SCANNER", called: str = "EDGECXR",
         acked: dict[str, int] | None = None, lock: threading.Lock | None = None,
         timeout_s: float = 30, pause_s: float = 0.0) -> dict[str, int | str]:
    """C-STORE `paths` in one association; {path: status or 'error: ...'}; acked[uid] = status as answers come.

    `pause_s` between C-STOREs paces the scanner, so a test can act between two answers on any machine."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import (
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        DigitalXRayImageStorageForProcessing,
    )

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for cls in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                DigitalXRayImageStorageForProcessing):
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):  # one context each: no conversion needed
            ae.add_requested_context(cls, syntax)
    out: dict[str, int | str] = {}
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return {str(p): "error: association rejected" for p in paths}
    try:
        for i, path in enumerate(paths):
            if i and pause_s:
                time.sleep(pause_s)
            try:
                status = assoc.send_c_store(Path(path))
            except Exception as exc:  # noqa: BLE001 - the node went away mid-send
                out[str(path)] = f"error: {exc}"
                break
            code = getattr(status, "Status", None)
            out[str(path)] = f"error: no answer ({status!r})" if code is None else int(code)
            if code is not None and acked is not None and lock is not None:
                with lock:
                    acked[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = int(code)
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def send_parallel(batches: Sequence[Sequence[Path]], port: int, acked: dict[str, int] | None = None,
                  **kwargs) -> dict[str, int | str]:
    """One association per batch, all at once; the merged results."""
    results: dict[str, int | str] = {}
    lock = threading.Lock()
    acked = {} if acked is None else acked

    def one(batch: Sequence[Path]) -> None:
        r = send(batch, port, acked=acked, lock=lock, **kwargs)
        with lock:
            results.update(r)

    threads = [threading.Thread(target=one, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results
