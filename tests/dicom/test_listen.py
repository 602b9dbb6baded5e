"""`edgecxr listen` (issue 14, item 3): pynetdicom's StoreSCU against the node on 127.0.0.1.

Done when: concurrent associations each yield exactly one SR per image that highdicom reads back
with the right referenced UIDs and probabilities; SIGKILL mid-batch loses no acknowledged image; a
malformed data set is refused or reported without stopping the node; a re-send is not processed
twice. The default run sends 3 associations of 4 images; the `slow` test sends the 10 x 20 of the
issue (highdicom builds and parses an SR in tenths of a second on a busy CPU, 200 of them do not
fit a default run).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest

from dicom.dicomfiles import cxr_dataset, cxr_files, source_pngs, write
from dicom.node_proc import NodeProcess, wait_until
from edgecxr import Classifier

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from dicom.scu import send, send_parallel  # noqa: E402
from edgecxr.dicom.node import CANNOT_UNDERSTAND, StorageNode  # noqa: E402
from edgecxr.dicom.sr import read_sr  # noqa: E402


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def check_reports(out: Path, files: list[Path], tiny_model: Path) -> None:
    """Exactly one SR per file, referencing it, with the probabilities the classifier gives that file."""
    reports = sorted(out.glob("*.sr.dcm"))
    assert len(reports) == len(files)
    with Classifier.load(tiny_model) as clf:
        expected = {p.dicom["SOPInstanceUID"]: p for p in clf.predict(files, workers=0)}
    headers = {uid_of(f): pydicom.dcmread(f, stop_before_pixels=True) for f in files}
    for path in reports:
        got = read_sr(path)
        uid = got.referenced["SOPInstanceUID"]
        assert path.name == f"{uid}.sr.dcm"
        src = headers.pop(uid)
        assert got.referenced["StudyInstanceUID"] == src.StudyInstanceUID
        assert got.referenced["SeriesInstanceUID"] == src.SeriesInstanceUID
        assert got.status == "ok" and got.label == expected[uid].label
        assert got.probabilities == pytest.approx(expected[uid].probabilities, abs=1e-6)
    assert not headers


def run_concurrent(tmp_path: Path, tiny_model: Path, associations: int, per: int) -> None:
    files = cxr_files(tmp_path / "in", associations * per)
    out = tmp_path / "reports"
    with NodeProcess(["listen", "-m", str(tiny_model), "--spool", "spool", "--out", "reports", "--port", "0",
                      "--allow", "SCANNER"], tmp_path) as node:
        port = node.port()
        results = send_parallel([files[i * per:(i + 1) * per] for i in range(associations)], port)
        assert set(results.values()) == {0}, results
        wait_until(lambda: len(list((tmp_path / "spool" / "done").glob("*.json"))) == len(files),
                   what="every instance classified")
        assert node.terminate() == 0
    assert any(line.startswith("stopped:") for line in node.lines)
    check_reports(out, files, tiny_model)


def test_concurrent_associations_one_sr_per_image(tmp_path, tiny_model):
    run_concurrent(tmp_path, tiny_model, associations=3, per=4)


@pytest.mark.slow
def test_ten_associations_of_twenty(tmp_path, tiny_model):
    run_concurrent(tmp_path, tiny_model, associations=10, per=20)


def test_sigkill_mid_batch_loses_no_acknowledged_image(tmp_path, tiny_model):
    files = cxr_files(tmp_path / "in", 8)
    args = ["listen", "-m", str(tiny_model), "--spool", "spool", "--out", "reports", "--port", "0"]
    acked: dict[str, int] = {}
    with NodeProcess(args, tmp_path) as node:
        port = node.port()
        import threading

        # short timeouts: after the kill, a C-STORE in flight waits for an answer that never comes;
        # a paced scanner (0.5 s between C-STOREs), so the kill lands mid-batch on a fast machine too
        sender = threading.Thread(target=send_parallel, args=([files[:4], files[4:]], port, acked),
                                  kwargs={"timeout_s": 3, "pause_s": 0.5})
        sender.start()
        wait_until(lambda: len(acked) >= 2, what="the first acknowledgements")
        node.kill()  # SIGKILL: no shutdown code runs
        sender.join(60)
    acknowledged = {uid for uid, status in acked.items() if status == 0}
    assert 2 <= len(acknowledged) < 8, "the kill must land mid-batch"
    done_before = {p.stem for p in (tmp_path / "spool" / "done").glob("*.json")}
    with NodeProcess(args, tmp_path) as node:
        port = node.port()
        wait_until(lambda: acknowledged <= {p.stem for p in (tmp_path / "spool" / "done").glob("*.json")},
                   what="every acknowledged instance classified after the restart")
        # the scanner sends the whole batch again: nothing is processed twice, the rest is
        results = send_parallel([files], port)
        assert set(results.values()) == {0}
        wait_until(lambda: len(list((tmp_path / "spool" / "done").glob("*.json"))) == 8, what="all classified")
        assert node.terminate() == 0
    processed_again = [line for line in node.lines if line.split(":")[0] in done_before and "->" in line]
    assert processed_again == [], "an instance done before the kill was processed again"
    duplicates = [line for line in node.lines if line.startswith("duplicate ")]
    assert len(duplicates) >= len(acknowledged)
    check_reports(tmp_path / "reports", files, tiny_model)


def test_malformed_and_undecodable_data_sets_do_not_stop_the_node(tmp_path, tiny_model):
    """Garbage after a valid file meta is refused (0xC210); truncated pixels are reported in an SR; the node goes on."""
    png = source_pngs(1)[0]
    good = write(cxr_dataset(png), tmp_path / "good.dcm")
    truncated = cxr_dataset(png)
    truncated.PixelData = truncated.PixelData[:1000]
    truncated = write(truncated, tmp_path / "truncated.dcm")
    garbage = _garbage_after_uids(tmp_path / "garbage.dcm")
    with Classifier.load(tiny_model) as clf:
        node = StorageNode(clf, tmp_path / "spool", tmp_path / "out", port=0, log=lambda line: None)
        _, port = node.start()
        try:
            from pynetdicom import _config

            _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are, unparsed
            try:
                results = send([garbage], port)
            finally:
                _config.STORE_SEND_CHUNKED_DATASET = False
            results.update(send([truncated, good, good], port))
            assert results[str(garbage)] == CANNOT_UNDERSTAND
            assert results[str(truncated)] == 0 and results[str(good)] == 0
            wait_until(lambda: node.spool.counts()["done"] == 2, what="both instances done")
        finally:
            node.stop()
    assert node.stats == {"stored": 2, "duplicates": 1, "refused": 1}
    report = read_sr(tmp_path / "out" / f"{uid_of(truncated)}.sr.dcm")
    assert report.status == "failed" and "truncated DICOM pixel data" in report.reason
    assert read_sr(tmp_path / "out" / f"{uid_of(good)}.sr.dcm").status == "ok"
    record = json.loads((tmp_path / "spool" / "done" / f"{uid_of(truncated)}.json").read_text())
    assert record["status"] == "failed" and record["results"]


def test_allow_list_and_forwarding(tmp_path, tiny_model):
    """Only allowed calling AE titles get in; each SR is C-STOREd to the destination node."""
    [image] = cxr_files(tmp_path / "in", 1)
    with Classifier.load(tiny_model) as clf:
        pacs = _pacs(tmp_path / "pacs")
        pacs_port = pacs.server_address[1]
        from edgecxr.dicom.process import Destination

        node = StorageNode(clf, tmp_path / "spool", tmp_path / "out", port=0, allowed=["SCANNER"],
                           forward=Destination("127.0.0.1", pacs_port, "PACS"), log=lambda line: None)
        _, port = node.start()
        try:
            assert set(send([image], port, calling="INTRUDER").values()) == {"error: association rejected"}
            assert send([image], port, calling="SCANNER") == {str(image): 0}
            wait_until(lambda: node.spool.counts()["done"] == 1, what="classified")
        finally:
            node.stop()
            pacs.shutdown()
    record = node.spool.record(uid_of(image))
    assert record["forwarded"] == "sent"
    [stored] = list((tmp_path / "pacs").iterdir())
    assert read_sr(stored).referenced["SOPInstanceUID"] == uid_of(image)


def _pacs(folder: Path, syntaxes: list[str] | None = None, received: list[str] | None = None):
    """A destination Storage SCP (pynetdicom) that keeps every SR it gets; `syntaxes` in its order of preference,
    `received` gets the transfer syntax of each C-STORE."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage

    folder.mkdir()

    def on_store(event):
        if received is not None:
            received.append(str(event.context.transfer_syntax))
        ds = event.dataset
        ds.file_meta = event.file_meta
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(ComprehensiveSRStorage, *([syntaxes] if syntaxes else []))
    return ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])


