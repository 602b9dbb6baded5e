"""Training: tiny models on a few images -> bundle, reload parity, resume, early stop, k-fold, CLI.

Most tests use a synthetic manifest of generated PNGs in tmp_path (runs without ../shared); its
test/calib rows point at files that do not exist, so a run that read them would fail.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from manifest_files import write_manifest

from edgecxr.cli import main
from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import EdgeCXRError
from edgecxr.data.dataset import load_arrays
from edgecxr.data.manifest import CLASSES_3, CLASSES_4, manifest_sha256, read_manifest, select
from edgecxr.stages.train.config import TrainConfig, balanced_class_weights, group_folds, limit_records
from edgecxr.stages.train.run import train

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """4 classes x (train 4, val 2) 48x48 PNGs; patients p0..p3 per class own 1-2 images each."""
    root = tmp_path_factory.mktemp("cxr")
    rng = np.random.default_rng(0)
    rows = []
    for c, label in enumerate(CLASSES_4):
        (root / "images" / label).mkdir(parents=True)
        for split, n in (("train", 4), ("val", 2)):
            for i in range(n):
                img = (rng.random((48, 48)) * 60 + 40 * c).astype(np.uint8)  # class-dependent brightness
                rel = f"images/{label}/{split}_{i}.png"
                cv2.imwrite(str(root / rel), img)
                pid = f"{label}:{split}:{i // 2}"
                rows.append({"relative_path": rel, "label": label, "split": split, "patient_id": pid})
        for split in ("calib", "test"):
            rows.append({"relative_path": f"images/{label}/{split}_missing.png", "label": label, "split": split,
                         "patient_id": f"{label}:{split}"})
    return write_manifest(root / "manifest.csv", rows)


def _cfg(manifest: Path, out: Path, model: str = "coronet", **kw) -> TrainConfig:
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", 4)
    return TrainConfig(model=model, data=str(manifest), out=str(out), tiny=True, **kw)


def test_tiny_coronet_bundle_and_reload_parity(manifest, tmp_path):
    out = tmp_path / "run"
    summary = train(_cfg(manifest, out))
    bundle = Bundle.load(out)
    meta = bundle.meta
    assert bundle.model == "coronet" and bundle.classes == list(CLASSES_4)
    assert meta["input_shape"] == [32, 32, 3] and bundle.spec.height == 32
    assert meta["dataset"]["sha256"] == manifest_sha256(manifest)
    assert meta["dataset"]["counts"] == {"train": dict.fromkeys(CLASSES_4, 4), "val": dict.fromkeys(CLASSES_4, 2)}
    training = meta["training"]
    assert training["epochs_run"] == 2 and training["best_epoch"] in (1, 2)
    # random weights -> the from-scratch recipe (lr 1e-3, AdamW, label smoothing) unless --recipe paper
    assert training["recipe"] == "scratch" and training["config"]["weights"] == "none"
    assert training["config"]["lr"] == 1e-3 and training["optimizer"]["name"] == "adamw"
    assert training["loss"] == {"name": "categorical_crossentropy", "label_smoothing": 0.1}
    assert training["machine"]["backend"] == keras.backend.backend() and training["machine"]["cpu_count"] >= 1
    assert "git_commit" in meta
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == 2
    assert min(history["val_loss"]) == pytest.approx(training["best_val_loss"])
    assert summary["best_epoch"] == training["best_epoch"]

    # The saved model.keras is the best checkpoint and predicts identically after reload.
    model = keras.saving.load_model(bundle.artifact("keras"))
    x_val, y_val = load_arrays(select(read_manifest(manifest), "val"), bundle.spec, bundle.classes, progress=False)
    probs = model.predict(x_val, verbose=0)
    np.testing.assert_allclose(probs, keras.saving.load_model(out / "model.keras").predict(x_val, verbose=0), atol=1e-6)
    from edgecxr.models import build_model

    reference = build_model("coronet", tiny=True)
    reference.load_weights(out / "checkpoints" / "best.weights.h5")
    np.testing.assert_allclose(probs, reference.predict(x_val, verbose=0), atol=1e-6)
    assert meta["metrics"]["val"]["accuracy"] == pytest.approx(float((probs.argmax(1) == y_val).mean()))
    assert getattr(model, "optimizer", None) is None  # the deployable artifact carries no optimizer state


def test_resume_continues_from_saved_epoch(manifest, tmp_path):
    out = tmp_path / "run"
    train(_cfg(manifest, out, epochs=1))
    first = json.loads((out / "history.json").read_text())
    with pytest.raises(EdgeCXRError, match="already holds a training run; resume it"):
        train(_cfg(manifest, out, epochs=2, resume=False))
    with pytest.raises(EdgeCXRError, match="different options"):
        train(_cfg(manifest, out, epochs=2, batch_size=2))
    log = io.StringIO()
    train(_cfg(manifest, out, epochs=2), log=log)  # the same command line resumes by itself, and says so
    assert f"resuming {out} after epoch 1/2" in log.getvalue()
    meta = Bundle.load(out).meta
    assert meta["training"]["epochs_run"] == 2
    assert meta["training"]["resumed_at_epoch"] == [1]
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 2
    assert history["loss"][0] == first["loss"][0]  # epoch 1 was not re-run
    last = keras.saving.load_model(out / "checkpoints" / "last.keras")
    assert int(last.optimizer.iterations.numpy()) == 2 * 4  # Adam state carried over: 16 images / batch 4 per epoch


def test_early_stopping_on_flat_val_loss(manifest, tmp_path):
    # lr far below float32 resolution: weights (and val loss) never change, so patience 1 stops at epoch 2.
    out = tmp_path / "run"
    train(_cfg(manifest, out, model="cnn-lstm", epochs=6, patience=1, lr=1e-30, augment="none"))
    training = Bundle.load(out).meta["training"]
    assert training["stopped_early"] is True
    assert training["epochs_run"] == 2 and training["best_epoch"] == 1


def test_kfold_cross_validation(manifest, tmp_path):
    out = tmp_path / "cv"
    summary = train(_cfg(manifest, out, model="cnn-lstm", epochs=1, folds=3))
    cv = json.loads((out / "cv.json").read_text())
    assert cv["folds"] == 3 and len(cv["results"]) == 3 == len(summary["results"])
    assert len(cv["accuracy"]["values"]) == 3 and cv["accuracy"]["std"] >= 0
    held = []
    weights = []
    for k in range(1, 4):
        meta = Bundle.load(out / "folds" / f"fold_{k}").meta
        assert meta["classes"] == list(CLASSES_3)
        held.append(set(meta["dataset"]["cv"]["held_out_groups"]))
        assert "cv_held_out" in meta["metrics"]
        model = keras.saving.load_model(out / "folds" / f"fold_{k}" / "model.keras")
        weights.append(model.get_layer("block1_conv1").get_weights()[0])
    assert not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2])
    pool = {r.patient_group for r in select(read_manifest(manifest), ("train", "val"))}
    assert set.union(*held) == pool  # every train+val group held out exactly once; test/calib never
    assert not np.allclose(weights[0], weights[1])  # independent, freshly initialised models


def test_group_folds_keep_patients_together_and_are_seeded(manifest):
    records = select(read_manifest(manifest), ("train", "val"))
    folds = group_folds(records, CLASSES_3, 3, seed=0)
    assert set(folds.tolist()) == {0, 1, 2}
    for group in {r.patient_group for r in records}:
        assert len({int(f) for r, f in zip(records, folds, strict=True) if r.patient_group == group}) == 1
    np.testing.assert_array_equal(folds, group_folds(records, CLASSES_3, 3, seed=0))
    assert not np.array_equal(folds, group_folds(records, CLASSES_3, 3, seed=5))


def test_limit_records_and_class_weights(manifest):
    records = select(read_manifest(manifest), "train")
    limited = limit_records(records, CLASSES_3, 3, seed=0)
    labels = [r.label for r in limited]
    assert labels.count("covid") == 3 and labels.count("normal") == 3
    assert sum(lab.startswith("pneumonia") for lab in labels) == 3
    weights = balanced_class_weights(np.array([0, 1, 1, 1]), 3)
    assert weights[0] == pytest.approx(2.0) and weights[1] == pytest.approx(2 / 3) and weights[2] == 1.0


def test_cli_train_json_and_errors(manifest, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["train", "cnn-lstm", "--data", str(manifest), "--out", str(out), "--tiny", "--epochs", "1",
            "--batch-size", "4", "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["epochs_run"] == 1 and Path(summary["bundle"]) == out
    assert "epoch 1/1" in result.stderr  # one log line per epoch when not a TTY
    ckpt = out / "checkpoints"
    assert summary["checkpoints"]["files"] == ["best.weights.h5", "last.keras", "state.json"]  # --keep all
    assert f"{ckpt} keeps " in result.stderr and "--keep last or --keep best" in result.stderr
    # the same command again: the run is complete, so it resumes nothing; --keep best then drops last.keras
    again = runner.invoke(main, [*args, "--keep", "best"])
    assert again.exit_code == 0 and f"resuming {out} after epoch 1/1" in again.stderr
    assert not (ckpt / "last.keras").exists() and (ckpt / "best.weights.h5").is_file()
    assert json.loads(again.stdout)["checkpoints"]["keep"] == "best"
    gone = runner.invoke(main, args)  # nothing left to resume from: one line, not a traceback
    assert gone.exit_code == 1 and "--keep best drops it" in gone.stderr and "Traceback" not in gone.output
    again = runner.invoke(main, [*args, "--no-resume"])
    assert again.exit_code == 1 and "resume it" in again.stderr
    assert again.stderr.rstrip().endswith("(options: --resume/--no-resume, --out)")  # the CLI names its flags
    folds = runner.invoke(main, ["train", "cnn-lstm", "--data", str(manifest), "--out", str(tmp_path / "f"), "--folds", "1"])
    assert folds.exit_code == 2 and "folds must be 0" in folds.stderr and "(options: --folds)" in folds.stderr
    bad = runner.invoke(main, ["train", "coronet", "--data", str(manifest), "--out", str(tmp_path / "x"), "--tiny",
                               "--weights", "imagenet"])
    assert bad.exit_code == 2 and "no pretrained weights" in bad.output


def test_cli_on_real_data(shared_cxr, tmp_path):
    out = tmp_path / "real"
    result = CliRunner().invoke(main, ["train", "coronet", "--data", str(shared_cxr / "manifest.csv"), "--out",
                                       str(out), "--tiny", "--epochs", "1", "--limit-per-class", "2"])
    assert result.exit_code == 0, result.output
    meta = Bundle.load(out).meta
    assert meta["dataset"]["counts"]["train"] == dict.fromkeys(CLASSES_4, 2)
    assert meta["dataset"]["sha256"] == manifest_sha256(shared_cxr / "manifest.csv")


def test_recalibrate_batchnorm_gives_exact_batch_statistics():
    """Precise BatchNorm: after recalibration the moving mean/variance are the average batch statistics."""
    import numpy as np

    from edgecxr.core.lazy import require
    from edgecxr.stages.train.loop import batchnorm_layers, recalibrate_batchnorm

    keras = require("keras")
    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.99)])
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2)])
    (bn,) = batchnorm_layers(model)  # found inside the nested model
    bn.moving_mean.assign(np.full(4, 100.0, dtype="float32"))  # stale statistics
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(40, 4)).astype("float32")
    batches = recalibrate_batchnorm(model, x, batch_size=10, images=40, seed=1)
    assert batches == 4
    # the function takes the seed's permutation in chunks of batch_size
    idx = np.random.default_rng(1).permutation(40)
    means = [x[np.sort(idx[i : i + 10])].mean(0) for i in range(0, 40, 10)]
    variances = [x[np.sort(idx[i : i + 10])].var(0) for i in range(0, 40, 10)]
    np.testing.assert_allclose(np.asarray(bn.moving_mean), np.mean(means, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), np.mean(variances, 0), rtol=1e-4, atol=1e-4)
    assert bn.momentum == 0.99  # restored
    assert recalibrate_batchnorm(model, x, 10, images=0, seed=1) == 0


def test_recipe_resolution():
    base = {"data": "m.csv", "out": "o"}
    coronet = TrainConfig(model="coronet", **base).resolved()
    assert coronet.recipe == "paper" and coronet.weights == "imagenet" and coronet.lr == 1e-4  # the paper's transfer recipe
    scratch = TrainConfig(model="coronet", weights="none", **base).resolved()
    assert scratch.recipe == "scratch" and scratch.optimizer == "adamw" and scratch.augment == "cxr"
    assert TrainConfig(model="cnn-lstm", **base).resolved().recipe == "scratch"  # the CNN-LSTM has no pretrained weights
    paper = TrainConfig(model="cnn-lstm", recipe="paper", **base).resolved()
    assert (paper.lr, paper.batch_size, paper.augment, paper.optimizer) == (1e-4, 16, "paper", "adam")
    override = TrainConfig(model="coronet", weights="none", lr=5e-4, augment="none", **base).resolved()
    assert override.recipe == "scratch" and override.lr == 5e-4 and override.augment == "none"
    with pytest.raises(EdgeCXRError, match="recipe"):
        TrainConfig(model="coronet", recipe="fast", **base).resolved()
    with pytest.raises(EdgeCXRError, match="augmentation policy"):
        TrainConfig(model="coronet", augment="flip", **base).resolved()


def test_bf16_training_saves_a_float32_model(manifest, tmp_path):
    out = tmp_path / "bf16"
    train(_cfg(manifest, out, epochs=1, precision="mixed_bfloat16"))
    meta = Bundle.load(out).meta
    assert meta["training"]["dtype_policy"] == "mixed_bfloat16"
    last = keras.saving.load_model(out / "checkpoints" / "last.keras")
    assert any(layer.dtype_policy.name == "mixed_bfloat16" for layer in last.layers)  # trained in bf16
    model = keras.saving.load_model(out / "model.keras")
    policies = {layer.dtype_policy.name for layer in model.layers}
    assert policies == {"float32"}  # the artifact that is exported is float32
    assert model.predict(np.zeros((1, 32, 32, 3), "float32"), verbose=0).dtype == np.float32


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_train_under_other_backends(manifest, tmp_path, backend):
    """The training loop has no tf.*: a tiny run under KERAS_BACKEND=jax/torch writes a bundle that TF reloads."""
    import os
    import subprocess
    import sys

    pytest.importorskip(backend)
    out = tmp_path / backend
    env = dict(os.environ, KERAS_BACKEND=backend)
    code = ("from edgecxr.stages.train.config import TrainConfig; from edgecxr.stages.train.run import train; "
            f"train(TrainConfig(model='cnn-lstm', data={str(manifest)!r}, out={str(out)!r}, tiny=True, epochs=2, "
            "batch_size=4))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = Bundle.load(out).meta
    assert meta["training"]["machine"]["backend"] == backend and backend in meta["training"]["machine"]
    assert meta["training"]["epochs_run"] == 2
    model = keras.saving.load_model(out / "model.keras")  # this process runs TensorFlow
    assert model.predict(np.zeros((2, 32, 32, 1), "float32"), verbose=0).shape == (2, 3)


def test_threads_option_sets_tensorflow_threads_in_a_fresh_process(manifest, tmp_path):
    import subprocess
    import sys

    if keras.backend.backend() != "tensorflow":
        pytest.skip("checks the TensorFlow setting")
    code = ("import tensorflow as tf; from edgecxr.stages.train.recipes import set_threads; set_threads(1); "
            "print(tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert proc.stdout.split() == ["1", "1"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_inside_an_epoch_is_a_line_per_tenth_off_a_terminal_and_one_live_line_on_it(manifest, tmp_path):
    log = io.StringIO()
    train(_cfg(manifest, tmp_path / "file", epochs=1, batch_size=1), log=log, verbose=1)  # 16 batches
    text = log.getvalue()
    assert "\r" not in text
    batch_lines = [ln for ln in text.splitlines() if ln.startswith("  epoch ")]
    assert [ln.split("batch ")[1].split()[0] for ln in batch_lines] == [f"{b}/16" for b in range(1, 16)]
    assert all(ln.startswith("  epoch 1/1  batch ") and " loss " in ln for ln in batch_lines)

    tty = _Terminal()
    train(_cfg(manifest, tmp_path / "tty", epochs=1, batch_size=1), log=tty, verbose=1)
    text = tty.getvalue()
    assert "\r\033[Kepoch 1/1  batch 16/16" in text  # the last batch is always drawn
    epoch_line = next(ln for ln in text.split("\n") if "val_loss" in ln)
    assert epoch_line.startswith("\r\033[Kepoch 1/1  ")  # cleared, then the summary on a clean line
    assert "batch" not in epoch_line.rsplit("\033[K", 1)[1]

    quiet = io.StringIO()
    train(_cfg(manifest, tmp_path / "quiet", epochs=1, batch_size=1), log=quiet, verbose=0)
    assert "  epoch 1/1  batch" not in quiet.getvalue()


def test_ema_selects_and_saves_the_averaged_weights_and_scores_the_raw_ones(manifest, tmp_path):
    from edgecxr.stages.train.loop import ema_pairs

    out = tmp_path / "ema"
    # float32: on a CPU with bf16 instructions "auto" trains in bf16, whose val_loss the float32 model misses by ~1%
    train(_cfg(manifest, out, epochs=3, ema=0.5, augment="none", precision="float32"))
    history = json.loads((out / "history.json").read_text())
    assert len(history["raw_val_loss"]) == len(history["val_loss"]) == 3
    assert history["raw_val_loss"] != history["val_loss"]  # two sets of weights were scored each epoch
    last = keras.saving.load_model(out / "checkpoints" / "last.keras")
    pairs = ema_pairs(last)  # the averages travel with the optimizer state, so a resumed run continues them
    assert pairs and any(not np.allclose(np.asarray(w), np.asarray(a)) for w, a in pairs)
    # last.keras holds the raw weights (training continues from them), not the averages
    raw = {w.path: np.asarray(w) for w in last.trainable_weights}
    assert all(np.array_equal(raw[w.path], np.asarray(w)) for w, _ in pairs)
    meta = Bundle.load(out).meta
    best = meta["training"]["best_epoch"]
    model = keras.saving.load_model(out / "model.keras")
    x_val, y_val = load_arrays(select(read_manifest(manifest), "val"), Bundle.load(out).spec, CLASSES_4)
    probs = model.predict(x_val, verbose=0)
    smoothed = keras.ops.convert_to_numpy(keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(
        np.eye(4)[y_val], probs))
    assert float(smoothed) == pytest.approx(history["val_loss"][best - 1], rel=1e-4)  # the averaged weights
    with pytest.raises(EdgeCXRError, match="ema must be in"):
        train(_cfg(manifest, tmp_path / "bad", ema=1.5))


def test_the_weight_average_warms_up_instead_of_keeping_the_random_start(manifest, tmp_path):
    """Keras's own EMA would still hold 0.998^8 = 98% of the random initial weights after 8 steps; with the
    warm-up momentum min(0.998, (1 + t) / (10 + t)) the product over the steps is under 1e-6."""
    from edgecxr.models import build_model
    from edgecxr.stages.train.loop import ema_pairs

    out = tmp_path / "warm-ema"
    cfg = _cfg(manifest, out, epochs=2, ema=0.998, augment="none", precision="float32")
    train(cfg)  # 16 train images, batch 4: 8 steps
    last = keras.saving.load_model(out / "checkpoints" / "last.keras")
    assert type(last.optimizer).__name__ == "WarmEMAAdamW"
    assert Bundle.load(out).meta["training"]["optimizer"]["class"] == "WarmEMAAdamW"
    keras.utils.set_random_seed(cfg.seed)  # the run's initial weights
    start = {w.path: np.asarray(w) for w in build_model("coronet", tiny=True, weights=None).trainable_weights}
    moved = [(np.abs(np.asarray(avg) - start[var.path]).sum(), np.abs(np.asarray(avg) - np.asarray(var)).sum())
             for var, avg in ema_pairs(last) if var.path in start]
    # nearer the last weights than the start by far (the plain average: 20x nearer the start)
    assert moved and sum(to_start for to_start, _ in moved) > 3 * sum(to_raw for _, to_raw in moved)


def test_a_run_killed_mid_epoch_resumes_with_the_same_next_batch_and_schedule_value(manifest, tmp_path):
    """SIGKILL during epoch 2, the same command again: epochs 2-3 start with the batch and learning rate
    an uninterrupted run starts them with (train.jsonl records both)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def command(out):
        return [sys.executable, "-m", "edgecxr", "train", "coronet", "--data", str(manifest), "--out", str(out),
                "--tiny", "--epochs", "3", "--batch-size", "1", "--seed", "3"]

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    whole = tmp_path / "whole"
    subprocess.run(command(whole), check=True, capture_output=True, env=env, timeout=600)
    killed = tmp_path / "killed"
    log = tmp_path / "killed.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=fh, env=env)
        deadline = time.monotonic() + 600
        while "epoch 2/3  batch " not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert "epoch 2/3  batch " in log.read_text() and "epoch 2/3  loss" not in log.read_text()  # killed mid-epoch 2
    resumed = subprocess.run(command(killed), capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {killed} after epoch 1/3" in resumed.stderr

    def records(out):
        return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]

    a, b = records(whole), records(killed)
    assert [r["epoch"] for r in b] == [1, 2, 3]  # the killed epoch left no record; nothing was run twice
    for ra, rb in zip(a, b, strict=True):
        assert rb["first_batch"] == ra["first_batch"]
        assert rb["lr_at_start"] == ra["lr_at_start"]
    assert len({r["first_batch"] for r in a}) == 3  # each epoch has its own order: the check can fail
    assert Bundle.load(killed).meta["training"]["resumed_at_epoch"] == [1]


