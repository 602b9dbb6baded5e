"""The shared capture window of `decoder_log.judged_call`: decodes overlap, verdicts stay their own."""

from __future__ import annotations

import os
import threading

import pytest

from edgecxr.data import decoder_log
from edgecxr.data.decoder_log import judged_call

FATAL = b"Corrupt JPEG data: premature end of data segment\n"


def _run_both(a, b):
    results: dict[str, object] = {}

    def go(key, fn):
        results[key] = judged_call(fn)

    threads = [threading.Thread(target=go, args=("a", a)), threading.Thread(target=go, args=("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return results


def test_decodes_run_at_the_same_time():
    """Both calls must be inside their capture at once: a one-at-a-time capture breaks the barrier."""
    barrier = threading.Barrier(2, timeout=10)

    def decode():
        barrier.wait()  # raises BrokenBarrierError if the other call cannot run meanwhile
        return "ok"

    results = _run_both(decode, decode)
    assert [r[0] for r in results.values()] == ["ok", "ok"]
    assert all(r[1].fatal == [] for r in results.values())
    assert decoder_log._State.window is None and decoder_log._State.active == 0


def test_a_fatal_line_lands_only_on_the_decode_that_printed_it(capfd: pytest.CaptureFixture[str]):
    inside, printed = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    calls = {"a": 0, "b": 0}

    def damaged():
        calls["a"] += 1
        if calls["a"] == 1:
            inside.wait()  # both decodes are capturing
            os.write(2, FATAL)
            printed.wait()  # ...and the clean one is still running: the line is inside its range
        else:
            os.write(2, FATAL)  # run again alone: the decoder prints it again
        return "a"

    def clean():
        calls["b"] += 1
        if calls["b"] == 1:
            inside.wait()
            os.write(2, b"a log line from elsewhere\n")
            printed.wait()
        return "b"

    results = _run_both(damaged, clean)
    assert results["a"][1].fatal == [FATAL.decode().strip()]
    assert results["b"][1].fatal == []  # run again alone, and clean
    assert calls == {"a": 2, "b": 2}  # both saw a fatal line in their range, both ran again alone
    assert capfd.readouterr().err == "a log line from elsewhere\n"  # passed through once, not judged


def test_the_capture_restores_fd2_after_an_exception():
    before = os.fstat(2)

    def boom():
        raise MemoryError("no room")

    with pytest.raises(MemoryError):
        judged_call(boom)
    after = os.fstat(2)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
    assert decoder_log._State.window is None and not decoder_log._State.exclusive


def test_concurrent_dicom_decodes_keep_their_own_pydicom_warnings():
    """pydicom reports damaged pixel data as a warning; threads must not record each other's (or lose one)."""
    import time
    import warnings

    import numpy as np

    from edgecxr.core.errors import ImageLoadError
    from edgecxr.data import dicom

    class FakeDataset:
        def __init__(self, bad: bool):
            self.bad = bad

        @property
        def pixel_array(self):
            time.sleep(0.002)  # a decode takes a while: other threads enter and leave meanwhile
            if self.bad:
                warnings.warn("The number of bytes of pixel data is a third larger than expected: "
                              "non-conformant padding", UserWarning, stacklevel=2)
            time.sleep(0.002)
            return np.zeros((4, 4), np.uint16)

    class Uid:
        name = "RLE Lossless"

    wrong: list[str] = []

    def work(bad: bool) -> None:
        for _ in range(30):
            try:
                dicom._decode("x.dcm", FakeDataset(bad), Uid())
                if bad:
                    wrong.append("damaged pixel data accepted")
            except ImageLoadError:
                if not bad:
                    wrong.append("good pixel data refused")

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert wrong == []