def _garbage_after_uids(path: Path) -> Path:
    """A valid file meta, SOP Class and Instance UIDs, then a sequence of junk: a data set that cannot be parsed."""
    import struct

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import generate_uid

    def element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value

    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buf = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(buf, meta, enforce_standard=True)
    padded = uid.encode() + b"\0" * (len(uid) % 2)
    body = element(8, 0x16, b"UI", b"1.2.840.10008.5.1.4.1.1.1.1\0") + element(8, 0x18, b"UI", padded)
    junk = struct.pack("<HH", 0x40, 0xA730) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF) + b"\xde\xad" * 40
    path.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + body + junk)
    return path


def test_results_that_cannot_be_written_stay_pending(tmp_path, tiny_model):
    """An SR the disk refuses (here: a file where the reports folder should be) is not marked done: a restart does it."""
    [image] = cxr_files(tmp_path / "in", 1)
    out = tmp_path / "out"
    lines: list[str] = []
    with Classifier.load(tiny_model) as clf:
        node = StorageNode(clf, tmp_path / "spool", out, port=0, log=lines.append)
        _, port = node.start()
        try:
            out.rmdir()
            out.write_text("in the way")
            assert send([image], port) == {str(image): 0}
            wait_until(lambda: any("left pending" in line for line in lines), what="the failed write")
        finally:
            node.stop()
        assert node.spool.pending() == [uid_of(image)]
        out.unlink()
        node = StorageNode(clf, tmp_path / "spool", out, port=0, log=lines.append)
        node.start()
        try:
            wait_until(lambda: node.spool.counts()["done"] == 1, what="done after the restart")
        finally:
            node.stop()
    assert read_sr(out / f"{uid_of(image)}.sr.dcm").status == "ok"


