"""`edgecxr models add` (store.add): verified, complete, atomic registration (issue 22, item 5).

Each test here failed on the registration that copied a hand list of artifacts and hashed
whatever bytes it found: confidence.npz was left behind, a changed ONNX was laundered into a
trusted copy, a full disk left `.NAME.tmp`, and two `--replace` at once left a folder holding only
bundle.json.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.core.bundle import Bundle
from edgecxr.core.fileutil import sha256_file
from edgecxr.runtime import store
from edgecxr.runtime.confidence import FILE, SECTION, save_arrays
from runtime import tinymodels

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def models_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv(store.ENV_MODELS, str(folder))
    return folder


def _fit_confidence(bundle: Bundle, threshold: float = 1e6) -> None:
    """A confidence fit as `edgecxr confidence` records it: confidence.npz listed with its sha256."""
    dim = 8  # the tiny model has no features output: the fit loads (and is checked), and is not applied
    (bundle.dir / FILE).write_bytes(save_arrays({"means": np.zeros((len(tinymodels.CLASSES), dim)),
                                                 "whiten": np.eye(dim) * 0.01}))
    bundle.update(**{SECTION: {"temperature": {"value": 1.5},
                               "ood": {"method": "mahalanobis", "file": FILE, "sha256": sha256_file(bundle.dir / FILE),
                                       "thresholds": {"fp32": threshold, "fp16": threshold, "int8": threshold}}}})


def _contents(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def _left_over(models: Path) -> list[str]:
    """Anything in the models folder besides registered models and the lock file."""
    if not models.is_dir():
        return []
    return sorted(p.name for p in models.iterdir() if p.name != ".bundle.lock" and p.name.startswith("."))


def _one_error_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return errors[0]


def test_every_listed_file_is_copied_and_the_copy_classifies_like_the_source(models_dir, tmp_path, images):
    src = tinymodels.make_bundle(tmp_path / "src")
    _fit_confidence(src)
    runner = CliRunner()
    added = runner.invoke(main, ["models", "add", str(src.dir), "--name", "mine"])
    assert added.exit_code == 0, added.output
    copy = models_dir / "mine"
    assert _contents(copy).keys() == {"bundle.json", FILE, "model.onnx", "model.fp16.onnx", "model.int8.onnx"}
    for name, digest in _contents(copy).items():
        if name != "bundle.json":
            assert digest == sha256_file(src.dir / name), name
    meta = Bundle.load(copy).meta
    assert meta[SECTION]["ood"]["sha256"] == sha256_file(copy / FILE)
    assert meta["copied_from"]["bundle"] == "src" and "hashed_when_copied" not in meta["copied_from"]
    both = [runner.invoke(main, ["infer", "-m", m, str(images[0]), "--json"]) for m in (str(src.dir), "mine")]
    assert all(r.exit_code == 0 for r in both), [r.output for r in both]
    preds = [json.loads(r.stdout)["predictions"][0] for r in both]
    assert preds[0]["probabilities"] == preds[1]["probabilities"] and preds[0]["status"] == preds[1]["status"]


def test_a_shipped_reference_model_registers_under_a_new_name_and_infers(models_dir, examples):
    """The case that was broken for every user: confidence.npz dropped, so the copy never loaded."""
    ref = store.REFERENCE_DIR / "cnn-lstm"
    runner = CliRunner()
    added = runner.invoke(main, ["models", "add", str(ref), "--name", "my-cnn-lstm"])
    assert added.exit_code == 0, added.output
    copy = models_dir / "my-cnn-lstm"
    assert set(_contents(copy)) == {p.name for p in ref.iterdir() if p.is_file()}  # confidence.npz, reference_probs.json
    image = sorted((examples / "pneumonia_viral").glob("*.png"))[0]
    result = runner.invoke(main, ["infer", "-m", "my-cnn-lstm", str(image), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["backend"]["artifact"].startswith(str(copy)) and doc["predictions"][0]["status"] in ("ok", "abstained")
    assert doc["predictions"][0]["ood_score"] is not None  # the confidence fit came along and ran


def test_a_file_changed_after_its_hash_was_recorded_is_refused_like_infer_refuses_it(models_dir, tmp_path, images):
    src = tinymodels.make_bundle(tmp_path / "src")
    onnx_file = src.dir / "model.fp16.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    runner = CliRunner()
    added = runner.invoke(main, ["models", "add", str(src.dir), "--name", "mine"])
    assert added.exit_code == 1
    line = _one_error_line(added)
    assert "model.fp16.onnx: sha256 does not match" in line and line.endswith("mine not registered")
    assert not (models_dir / "mine").exists() and _left_over(models_dir) == []
    infer = runner.invoke(main, ["infer", "-m", str(src.dir), "--precision", "fp16", str(images[0])])
    assert infer.exit_code == 1 and "model.fp16.onnx: sha256 does not match" in infer.stderr  # the same check


def test_a_bundle_without_recorded_hashes_registers_with_a_warning(models_dir, tmp_path):
    src = tinymodels.make_bundle(tmp_path / "src", int8=False)
    src.meta.pop("artifact_sha256")
    src.save()
    added = CliRunner().invoke(main, ["models", "add", str(src.dir), "--name", "mine"])
    assert added.exit_code == 0, added.output
    assert "records no sha256 for onnx_fp16, onnx_fp32" in added.stderr
    meta = Bundle.load(models_dir / "mine").meta
    assert meta["copied_from"]["hashed_when_copied"] == ["onnx_fp16", "onnx_fp32"]
    assert meta["artifact_sha256"]["onnx_fp32"] == sha256_file(src.dir / "model.onnx")


def _disk_full_on_second_file(monkeypatch) -> list[Path]:
    """Make the second file copy fail as a full disk does: part of the file written, then ENOSPC."""
    real, calls = store._copy_file, []

    def copy(src: Path, dst: Path) -> str:
        calls.append(dst)
        if len(calls) == 2:
            dst.write_bytes(src.read_bytes()[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)

    monkeypatch.setattr(store, "_copy_file", copy)
    return calls


def test_a_full_disk_leaves_nothing_behind_and_keeps_the_model_it_would_replace(models_dir, tmp_path, monkeypatch):
    old = tinymodels.make_bundle(tmp_path / "old", int8=False)
    store.add(old.dir, "mine")
    before = _contents(models_dir / "mine")
    new = tinymodels.make_bundle(tmp_path / "new")
    calls = _disk_full_on_second_file(monkeypatch)
    runner = CliRunner()
    for name, extra in (("mine", ["--replace"]), ("other", [])):
        calls.clear()
        result = runner.invoke(main, ["models", "add", str(new.dir), "--name", name, *extra])
        assert result.exit_code == 1 and len(calls) == 2
        line = _one_error_line(result)
        assert "No space left on device" in line and line.endswith(f"{name} not registered")
        assert _left_over(models_dir) == [] and not (models_dir / "other").exists()
    assert _contents(models_dir / "mine") == before  # the registered model is untouched


def test_what_a_killed_registration_left_is_swept_on_the_next_one(models_dir, tmp_path):
    src = tinymodels.make_bundle(tmp_path / "src", int8=False)
    store.add(src.dir, "mine")
    for stale in (".mine.tmp", ".mine.tmp-dead1234", ".mine.old-dead1234", ".other.tmp-0badf00d"):
        (models_dir / stale).mkdir()
        (models_dir / stale / "bundle.json").write_text("{}")
    (models_dir / ".notes").mkdir()  # not a leftover of publishing: kept
    store.add(src.dir, "mine", replace=True)
    assert _left_over(models_dir) == [".notes"]


def test_a_registration_killed_between_its_renames_gets_its_old_model_back(models_dir, tmp_path):
    old = tinymodels.make_bundle(tmp_path / "old", int8=False)
    store.add(old.dir, "mine")
    before = _contents(models_dir / "mine")
    os.rename(models_dir / "mine", models_dir / ".mine.old-dead1234")  # killed here: set aside, new not in
    (models_dir / ".mine.tmp-dead1234").mkdir()
    store.add(old.dir, "other")  # any later registration sweeps (under the lock)
    assert _contents(models_dir / "mine") == before and _left_over(models_dir) == []


#: one `edgecxr models add --replace` in its own process: waits for GO, then registers; each file copy
#: is slowed so the two runs overlap (without the lock they interleave and leave a broken folder)
_RACER = """
import sys, time
from pathlib import Path
from edgecxr.runtime import store
real = store._copy_file
def slow(src, dst):
    time.sleep(0.1)
    return real(src, dst)
