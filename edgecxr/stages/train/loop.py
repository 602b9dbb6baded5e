"""The fitting loop: resumable state checkpoints, BatchNorm recalibration, validation metrics."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.fileutil import read_json, write_json
from edgecxr.core.lazy import require
from edgecxr.models import build_model, default_spec
from edgecxr.stages.metrics import evaluate_predictions
from edgecxr.stages.train.augment import batch_sequence, get_policy, one_hot
from edgecxr.stages.train.config import (
    CKPT_DIR,
    MONITOR,
    TrainConfig,
    _arch_options,
    _identity,
    balanced_class_weights,
)
from edgecxr.stages.train.progress import progress_callback
from edgecxr.stages.train.recipes import (
    dtype_policy,
    dtype_scope,
    ema_optimizers,
    make_optimizer,
)
from edgecxr.stages.train.warm_start import is_onnx_weights, load_from_onnx


# -- one training run (also one CV fold) ------------------------------------------------------------
def _atomic_save(save: Any, path: Path, suffix: str) -> None:
    """Keras picks the format from the suffix, so the temp file keeps it; then os.replace."""
    tmp = path.with_name(f".{path.name[: -len(suffix)]}.tmp{suffix}")
    save(str(tmp))
    os.replace(tmp, path)


def batchnorm_layers(model: Any) -> list[Any]:
    """Every BatchNormalization layer, including those inside nested models (Xception)."""
    keras = require("keras", "training")
    found: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(batchnorm_layers(layer))
    return found


def recalibrate_batchnorm(model: Any, x: np.ndarray, batch_size: int, images: int, seed: int) -> int:
    """Replace BatchNorm moving statistics by the exact mean of batch statistics over training images.

    Why: trained from scratch, Xception's weights move faster than BatchNorm's moving averages
    (momentum 0.99, batch 10) can follow, and the lag compounds through its 40 BatchNorm layers:
    in our first CoroNet run the model scored 88% on val images with batch statistics but chance
    with its moving statistics, so inference (and val-loss model selection) saw a broken model.
    This is "precise BatchNorm" (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): with the
    weights frozen, forward passes in training mode with momentum k/(k+1) for the k-th batch make
    each moving statistic the plain average over the batches. Returns the number of batches used.
    """
    layers = batchnorm_layers(model)
    if not layers or images <= 0 or len(x) == 0:
        return 0
    idx = np.random.default_rng(seed).permutation(len(x))[: min(images, len(x))]
    saved = [layer.momentum for layer in layers]
    batches = 0
    try:
        for k, start in enumerate(range(0, len(idx), batch_size)):
            for layer in layers:
                layer.momentum = k / (k + 1)
            model(x[np.sort(idx[start : start + batch_size])], training=True)
            batches += 1
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    return batches


def initial_model(cfg: TrainConfig, opts: dict[str, Any], log: TextIO) -> Any:
    """The model a new run starts from: random, ImageNet, a weights file, or an exported ONNX file."""
    if not is_onnx_weights(cfg.weights):
        return build_model(cfg.model, weights=cfg.weights, **opts)
    model = build_model(cfg.model, weights=None, **opts)
    info = load_from_onnx(model, str(cfg.weights), cfg.model,
                          lambda side: build_model(cfg.model, weights=None, **{**opts, "input_size": side}))
    print(f"initial weights from {info['onnx']} ({info['layers']} layers; max difference "
          f"{info['max_diff']:.1e} against ONNX Runtime at {info['side']}px)", file=log, flush=True)
    return model


def ema_pairs(model: Any) -> list[tuple[Any, Any]]:
    """(weight, its moving average) for every trainable weight, [] when the optimizer keeps no EMA."""
    opt = getattr(model, "optimizer", None)
    opt = getattr(opt, "inner_optimizer", opt)  # mixed precision wraps it in a LossScaleOptimizer
    if not getattr(opt, "use_ema", False) or not hasattr(opt, "_model_variables_moving_average"):
        return []
    return list(zip(opt._trainable_variables, opt._model_variables_moving_average, strict=True))


def swap_ema(model: Any) -> bool:
    """Exchange the weights and their moving averages in place (twice restores both); False if no EMA.

    Keras' SwapEMAWeights callback does the same, but it leaves the averages in the model across
    on_epoch_end, where last.keras is saved: a run resumed from it would train the averages.
    """
    keras = require("keras", "training")
    pairs = ema_pairs(model)
    for var, avg in pairs:
        held = keras.ops.convert_to_numpy(var)
        var.assign(avg)
        avg.assign(held)
    return bool(pairs)


def current_lr(model: Any) -> float:
    """The learning rate the next step will use (the schedule at the optimizer's step count)."""
    keras = require("keras", "training")
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def batch_digest(batch: tuple[np.ndarray, ...]) -> str:
    """A short fingerprint of one batch (images, labels, weights) for the run log."""
    h = hashlib.sha256()
    for part in batch:
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:16]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class _StateCheckpoint:
    """Keras callback (built lazily): best weights, last model + state, early stopping, one log line per epoch."""

    @staticmethod
    def create(
        ckpt: Path,
        state: dict[str, Any],
        patience: int,
        total: int,
        log: TextIO,
        twin: Any,
        recalibrate: Callable[[Any], int] | None = None,
        batches: Any = None,
        val: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int = 32,
    ) -> Any:
        """`twin` is an uncompiled model of the same architecture: saving the best weights through it
        keeps Adam's moments (2x the model size) out of best.weights.h5. `recalibrate(model)` runs
        before each validation (precise BatchNorm statistics, see recalibrate_batchnorm).

        With an EMA optimizer, validation (and so model selection and best.weights.h5) sees the
        averaged weights; the raw weights are scored on `val` too (raw_val_loss, raw_val_accuracy),
        so every EMA run carries its own with/without comparison. Each epoch also appends one JSON
        line to train.jsonl beside checkpoints/: the metrics, the learning rate the epoch started
        with and a fingerprint of its first batch, which is what a resumed run must reproduce.
        """
        keras = require("keras", "training")
        jsonl = ckpt.parent / "train.jsonl"

        class StateCheckpoint(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                self._t0 = time.perf_counter()
                self._lr = current_lr(self.model)
                self._first = batch_digest(batches.batch(epoch, 0)) if batches is not None else None
                self._swapped = False

            def on_test_begin(self, logs: dict | None = None) -> None:
                self._swapped = swap_ema(self.model)
                if recalibrate is not None:
                    recalibrate(self.model)

            def on_test_end(self, logs: dict | None = None) -> None:
                if self._swapped:
                    swap_ema(self.model)
                    self._swapped = False

            def _raw_val(self) -> dict[str, float]:
                """Score the raw (not averaged) weights, with their own BatchNorm statistics."""
                if val is None or not ema_pairs(self.model):
                    return {}
                if recalibrate is not None:
                    recalibrate(self.model)
                scores = self.model.evaluate(val[0], val[1], batch_size=batch_size, verbose=0, return_dict=True)
                return {f"raw_val_{k}": float(v) for k, v in scores.items() if k in ("loss", "accuracy")}

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                logs = dict(logs or {})
                train_seconds = time.perf_counter() - self._t0
                current = float(logs.get(MONITOR, math.nan))
                improved = math.isfinite(current) and (state["best"] is None or current < state["best"])
                if improved:
                    swapped = swap_ema(self.model)  # the best checkpoint holds what validation scored
                    try:
                        twin.set_weights(self.model.get_weights())
                    finally:
                        if swapped:
                            swap_ema(self.model)
                    _atomic_save(twin.save_weights, ckpt / "best.weights.h5", ".weights.h5")
                logs.update(self._raw_val())
                seconds = time.perf_counter() - self._t0
                for key, value in logs.items():
                    state["history"].setdefault(key, []).append(float(value))
                state["epoch_seconds"].append(seconds)
                if improved:
                    state.update(best=current, best_epoch=epoch + 1, wait=0)
                else:
                    state["wait"] += 1
                state["epoch"] = epoch + 1
                if patience and state["wait"] >= patience:
                    self.model.stop_training = True
                    state["stopped_early"] = True
                _atomic_save(self.model.save, ckpt / "last.keras", ".keras")
                write_json(ckpt / "state.json", state)
                steps = int(self.params.get("steps") or 0)
                images = state.get("train_images") or 0
                rate = images / train_seconds if images and train_seconds > 0 else None
                recent = state["epoch_seconds"][-5:]
                eta = (total - epoch - 1) * float(np.mean(recent)) if not state.get("stopped_early") else 0.0
                record = {"epoch": epoch + 1, "of": total, "lr_at_start": self._lr, "first_batch": self._first,
                          "steps": steps, "seconds": round(seconds, 2), "images_per_second": rate,
                          "best_epoch": state["best_epoch"], "best": state["best"], "improved": improved,
                          "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **{k: float(v) for k, v in logs.items()}}
                with open(jsonl, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record, sort_keys=True) + "\n")
                parts = [f"epoch {epoch + 1}/{total}"]
                for key in ("loss", "accuracy", "val_loss", "val_accuracy", "raw_val_accuracy"):
                    if key in logs:
                        parts.append(f"{key} {logs[key]:.4f}")
                parts.append(f"{seconds:.1f}s")
                if rate:
                    parts.append(f"{rate:.1f} img/s")
                if improved:
                    parts.append("* best")
                elif state["best"] is not None:
                    parts.append(f"best {MONITOR} {state['best']:.4f} (epoch {state['best_epoch']})")
                if state.get("stopped_early"):
                    parts.append(f"(early stop: no better {MONITOR} in {patience} epochs)")
                elif epoch + 1 < total:
                    parts.append(f"ETA {_duration(eta)}")
                print("  ".join(parts), file=log, flush=True)

        return StateCheckpoint()


def fit(
    workdir: Path,
    cfg: TrainConfig,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    classes: Sequence[str],
    seed: int,
    log: TextIO,
    verbose: int = 0,
    targets: np.ndarray | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train (or resume) one model in `workdir`; return the best-val-loss model (uncompiled) and the run state.

    `targets` ((N, C) rows summing to 1) replace the one-hot training labels (distillation); the
    validation loss stays against the true labels, so model selection is unchanged.
    """
    keras = require("keras", "training")
    x_train, y_train, x_val, y_val = arrays
    ckpt = workdir / CKPT_DIR
    state_path = ckpt / "state.json"
    spec = default_spec(cfg.model, cfg.input_size)
    opts = _arch_options(cfg, classes)
    session_t0 = time.perf_counter()
    if state_path.is_file() and cfg.resume is not False:  # None: resume by itself, and say so
        state = read_json(state_path)
        if state["identity"] != _identity(cfg):
            raise EdgeCXRError(
                f"{workdir}: cannot resume with different options than the saved run "
                f"(saved {state['identity']}, now {_identity(cfg)}); choose another output folder",
                params=("out",),
            )
        if not (ckpt / "last.keras").is_file():
            raise EdgeCXRError(f"{workdir}: cannot resume, {ckpt / 'last.keras'} is gone (--keep best drops it); "
                               "the bundle's model.keras is the finished model, or choose another output folder",
                               params=("out",))
        ema_optimizers()  # registers the warm-up EMA optimizers that last.keras may name
        model = keras.saving.load_model(ckpt / "last.keras")
        if state.get("stopped_early") and (not cfg.patience or state["wait"] < cfg.patience):
            state.pop("stopped_early")  # resumed with a longer (or no) patience: training goes on
        state["resumed_at_epoch"].append(state["epoch"])
        note = "" if state["best"] is None else f" (best {MONITOR} {state['best']:.4f} at epoch {state['best_epoch']})"
        print(f"resuming {workdir} after epoch {state['epoch']}/{cfg.epochs}{note}", file=log, flush=True)
    elif state_path.is_file() or (workdir / "bundle.json").is_file():
        if cfg.resume is not False:
            raise EdgeCXRError(f"{workdir}: cannot resume, {state_path} is missing; choose another output folder",
                               params=("out",))
        raise EdgeCXRError(f"{workdir} already holds a training run; resume it, or choose another output folder",
                           params=("resume", "out"))
    else:
        if cfg.resume:
            print(f"nothing to resume in {workdir}; starting a new run", file=log, flush=True)
        keras.utils.set_random_seed(seed)
        with dtype_scope(dtype_policy(cfg.precision)):
            model = initial_model(cfg, opts, log)
        model.compile(
            optimizer=make_optimizer(cfg, math.ceil(len(x_train) / cfg.batch_size)),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
        state = {"identity": _identity(cfg), "epoch": 0, "best": None, "best_epoch": None, "wait": 0,
                 "history": {}, "epoch_seconds": [], "resumed_at_epoch": [], "wall_seconds": 0.0}
        ckpt.mkdir(parents=True, exist_ok=True)
    state["config"] = cfg.to_dict()
    state["train_images"] = len(x_train)
    opt = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    state["optimizer_class"] = type(opt).__name__  # WarmEMA* where the weight average warms up
    start = int(state["epoch"])
    best = build_model(cfg.model, weights=None, **opts)  # uncompiled: the deployable artifact has no optimizer
    if start < cfg.epochs and not state.get("stopped_early"):
        keras.utils.set_random_seed(seed + start)
        cw = balanced_class_weights(y_train, len(classes)) if cfg.class_weights else None
        batches = batch_sequence(x_train, y_train, len(classes), cfg.batch_size, get_policy(cfg.augment), seed,
                                 class_weights=cw, scale=spec.scale, offset=spec.offset, targets=targets,
                                 mixup=cfg.mixup)
        batches.set_epoch(start)
        def recalibrate(m: Any) -> int:
            return recalibrate_batchnorm(m, x_train, cfg.batch_size, cfg.bn_recalibration, seed)

        val = (x_val, one_hot(y_val, len(classes)))
        callbacks = [
            keras.callbacks.TerminateOnNaN(),
            *([progress_callback(log, cfg.epochs)] if verbose else []),
            _StateCheckpoint.create(ckpt, state, cfg.patience, cfg.epochs, log, twin=best, recalibrate=recalibrate,
                                    batches=batches, val=val, batch_size=cfg.batch_size),
        ]
        model.fit(batches, validation_data=val, validation_batch_size=cfg.batch_size,
                  epochs=cfg.epochs, initial_epoch=start, callbacks=callbacks, verbose=0)
    state["wall_seconds"] = float(state.get("wall_seconds", 0.0)) + time.perf_counter() - session_t0
    write_json(state_path, state)
    if not (ckpt / "best.weights.h5").is_file():
        raise EdgeCXRError(f"{workdir}: no epoch produced a finite {MONITOR}; nothing to save")
    best.load_weights(ckpt / "best.weights.h5")
    return best, state


# -- reporting --------------------------------------------------------------------------------------
def val_metrics(model: Any, x: np.ndarray, y: np.ndarray, classes: Sequence[str], seed: int) -> dict[str, Any]:
    """Metrics of `model` on (x, y), the same report `edgecxr evaluate` writes."""

    probs = model.predict(x, batch_size=32, verbose=0)
    return evaluate_predictions(y, probs, classes, bootstrap=1000, seed=seed)