def test_a_corrected_copy_of_a_failed_instance_is_processed(tmp_path, tiny_model):
    """Same SOP Instance UID: a broken copy fails, the corrected one is processed, a third copy is a duplicate."""
    ds = cxr_dataset(source_pngs(1)[0])
    good = write(ds, tmp_path / "good.dcm")
    broken = pydicom.dcmread(good)
    broken.PixelData = broken.PixelData[:500]
    broken = write(broken, tmp_path / "broken.dcm")
    with Classifier.load(tiny_model) as clf:
        node = StorageNode(clf, tmp_path / "spool", tmp_path / "out", port=0, log=lambda line: None)
        _, port = node.start()
        try:
            assert send([broken], port) == {str(broken): 0}
            wait_until(lambda: node.spool.counts()["done"] == 1, what="the broken copy done")
            assert node.spool.record(ds.SOPInstanceUID)["status"] == "failed"
            assert send([broken, good], port) == {str(broken): 0, str(good): 0}
            wait_until(lambda: (node.spool.record(ds.SOPInstanceUID) or {}).get("status") == "ok", what="reprocessed")
            assert send([good], port) == {str(good): 0}
        finally:
            node.stop()
    assert node.stats == {"stored": 2, "duplicates": 2, "refused": 0}
    assert read_sr(tmp_path / "out" / f"{ds.SOPInstanceUID}.sr.dcm").status == "ok"