def test_runs_go_outside_the_checkout_by_default(manifest, tmp_path, monkeypatch):
    from edgecxr.stages.train.config import RUNS_ENV, default_run_dir

    monkeypatch.setenv(RUNS_ENV, str(tmp_path / "runs"))
    assert default_run_dir("coronet") == tmp_path / "runs" / "coronet"
    result = CliRunner().invoke(main, ["train", "cnn-lstm", "--data", str(manifest), "--tiny", "--epochs", "1",
                                       "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "cnn-lstm" / "bundle.json").is_file()
    record = json.loads((tmp_path / "runs" / "cnn-lstm" / "train.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 1 and record["images_per_second"] > 0
    monkeypatch.delenv(RUNS_ENV)
    assert default_run_dir("x") == Path.home() / ".cache" / "edgecxr" / "runs" / "x"


def test_distilled_run_trains_on_mixed_targets_and_records_its_teachers(manifest, tmp_path, monkeypatch):
    """--soft-labels: the batches carry alpha x soft + (1 - alpha) x one-hot; bundle.json says which file taught it."""
    from edgecxr.data.manifest import read_manifest
    from edgecxr.stages.train import distill
    from edgecxr.stages.train import run as run_mod

    rows = [r for r in read_manifest(manifest) if r.split == "train"]
    soft = tmp_path / "soft.json"
    doc = distill.document({r.relative_path: [0.25] * 4 for r in rows}, CLASSES_4, [{"model": "t"}], "m.csv", "train")
    soft.write_text(json.dumps(doc))
    seen = {}
    real_batches = run_mod.fit.__globals__["batch_sequence"]

    def spy(*args, **kwargs):
        seq = real_batches(*args, **kwargs)
        seen["labels"] = seq.batch(0, 0)[1]
        return seq

    monkeypatch.setitem(run_mod.fit.__globals__, "batch_sequence", spy)
    out = tmp_path / "run"
    train(_cfg(manifest, out, epochs=1, soft_labels=str(soft), distill_alpha=0.5))
    labels = seen["labels"]
    assert labels.max(axis=1) == pytest.approx(0.625) and labels.min(axis=1) == pytest.approx(0.125)
    recorded = Bundle.load(out).meta["dataset"]["distillation"]
    assert recorded["alpha"] == 0.5 and recorded["teachers"] == ["t"] and len(recorded["sha256"]) == 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(doc, teachers=[{"model": "u"}])))
    with pytest.raises(EdgeCXRError, match="different options"):  # a resumed run learns from the same file
        train(_cfg(manifest, out, epochs=2, soft_labels=str(other), distill_alpha=0.5))
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps(dict(doc, labels=dict(list(doc["labels"].items())[1:]))))
    with pytest.raises(EdgeCXRError, match="1 of 16 training images have no soft label"):
        train(_cfg(manifest, tmp_path / "run2", epochs=1, soft_labels=str(gap)))


def test_mixup_run_records_its_alpha_and_resumes_only_with_it(manifest, tmp_path):
    """--mixup: the bundle's config names the alpha; a resume with another alpha is refused (other batches)."""
    out = tmp_path / "run"
    train(_cfg(manifest, out, epochs=1, mixup=0.2))
    assert Bundle.load(out).meta["training"]["config"]["mixup"] == 0.2
    with pytest.raises(EdgeCXRError, match="different options"):
        train(_cfg(manifest, out, epochs=2, mixup=0.4))
    with pytest.raises(EdgeCXRError, match="mixup alpha"):
        TrainConfig(model="coronet", data=str(manifest), out=str(out), mixup=-1.0).resolved()