store._copy_file = slow
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
from edgecxr.cli import main
ready.write_text("")
while not go.exists():
    time.sleep(0.002)
sys.argv = ["edgecxr", "models", "add", sys.argv[1], "--name", "shared", "--replace"]
main()
"""


def test_two_concurrent_replaces_leave_one_complete_loadable_model(models_dir, tmp_path):
    a = tinymodels.make_bundle(tmp_path / "a")
    _fit_confidence(a)
    b = tinymodels.make_bundle(tmp_path / "b", int8=False)
    store.add(b.dir, "shared")  # the model both runs replace
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    go = tmp_path / "go"
    procs, ready = [], []
    for i, src in enumerate((a, b)):
        ready.append(tmp_path / f"ready{i}")
        procs.append(subprocess.Popen([sys.executable, "-c", _RACER, str(src.dir), str(ready[-1]), str(go)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + 60
    while not all(r.exists() for r in ready) and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    go.write_text("")  # the barrier: both processes start registering now
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    final = models_dir / "shared"
    bundle = Bundle.load(final)
    source = a if bundle.meta.get(SECTION) else b
    assert _contents(final).keys() == _contents(source.dir).keys()
    assert store.verify_listed(bundle, store.listed_files(bundle))  # every listed file there, hashes match
    assert _left_over(models_dir) == []
    from edgecxr.runtime.classifier import Classifier

    with Classifier.load("shared") as clf:
        assert clf.classes == tinymodels.CLASSES


def test_two_threads_registering_one_name_are_serialised(models_dir, tmp_path, monkeypatch):
    """The folder lock is re-entrant per process, so threads of one process (a server) need their own lock."""
    import threading

    srcs = [tinymodels.make_bundle(tmp_path / n, int8=n == "a") for n in ("a", "b")]
    real, inside, most = store._copy_file, [0], [0]

    def counting(src: Path, dst: Path) -> str:
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        try:
            return real(src, dst)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(store, "_copy_file", counting)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(src: Bundle) -> None:
        barrier.wait()
        try:
            store.add(src.dir, "shared", replace=True)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and most[0] == 1
    bundle = Bundle.load(models_dir / "shared")
    assert store.verify_listed(bundle, store.listed_files(bundle)) and _left_over(models_dir) == []


def test_usage_errors_exit_2(models_dir, tmp_path):
    src = tinymodels.make_bundle(tmp_path / "src", int8=False)
    runner = CliRunner()
    for extra in (["--deadline", "5"], ["--max-mb", "10"], ["--sha256", "0" * 64]):
        result = runner.invoke(main, ["models", "add", str(src.dir), "--name", "mine", *extra])
        assert result.exit_code == 2 and "are for URLs" in _one_error_line(result)
    bad = runner.invoke(main, ["models", "add", "https://example.invalid/m.zip", "--sha256", "0" * 64,
                               "--name", "mine", "--deadline", "0"])
    assert bad.exit_code == 2 and not models_dir.exists()