def test_an_anonymised_instance_then_a_complete_one_give_two_reports(tmp_path, tiny_model):
    """Issue 22: a DX without its Type 2 attributes used to kill the worker; every later C-STORE was then
    answered Success and never classified."""
    png = source_pngs(1)[0]
    anonymised = cxr_dataset(png)
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                    "PatientID", "PatientName"):
        delattr(anonymised, keyword)
    anonymised = write(anonymised, tmp_path / "anonymised.dcm")
    complete = write(cxr_dataset(png, crop=1), tmp_path / "complete.dcm")
    with Classifier.load(tiny_model) as clf:
        node = StorageNode(clf, tmp_path / "spool", tmp_path / "out", port=0, log=lambda line: None)
        _, port = node.start()
        try:
            assert send([anonymised, complete], port) == {str(anonymised): 0, str(complete): 0}
            wait_until(lambda: node.spool.counts()["done"] == 2, timeout_s=60, what="both instances classified")
        finally:
            node.stop()
    for path in (anonymised, complete):
        report = read_sr(tmp_path / "out" / f"{uid_of(path)}.sr.dcm")
        assert report.status == "ok" and report.referenced["SOPInstanceUID"] == uid_of(path)
    sr = pydicom.dcmread(tmp_path / "out" / f"{uid_of(anonymised)}.sr.dcm")
    assert sr.PatientBirthDate == "" and sr.PatientID == ""  # Type 2: present, empty


def test_any_exception_for_one_instance_is_its_failure_and_the_worker_goes_on(tmp_path, tiny_model, monkeypatch):
    """Whatever raises while one instance's results are made is recorded (status failed, an error line)."""
    import edgecxr.dicom.process as process

    files = cxr_files(tmp_path / "in", 3)
    bad = uid_of(files[1])
    real = process.write_results

    def flaky(pred, audit, source, *args, **kwargs):
        if str(source.SOPInstanceUID) == bad:
            raise RuntimeError("a builder bug")
        return real(pred, audit, source, *args, **kwargs)

    monkeypatch.setattr(process, "write_results", flaky)
    lines: list[str] = []
    with Classifier.load(tiny_model) as clf:
        node = StorageNode(clf, tmp_path / "spool", tmp_path / "out", port=0, log=lines.append)
        _, port = node.start()
        try:
            assert set(send(files[:2], port).values()) == {0}
            wait_until(lambda: node.spool.counts()["done"] == 2, timeout_s=60, what="the first two done")
            assert node.worker.is_alive()
            assert send(files[2:], port) == {str(files[2]): 0}  # the node goes on
            wait_until(lambda: node.spool.counts()["done"] == 3, timeout_s=60, what="the third done")
        finally:
            node.stop()
    record = node.spool.record(bad)
    assert record["status"] == "failed" and "a builder bug" in record["results_error"]
    assert any(line.startswith(f"error: {bad}: failed") and "a builder bug" in line for line in lines), lines
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{uid_of(f)}.sr.dcm" for f in (files[0], files[2]))


def test_a_poison_instance_is_quarantined_and_the_others_processed(tmp_path, tiny_model):
    """An instance that kills the process (here: os._exit in the model, as a crashing decoder would) is
    processed alone after the others once it is a suspect, and quarantined after MAX_ATTEMPTS unfinished
    attempts; restarts go on."""
    import subprocess
    import sys

    from edgecxr.dicom.spool import MAX_ATTEMPTS, Spool

    files = cxr_files(tmp_path / "in", 3)
    spool = Spool(tmp_path / "spool")
    for path in files:  # acknowledged before a restart, as the node keeps them
        assert spool.accept(uid_of(path), path.read_bytes())
    poison = uid_of(files[0])
    script = Path(__file__).with_name("poison_node.py")
    runs = []
    for _ in range(MAX_ATTEMPTS + 2):
        run = subprocess.run([sys.executable, str(script), str(tmp_path / "spool"), str(tmp_path / "out"),
                              str(tiny_model), poison], capture_output=True, text=True, timeout=180, cwd=tmp_path)
        runs.append(run)
        if run.returncode != 70:
            break
    assert [r.returncode for r in runs] == [70] * MAX_ATTEMPTS + [0], runs[-1].stdout + runs[-1].stderr
    assert "quarantined" in runs[-1].stdout
    quarantined = tmp_path / "spool" / "quarantine"
    assert (quarantined / f"{poison}.dcm").read_bytes() == files[0].read_bytes()
    assert "never finished" in (quarantined / f"{poison}.reason.txt").read_text()
    assert not (tmp_path / "spool" / "received" / f"{poison}.dcm").exists()
    others = {uid_of(f) for f in files[1:]}
    assert {p.name for p in (tmp_path / "out").iterdir()} == {f"{u}.sr.dcm" for u in others}
    assert {p.stem for p in (tmp_path / "spool" / "done").iterdir()} == others
    # and the next start has nothing left to do
    assert Spool(tmp_path / "spool").counts() == {"pending": 0, "done": 2, "quarantined": 1}


