"""scripts/train_on_gpu.sh and scripts/bench_train.py: the GPU-machine round trip, and the benchmark's plan.

The round trip runs the script's `train` half here (a tiny model, this venv's backend, no wheels to
install), with parts small enough that `fetch` must be called twice, and `join` must give back a
bundle whose model predicts as the one trained "there". The device itself is not needed: what is
tested is what the script copies, splits, checks and unpacks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from manifest_files import write_manifest

from edgecxr.data.manifest import CLASSES_3
from edgecxr.data.packed import pack

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_on_gpu.sh"


def _manifest(root: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for c, label in enumerate(CLASSES_3):
        (root / label).mkdir(parents=True)
        for split, n in (("train", 4), ("val", 2)):
            for i in range(n):
                rel = f"{label}/{split}_{i}.png"
                cv2.imwrite(str(root / rel), (rng.random((40, 40)) * 60 + 50 * c).astype(np.uint8))
                rows.append({"relative_path": rel, "label": label, "split": split, "patient_id": f"{label}{i}"})
    return write_manifest(root / "manifest.csv", rows)


def _script(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.mark.slow  # two TensorFlow start-ups and a training: ~1 min on 2 idle cores
def test_train_fetch_join_round_trip(tmp_path):
    keras = pytest.importorskip("keras")
    stage = tmp_path / "stage"
    pack(_manifest(tmp_path / "data"), stage / "cnn-lstm-32.npz", sizes=[32])
    run_dir = tmp_path / "device"
    env = dict(os.environ, GPU_STAGE=str(stage), RUN_DIR=str(run_dir), PYTHON=sys.executable,
               LOCAL_PY=sys.executable, PART_BYTES="20000", KERAS_BACKEND=keras.backend.backend())
    outs = [tmp_path / "out0"]
    outs[0].mkdir()
    proc = _script("train", "cnn-lstm", "--tiny", "--epochs", "1", "--batch-size", "4",
                   env=dict(env, OUT=str(outs[0])))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "finished: the bundle comes back" in proc.stdout
    first = sorted(p.name for p in outs[0].iterdir())
    assert {"train.log", "train.jsonl", "parts.json", "machine.txt"} <= set(first)
    info = json.loads((outs[0] / "parts.json").read_text())
    assert len(info["parts"]) > 7  # small parts: train sends 3, each fetch 4, so fetch runs twice
    assert sum(name.endswith(".part00") or ".part0" in name for name in first) == 3
    while "left: call" in proc.stdout:
        outs.append(tmp_path / f"out{len(outs)}")
        outs[-1].mkdir()
        proc = _script("fetch", env=dict(env, OUT=str(outs[-1])))
        assert proc.returncode == 0, proc.stderr
    assert len(outs) == 3 and "0 left" in proc.stdout

    # a damaged part is refused, and so is a missing one
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for out in outs:
        for f in out.iterdir():
            (damaged / f.name).write_bytes(f.read_bytes())
    part = damaged / info["parts"][1]["name"]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    bad = _script("join", str(tmp_path / "bad"), str(damaged), env=env)
    assert bad.returncode != 0 and "damaged" in bad.stderr
    missing = _script("join", str(tmp_path / "missing"), str(outs[0]), env=env)
    assert missing.returncode != 0 and "is missing" in missing.stderr

    dest = tmp_path / "back"
    proc = _script("join", str(dest), *map(str, outs), env=env)
    assert proc.returncode == 0, proc.stderr
    from edgecxr.core.bundle import Bundle

    bundle = Bundle.load(dest)
    assert bundle.model == "cnn-lstm" and bundle.meta["dataset"]["pack"]["sizes"] == [32]
    x = np.random.default_rng(1).random((3, 32, 32, 1), dtype=np.float32)
    there = keras.saving.load_model(run_dir / "cnn-lstm" / "model.keras").predict(x, verbose=0)
    back = keras.saving.load_model(dest / "model.keras").predict(x, verbose=0)
    np.testing.assert_array_equal(back, there)


def test_train_refuses_without_a_pack(tmp_path):
    env = dict(os.environ, GPU_STAGE=str(tmp_path), OUT=str(tmp_path), PYTHON=sys.executable)
    proc = _script("train", "coronet", env=env, timeout=60)
    assert proc.returncode == 2 and "no pack for coronet" in proc.stderr
    assert _script("nonsense", env=env, timeout=60).returncode == 2


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=check)


def test_slim_takes_the_reference_onnx_out_of_the_index_and_unslim_restores_it(tmp_path):
    """The device call sends tracked files (64 MiB at most): slim untracks the shipped ONNX files for
    the call, refuses commits meanwhile, and unslim leaves the index exactly as HEAD has it."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "train_on_gpu.sh").write_bytes(SCRIPT.read_bytes())
    models = [repo / "edgecxr" / "reference" / m / f"model.{p}.onnx" for m in ("coronet", "cnn-lstm")
              for p in ("fp16", "int8")]
    for f in models:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(os.urandom(2048))
    (repo / "edgecxr" / "reference" / "coronet" / "card.json").write_text("{}")
    _git(tmp_path, "init", "-q", str(repo))
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    run = dict(os.environ)
    slim_script = repo / "scripts" / "train_on_gpu.sh"

    def script(*args):
        return subprocess.run(["bash", str(slim_script), *args], env=run, capture_output=True, text=True,
                              timeout=60, check=False)

    proc = script("slim")
    assert proc.returncode == 0, proc.stderr
    travels = _git(repo, "ls-files", "--cached", "--others", "--exclude-standard").stdout.split()
    assert not any(t.endswith(".onnx") for t in travels)
    assert "edgecxr/reference/coronet/card.json" in travels
    assert all(f.is_file() for f in models)  # still on disk
    assert script("slim").returncode == 2  # twice is refused
    (repo / "x.txt").write_text("x")
    _git(repo, "add", "x.txt")
    commit = _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "oops", check=False)
    assert commit.returncode != 0 and "unslim" in commit.stderr
    _git(repo, "rm", "-q", "--cached", "x.txt")

    proc = script("unslim")
    assert proc.returncode == 0, proc.stderr
    assert _git(repo, "diff", "--cached", "--quiet", "HEAD", check=False).returncode == 0
    assert "slim" not in (repo / ".git" / "info" / "exclude").read_text()
    assert not (repo / ".git" / "hooks" / "pre-commit").exists()
    assert script("unslim").returncode == 2
    (models[0]).write_bytes(b"changed")  # a changed model is not taken out: unslim could not restore HEAD's
    assert script("slim").returncode == 2


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "scripts" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_plan_alternates_backends_and_summary():
    bench = _bench()
    order = bench.plan([("coronet", 150, 16), ("cnn-lstm", 128, 16)], ["tensorflow", "torch", "jax"],
                       ["float32", "mixed_bfloat16"], repeats=2, repeats_for={"jax": 1},
                       skip={("jax", "mixed_bfloat16")})
    # repeats outermost, backends innermost: no backend runs twice in a row while others are left
    assert [b for _, _, _, b in order[:3]] == ["tensorflow", "torch", "jax"]
    assert sum(b == "jax" for *_, b in order) == 2 and ("jax" not in {b for r, *_, b in order if r == 1})
    assert not any(b == "jax" and p == "mixed_bfloat16" for _, _, p, b in order)
    assert len(order) == 2 * 2 * 2 * 2 + 2
    runs = [{"model": "coronet", "size": 150, "batch": 16, "precision": "float32", "backend": "torch",
             "images_per_second": v, "load_start": 2.0} for v in (1.0, 3.0, 2.0)]
    (row,) = bench.summarise(runs)
    assert (row["min"], row["median"], row["max"], row["runs"]) == (1.0, 2.0, 3.0, 3)
