"""Pipelined predict: decode threads ahead of the model, same answers in the same order as sequential."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgecxr.runtime import pipeline
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.input_checks import InputRules
from edgecxr.runtime.inputs import prepare
from runtime import tinymodels

FIELDS = ("source", "label", "error", "status", "reason", "input_sha256", "dicom")


def _facts(preds):
    return [({k: getattr(p, k) for k in FIELDS}, p.probabilities) for p in preds]


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edgecxr-decode")]


def _mixed_inputs(images, tmp_path):
    """Good images, unreadable files and an array, interleaved, so order mistakes show."""
    bad = tinymodels.broken_files(tmp_path / "bad")
    good = tinymodels.copy_images(images * 3, tmp_path / "good")
    items: list = []
    for i, path in enumerate(good):
        items.append(path)
        if i < len(bad):
            items.append(bad[i])
    items.insert(3, np.full((64, 64), 7, np.uint8))  # a blank array: rejected by the input checks
    return items


@pytest.mark.parametrize("workers,batch_size,prefetch", [(2, 1, None), (3, 4, 5), (4, 3, 1)])
def test_pipelined_predictions_equal_sequential_ones_in_order(tiny_onnx, images, tmp_path, workers, batch_size,
                                                              prefetch):
    items = _mixed_inputs(images, tmp_path)
    with Classifier.load(tiny_onnx) as clf:
        serial = clf.predict(items, batch_size=batch_size, workers=0)
        piped = clf.predict(items, batch_size=batch_size, workers=workers, prefetch=prefetch)
        chunks = [len(c) for c in clf.predict_iter(items, batch_size=batch_size, workers=workers)]
    assert _facts(piped) == _facts(serial)
    assert [p.source for p in piped][:3] == [str(items[0]), str(items[1]), str(items[2])]
    assert {p.status for p in piped} == {"ok", "rejected", "failed"} and any(p.error for p in piped)
    assert any(p.label for p in piped)
    assert chunks == [len(c) for c in np.array_split(np.arange(len(items)), range(batch_size, len(items), batch_size))]
    assert not _decode_threads()


def test_an_exception_in_a_worker_is_that_files_error(tiny_onnx, images, tmp_path, monkeypatch):
    paths = tinymodels.copy_images(images, tmp_path)
    victim = str(paths[1])

    def flaky(item, index, spec, rules):
        if str(item) == victim:
            raise RuntimeError("decoder exploded\nwith two lines")
        return prepare(item, index, spec, rules)

    monkeypatch.setattr(pipeline, "prepare", flaky)
    with Classifier.load(tiny_onnx) as clf:
        preds = clf.predict(paths, batch_size=2, workers=2)
    assert [p.source for p in preds] == [str(p) for p in paths]
    assert preds[1].error == "RuntimeError: decoder exploded with two lines" and preds[1].label is None
    assert all(p.label for i, p in enumerate(preds) if i != 1)


def test_prefetch_bounds_the_inputs_decoded_ahead(images):
    started: list[int] = []
    lock = threading.Lock()
    consumed = 0
    items = [np.full((64, 64), i, np.uint8) for i in range(60)]

    def record(item, index, spec, rules):
        with lock:
            started.append(index)
        return prepare(item, index, spec, rules)

    original, pipeline.prepare = pipeline.prepare, record
    try:
        for batch in pipeline.prepared_batches(items, tinymodels.SPEC, InputRules.off(), batch_size=3, workers=4,
                                               prefetch=7):
            time.sleep(0.002)  # a slow model: the workers would run far ahead if nothing bounded them
            consumed += len(batch)
            assert len(batch) == 3
            assert max(started) < consumed + 7  # never more than `prefetch` inputs ahead of the consumer
    finally:
        pipeline.prepare = original
    assert sorted(started) == list(range(60))


def test_ctrl_c_in_the_model_half_cancels_decodes_and_joins_the_pool(tiny_onnx, tmp_path, monkeypatch):
    started: list[int] = []
    items = [np.full((64, 64), i % 256, np.uint8) for i in range(500)]

    def slow(item, index, spec, rules):
        started.append(index)
        time.sleep(0.01)
        return prepare(item, index, spec, rules)

    monkeypatch.setattr(pipeline, "prepare", slow)
    with Classifier.load(tiny_onnx) as clf:
        calls = 0
        real = clf._run_model

        def interrupted(prepared):
            nonlocal calls
            calls += 1
            if calls == 2:
                raise KeyboardInterrupt
            return real(prepared)

        monkeypatch.setattr(clf, "_run_model", interrupted)
        with pytest.raises(KeyboardInterrupt):
            clf.predict(items, batch_size=4, workers=3, prefetch=8)
    assert not _decode_threads()  # joined before the interrupt went on
    assert len(started) <= 2 * 4 + 8 + 3  # what was queued then was cancelled, not decoded


def test_a_consumer_that_stops_early_releases_the_pool(tiny_onnx, images):
    with Classifier.load(tiny_onnx) as clf:
        it = clf.predict_iter(images * 10, batch_size=2, workers=2)
        first = next(it)
        assert len(first) == 2 and _decode_threads()
        it.close()
    assert not _decode_threads()


def test_worker_counts():
    assert pipeline.default_workers(1) == 0
    assert pipeline.default_workers(2) == 2
    assert pipeline.default_workers(64) == pipeline.MAX_DEFAULT_WORKERS
    assert pipeline.resolve_workers(None, 1) == 0  # one input: no pool
    assert pipeline.resolve_workers(0, 100) == 0 and pipeline.resolve_workers(1, 100) == 0
    assert pipeline.resolve_workers(3, 100) == 3
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            pipeline.resolve_workers(bad, 10)
    assert pipeline.default_prefetch(8, 2) == 16 and pipeline.default_prefetch(1, 8) == 16


def test_infer_workers_option_gives_the_same_json(tiny_onnx, images, tmp_path):
    import json

    from click.testing import CliRunner

    from edgecxr.cli import main

    folder = tmp_path / "scans"
    tinymodels.copy_images(images * 2, folder)
    tinymodels.broken_files(folder)
    docs = {}
    for workers in ("0", "3"):
        result = CliRunner().invoke(main, ["infer", "-m", str(tiny_onnx), str(folder), "--json", "--workers", workers,
                                           "--batch-size", "3"])
        assert result.exit_code == 1, result.output  # the broken files fail, the others are classified
        preds = json.loads(result.stdout)["predictions"]
        docs[workers] = [{k: v for k, v in p.items() if k not in ("time", "preprocess_ms", "inference_ms")}
                         for p in preds]
    assert docs["3"] == docs["0"] and len(docs["0"]) == 2 * len(images) + 3
    result = CliRunner().invoke(main, ["infer", "-m", str(tiny_onnx), str(folder), "--workers", "-1"])
    assert result.exit_code == 2 and "--workers" in result.output


def test_ctrl_c_on_a_pipelined_infer_exits_130_and_writes_nothing(tiny_onnx, shared_originals, tmp_path):
    """A real SIGINT to `edgecxr infer` while worker threads decode: one line, exit 130, no CSV, no hang."""
    import signal
    import subprocess
    import sys

    big = shared_originals / "covid__covid-19-pneumonia-23-day1.jpg"  # 4280x3520: each decode takes a while
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(3000):  # enough work that the SIGINT lands mid-run on a fast machine too
        (folder / f"{i:04d}.jpg").symlink_to(big)
    csv = tmp_path / "out.csv"
    proc = subprocess.Popen([sys.executable, "-m", "edgecxr", "infer", "-m", str(tiny_onnx), str(folder), "--workers", "2",
                             "--csv", str(csv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a test run started in the background of a shell inherits SIGINT ignored
                            # (POSIX, no job control); the child takes Ctrl-C as a terminal user's would
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line or "using backend" in line:
                break  # the model loaded and decoding began (or the process ended: the asserts say so)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in err
    assert not csv.exists()