def _claiming(data: bytes, case: str) -> bytes:
    """A well-formed DX made malformed: one length claims 2 GB (pydicom reads such a data set without a word)."""
    import struct

    huge = struct.pack("<I", 0x7FFFFFF0)
    pixels = data.rindex(b"\xe0\x7f\x10\x00OB\x00\x00")  # (7FE0,0010) OB, then its 4-byte length
    if case == "pixel data":
        return data[:pixels + 8] + huge + data[pixels + 12:]
    if case == "private element":
        element = struct.pack("<HH", 0x0019, 0x1000) + b"UN\x00\x00" + huge + b"\x00" * 16
        return data[:pixels] + element + data[pixels:]
    item = data.index(b"\xfe\xff\x00\xe0", data.index(b"\x08\x00\x18\x22SQ"))  # the sequence's first item
    return data[:item + 4] + huge + data[item + 8:]


def test_a_data_set_claiming_2_gb_is_refused(tmp_path, tiny_model):
    """Issue 22: an element claiming 2 GB was answered 0x0000; the docs promise 0xC210 (and nothing kept)."""
    from pydicom.dataset import Dataset

    ds = cxr_dataset(source_pngs(1)[0])
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "816094009", "SCT", "Chest"
    ds.AnatomicRegionSequence = [region]
    good = write(ds, tmp_path / "good.dcm")
    bad = {}
    for case in ("pixel data", "private element", "sequence item"):
        bad[case] = tmp_path / f"{case.replace(' ', '-')}.dcm"
        bad[case].write_bytes(_claiming(good.read_bytes(), case))
    with Classifier.load(tiny_model) as clf:
        node = StorageNode(clf, tmp_path / "spool", tmp_path / "out", port=0, log=lambda line: None)
        _, port = node.start()
        try:
            from pynetdicom import _config

            _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
            try:
                results = send([*bad.values(), good], port)
            finally:
                _config.STORE_SEND_CHUNKED_DATASET = False
            wait_until(lambda: node.spool.counts()["done"] == 1, timeout_s=60, what="the good one done")
        finally:
            node.stop()
    assert {case: results[str(path)] for case, path in bad.items()} == dict.fromkeys(bad, CANNOT_UNDERSTAND)
    assert results[str(good)] == 0
    assert node.stats == {"stored": 1, "duplicates": 0, "refused": 3}
    assert [p.name for p in (tmp_path / "spool" / "received").iterdir()] == [f"{uid_of(good)}.dcm"]


@pytest.mark.parametrize("pacs_syntaxes,expected", [
    (["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"], "1.2.840.10008.1.2.1"),
    (["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2"], "1.2.840.10008.1.2"),
    (["1.2.840.10008.1.2.1.99"], "1.2.840.10008.1.2.1.99"),
], ids=["explicit-preferred", "implicit-next", "deflated-last"])
def test_forwarding_prefers_explicit_vr_little_endian(tmp_path, pacs_syntaxes, expected):
    """Issue 22: a PACS preferring Deflated got deflated SRs (strict archives keep them so, dicom3tools cannot
    read them); Explicit VR Little Endian first, then Implicit, Deflated only when nothing else is accepted."""
    from edgecxr.dicom.outputs import write_results
    from edgecxr.dicom.process import Destination, forward
    from edgecxr.runtime.prediction import Prediction

    source = cxr_dataset(source_pngs(1)[0])
    pred = Prediction(0, label="normal", top1=0.9, probabilities={"normal": 0.9, "covid": 0.1}, status="ok")
    [(sr, _)] = write_results(pred, {"model": "tiny"}, source, ["covid", "normal"], tmp_path / "out")
    received: list[str] = []
    pacs = _pacs(tmp_path / "pacs", syntaxes=pacs_syntaxes, received=received)
    try:
        assert forward([sr], Destination("127.0.0.1", pacs.server_address[1], "PACS")) == "sent"
    finally:
        pacs.shutdown()
    assert received == [expected]
    assert read_sr(next((tmp_path / "pacs").iterdir())).label == "normal"
