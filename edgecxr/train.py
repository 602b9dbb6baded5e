"""Training: the papers' recipes or our from-scratch recipe on `train`, model selection on `val`, a bundle out.

The loop uses Keras 3 only (no `tf.*`), so it runs under TensorFlow, JAX or PyTorch
(KERAS_BACKEND); augmentation and batching are NumPy (`edgecxr.augment`). The saved model.keras is
always float32, whatever precision trained it, and exports with TensorFlow as before.

`--recipe scratch` (`edgecxr.recipes.SCRATCH_RECIPES`, the default when the initial weights are random) is what the
reference models were trained with; see its comment and docs/REPRODUCTION.md for the ablation.

Paper recipes (`--recipe paper`, `edgecxr.recipes.PAPER_RECIPES`; every value can be overridden from the CLI):
  * CoroNet (Khan et al. 2020): Adam 1e-4, batch 10, 80 epochs, ImageNet-initialised Xception,
    no augmentation or class weights (none described; our 4 classes are balanced, 212-238 images).
    No early stopping by default: the paper trained all 80 epochs.
  * CNN-LSTM (Islam et al. 2020): Adam 1e-4, "maximum epochs 200", from scratch. Batch 16 (not in
    the preprint; the authors' public code uses 16, and it keeps a 224x224 VGG-sized step within a
    few GB of RAM). Early stopping after 20 epochs without a better val loss, which is what makes
    "maximum 200" meaningful. Augmentation on (the paper lists it): random rotation +-10 deg, shift
    +-5 %, zoom +-10 %, black fill (`edgecxr.augment`), applied to the batches so it never enters
    the exported graph. Balanced class weights on: merging bacterial + viral makes "pneumonia" twice the size of
    the other classes, while the paper's set was balanced (141/140/140).

Model selection: the checkpoint with the lowest val loss is kept (ties go to the earlier epoch).
Loss rather than accuracy, because on a 129-image val set accuracy moves in 0.8 % steps and ties
often, while loss still ranks epochs. Early stopping watches the same quantity. `test` and `calib`
are never read: they are never even decoded.

Resumability: after every epoch, checkpoints/last.keras (model + optimizer state) and
checkpoints/state.json (epoch, history, best val loss, early-stopping counter, config) are written
atomically, and checkpoints/best.weights.h5 whenever val loss improves. `resume=True` reloads them
and continues at the next epoch; the data order RNG is re-seeded with seed + epoch, so a resumed
run is reproducible but not bit-identical to an uninterrupted one. checkpoints/ can be deleted once
the run is final (CoroNet's last.keras is ~400 MB because of Adam's moments).

Cross-validation (`folds=K`): patient-group-level folds over train+val (stratified by each group's
class), each fold trained from a fresh model seeded with seed + fold. Fold k is held out for
evaluation; model selection and early stopping use ~15 % of the remaining groups, so the held-out
fold never influences its own model. Results go to out/folds/fold_k/ (a bundle each) and out/cv.json.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edgecxr._lazy import require
from edgecxr.augment import batch_sequence, get_policy, one_hot
from edgecxr.bundle import Bundle, git_commit
from edgecxr.data.dataset import load_arrays
from edgecxr.data.manifest import Record, classes_for, label_indices, manifest_sha256, read_manifest, select
from edgecxr.errors import DataError, EdgeCXRError
from edgecxr.fileutil import read_json, write_json
from edgecxr.models import build_model, default_input_size, default_spec, model_options
from edgecxr.recipes import (
    OPTIMIZERS,
    PAPER_RECIPES,
    PRECISIONS,
    RECIPES,
    SCHEDULES,
    dtype_policy,
    dtype_scope,
    make_optimizer,
    set_threads,
)

MONITOR = "val_loss"
#: Share of the training pool's patient groups used for model selection inside a CV fold.
CV_SELECT_FRACTION = 0.15
CKPT_DIR = "checkpoints"


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (None = the model's recipe default, resolved by `resolved`)."""

    model: str
    data: str
    out: str
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    input_size: int | None = None
    weights: str | None = None
    seed: int = 0
    patience: int | None = None
    class_weights: bool | None = None
    augment: str | None = None
    folds: int = 0
    limit_per_class: int | None = None
    tiny: bool = False
    resume: bool = False
    #: training images used to re-estimate BatchNorm statistics before each validation (0: off)
    bn_recalibration: int = 200
    #: "paper" or "scratch"; None: "scratch" when the initial weights are random, else "paper"
    recipe: str | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: int | None = None
    label_smoothing: float | None = None
    precision: str | None = None
    #: CPU threads for the backend's kernels (None: the backend's default, all cores)
    threads: int | None = None

    def resolved(self) -> TrainConfig:
        """Fill unset options from the model's recipe (tiny runs never download weights)."""
        if self.model not in PAPER_RECIPES:
            raise EdgeCXRError(f"unknown model {self.model!r}; expected one of {sorted(PAPER_RECIPES)}")
        recipe_name = self.recipe
        if recipe_name is None:
            weights = "none" if self.tiny else (self.weights or PAPER_RECIPES[self.model]["weights"])
            recipe_name = "scratch" if str(weights).lower() == "none" else "paper"
        if recipe_name not in RECIPES:
            raise EdgeCXRError(f"unknown recipe {recipe_name!r}; expected one of {sorted(RECIPES)}")
        recipe = dict(RECIPES[recipe_name][self.model])
        if self.tiny:
            recipe["weights"] = "none"
        values = {k: (recipe[k] if getattr(self, k) is None else getattr(self, k)) for k in recipe}
        size = self.input_size or default_input_size(self.model, self.tiny)
        cfg = dataclasses.replace(self, input_size=int(size), recipe=recipe_name, **values)
        for name in ("epochs", "batch_size"):
            if getattr(cfg, name) < 1:
                raise EdgeCXRError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if cfg.lr <= 0 or cfg.patience < 0 or cfg.folds < 0:
            raise EdgeCXRError("lr must be > 0, patience >= 0 and folds >= 0")
        if cfg.folds == 1:
            raise EdgeCXRError("folds must be 0 (no cross-validation) or >= 2")
        if cfg.limit_per_class is not None and cfg.limit_per_class < 1:
            raise EdgeCXRError("limit_per_class must be >= 1")
        if cfg.optimizer not in OPTIMIZERS or cfg.schedule not in SCHEDULES or cfg.precision not in PRECISIONS:
            raise EdgeCXRError(f"optimizer must be one of {OPTIMIZERS}, schedule one of {SCHEDULES}, "
                               f"precision one of {PRECISIONS}")
        get_policy(cfg.augment)
        if not 0.0 <= cfg.label_smoothing < 1.0 or cfg.weight_decay < 0 or cfg.warmup_epochs < 0:
            raise EdgeCXRError("label smoothing must be in [0, 1), weight decay and warm-up epochs >= 0")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- data -------------------------------------------------------------------------------------------
def limit_records(records: Sequence[Record], classes: Sequence[str], n: int | None, seed: int) -> list[Record]:
    """At most `n` records per model class (seeded random choice, manifest order kept); None = all."""
    if n is None:
        return list(records)
    labels = label_indices(records, classes)
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for c in range(len(classes)):
        idx = np.flatnonzero(labels == c)
        keep.update(rng.permutation(idx)[:n].tolist())
    return [r for i, r in enumerate(records) if i in keep]


def group_folds(records: Sequence[Record], classes: Sequence[str], k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) per record; all images of a patient group share a fold.

    Groups are stratified by their majority class: within a class, groups (shuffled, then largest
    first) go to the fold holding the fewest images of that class so far, so folds get similar class
    mixes even though COVID patients contribute up to 8 images each.
    """
    labels = label_indices(records, classes)
    members: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        members[rec.patient_group].append(i)
    if len(members) < k:
        raise DataError(f"cannot make {k} folds from {len(members)} patient groups")
    rng = np.random.default_rng(seed)
    names = sorted(members)
    order = rng.permutation(len(names))
    by_class: dict[int, list[str]] = defaultdict(list)
    for j in order:
        g = names[j]
        by_class[Counter(labels[members[g]].tolist()).most_common(1)[0][0]].append(g)
    fold_of = np.full(len(records), -1, dtype=np.int64)
    totals = np.zeros(k, dtype=np.int64)
    for c in sorted(by_class):
        per_class = np.zeros(k, dtype=np.int64)
        for g in sorted(by_class[c], key=lambda g: -len(members[g])):  # stable: shuffled order within a size
            f = int(np.lexsort((np.arange(k), totals, per_class))[0])
            fold_of[members[g]] = f
            per_class[f] += len(members[g])
            totals[f] += len(members[g])
    return fold_of


def _counts(records: Sequence[Record], classes: Sequence[str]) -> dict[str, int]:
    labels = label_indices(records, classes)
    return {c: int((labels == i).sum()) for i, c in enumerate(classes)}


def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """n / (k * count_c), as scikit-learn's "balanced"; classes absent from y get weight 1."""
    counts = np.bincount(y, minlength=n_classes)
    present = int((counts > 0).sum())
    return {c: (len(y) / (present * counts[c]) if counts[c] else 1.0) for c in range(n_classes)}


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
    ) -> Any:
        """`twin` is an uncompiled model of the same architecture: saving the best weights through it
        keeps Adam's moments (2x the model size) out of best.weights.h5. `recalibrate(model)` runs
        before each validation (precise BatchNorm statistics, see recalibrate_batchnorm)."""
        keras = require("keras", "training")

        class StateCheckpoint(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                self._t0 = time.perf_counter()

            def on_test_begin(self, logs: dict | None = None) -> None:
                if recalibrate is not None:
                    recalibrate(self.model)

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                logs = dict(logs or {})
                seconds = time.perf_counter() - self._t0
                for key, value in logs.items():
                    state["history"].setdefault(key, []).append(float(value))
                state["epoch_seconds"].append(seconds)
                current = float(logs.get(MONITOR, math.nan))
                improved = math.isfinite(current) and (state["best"] is None or current < state["best"])
                if improved:
                    state.update(best=current, best_epoch=epoch + 1, wait=0)
                    twin.set_weights(self.model.get_weights())
                    _atomic_save(twin.save_weights, ckpt / "best.weights.h5", ".weights.h5")
                else:
                    state["wait"] += 1
                state["epoch"] = epoch + 1
                if patience and state["wait"] >= patience:
                    self.model.stop_training = True
                    state["stopped_early"] = True
                _atomic_save(self.model.save, ckpt / "last.keras", ".keras")
                write_json(ckpt / "state.json", state)
                parts = [f"epoch {epoch + 1}/{total}"]
                for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                    if key in logs:
                        parts.append(f"{key} {logs[key]:.4f}")
                parts.append(f"{seconds:.1f}s")
                if improved:
                    parts.append("* best")
                if state.get("stopped_early"):
                    parts.append(f"(early stop: no better {MONITOR} in {patience} epochs)")
                print("  ".join(parts), file=log, flush=True)

        return StateCheckpoint()


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    """Options a resumed run must share with the saved one (epochs/patience may change)."""
    keys = ("model", "input_size", "tiny", "batch_size", "augment", "class_weights", "limit_per_class", "seed",
            "recipe", "optimizer", "schedule", "label_smoothing", "precision")
    return {k: getattr(cfg, k) for k in keys}


def _arch_options(cfg: TrainConfig, classes: Sequence[str]) -> dict[str, Any]:
    """Architecture options of the build (initial weights are a training choice, kept in the config)."""
    opts = model_options(cfg.model, tiny=cfg.tiny, input_size=cfg.input_size, num_classes=len(classes))
    opts.pop("weights", None)
    return opts


def fit(
    workdir: Path,
    cfg: TrainConfig,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    classes: Sequence[str],
    seed: int,
    log: TextIO,
    verbose: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Train (or resume) one model in `workdir`; return the best-val-loss model (uncompiled) and the run state."""
    keras = require("keras", "training")
    x_train, y_train, x_val, y_val = arrays
    ckpt = workdir / CKPT_DIR
    state_path = ckpt / "state.json"
    spec = default_spec(cfg.model, cfg.input_size)
    opts = _arch_options(cfg, classes)
    session_t0 = time.perf_counter()
    if state_path.is_file() and cfg.resume:
        state = read_json(state_path)
        if state["identity"] != _identity(cfg):
            raise EdgeCXRError(
                f"{workdir}: --resume with different options than the saved run "
                f"(saved {state['identity']}, now {_identity(cfg)})"
            )
        model = keras.saving.load_model(ckpt / "last.keras")
        if state.get("stopped_early") and (not cfg.patience or state["wait"] < cfg.patience):
            state.pop("stopped_early")  # resumed with a longer (or no) patience: training goes on
        state["resumed_at_epoch"].append(state["epoch"])
        print(f"resuming {workdir} after epoch {state['epoch']}", file=log, flush=True)
    elif state_path.is_file() or (workdir / "bundle.json").is_file():
        if cfg.resume:
            raise EdgeCXRError(f"{workdir}: cannot resume, {state_path} is missing; choose another --out")
        raise EdgeCXRError(f"{workdir} already holds a training run; pass --resume to continue it, or choose another --out")
    else:
        if cfg.resume:
            print(f"nothing to resume in {workdir}; starting a new run", file=log, flush=True)
        keras.utils.set_random_seed(seed)
        with dtype_scope(dtype_policy(cfg.precision)):
            model = build_model(cfg.model, weights=cfg.weights, **opts)
        model.compile(
            optimizer=make_optimizer(cfg, math.ceil(len(x_train) / cfg.batch_size)),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
        state = {"identity": _identity(cfg), "epoch": 0, "best": None, "best_epoch": None, "wait": 0,
                 "history": {}, "epoch_seconds": [], "resumed_at_epoch": [], "wall_seconds": 0.0}
        ckpt.mkdir(parents=True, exist_ok=True)
    state["config"] = cfg.to_dict()
    start = int(state["epoch"])
    best = build_model(cfg.model, weights=None, **opts)  # uncompiled: the deployable artifact has no optimizer
    if start < cfg.epochs and not state.get("stopped_early"):
        keras.utils.set_random_seed(seed + start)
        cw = balanced_class_weights(y_train, len(classes)) if cfg.class_weights else None
        batches = batch_sequence(x_train, y_train, len(classes), cfg.batch_size, get_policy(cfg.augment), seed,
                                 class_weights=cw, scale=spec.scale, offset=spec.offset)
        batches.set_epoch(start)
        def recalibrate(m: Any) -> int:
            return recalibrate_batchnorm(m, x_train, cfg.batch_size, cfg.bn_recalibration, seed)

        callbacks = [
            keras.callbacks.TerminateOnNaN(),
            _StateCheckpoint.create(ckpt, state, cfg.patience, cfg.epochs, log, twin=best, recalibrate=recalibrate),
        ]
        model.fit(batches, validation_data=(x_val, one_hot(y_val, len(classes))), validation_batch_size=cfg.batch_size,
                  epochs=cfg.epochs, initial_epoch=start, callbacks=callbacks, verbose=verbose)
    state["wall_seconds"] = float(state.get("wall_seconds", 0.0)) + time.perf_counter() - session_t0
    write_json(state_path, state)
    if not (ckpt / "best.weights.h5").is_file():
        raise EdgeCXRError(f"{workdir}: no epoch produced a finite {MONITOR}; nothing to save")
    best.load_weights(ckpt / "best.weights.h5")
    return best, state


# -- reporting --------------------------------------------------------------------------------------
def val_metrics(model: Any, x: np.ndarray, y: np.ndarray, classes: Sequence[str], seed: int) -> dict[str, Any]:
    """Metrics of `model` on (x, y), the same report `edgecxr evaluate` writes."""
    from edgecxr.metrics import evaluate_predictions

    probs = model.predict(x, batch_size=32, verbose=0)
    return evaluate_predictions(y, probs, classes, bootstrap=1000, seed=seed)


def _figures(out: Path, history: dict[str, list[float]], metrics: dict[str, Any], classes: Sequence[str]) -> dict[str, str]:
    """curves.png and confusion.png (matplotlib comes with the `train` extra)."""
    from edgecxr import plots

    plots.plot_history(history, out / "curves.png")
    plots.plot_confusion(np.asarray(metrics["confusion_matrix"]), classes, out / "confusion.png", title="val")
    return {"curves": "curves.png", "confusion": "confusion.png"}


def machine_info() -> dict[str, Any]:
    """Where a run happened: enough to explain a timing or a numerical difference later."""
    keras = require("keras", "training")
    backend = keras.backend.backend()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": backend,
        **_backend_devices(backend),
    }


def _backend_devices(backend: str) -> dict[str, Any]:
    """The backend's version and the devices it sees."""
    if backend == "tensorflow":
        import tensorflow as tf

        return {"tensorflow": tf.__version__,
                "devices": [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()]}
    if backend == "jax":
        import jax

        return {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
    if backend == "torch":
        import torch

        devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return {"torch": torch.__version__, "devices": devices}
    return {}


def _write_bundle(
    out: Path, cfg: TrainConfig, model: Any, state: dict[str, Any], classes: Sequence[str],
    dataset: dict[str, Any], metrics: dict[str, Any], metrics_key: str,
) -> Bundle:
    spec = default_spec(cfg.model, cfg.input_size)
    bundle = Bundle.create(out, cfg.model, classes, spec)
    keras_path = bundle.default_path("keras")
    _atomic_save(model.save, keras_path, ".keras")
    bundle.set_artifact("keras", keras_path)
    write_json(out / "history.json", state["history"])
    figures = _figures(out, state["history"], metrics, classes)
    opts = _arch_options(cfg, classes)
    bundle.meta.update(
        architecture={"name": cfg.model, "options": opts, "params": int(model.count_params()), "tiny": cfg.tiny},
        training={
            "config": cfg.to_dict(),
            "recipe": cfg.recipe,
            "optimizer": {"name": cfg.optimizer, "learning_rate": cfg.lr, "weight_decay": cfg.weight_decay,
                          "schedule": cfg.schedule, "warmup_epochs": cfg.warmup_epochs},
            "loss": {"name": "categorical_crossentropy", "label_smoothing": cfg.label_smoothing},
            "dtype_policy": dtype_policy(cfg.precision),
            "monitor": MONITOR,
            "epochs_run": state["epoch"],
            "best_epoch": state["best_epoch"],
            "best_val_loss": state["best"],
            "stopped_early": bool(state.get("stopped_early")),
            "resumed_at_epoch": state["resumed_at_epoch"],
            "train_seconds": float(sum(state["epoch_seconds"])),
            "wall_seconds": state["wall_seconds"],
            "seconds_per_epoch": float(np.mean(state["epoch_seconds"])) if state["epoch_seconds"] else None,
            "history": "history.json",
            "figures": figures,
            "machine": machine_info(),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        dataset=dataset,
        git_commit=git_commit(),
        metrics={metrics_key: metrics},
    )
    bundle.save()
    return bundle


# -- entry point ------------------------------------------------------------------------------------
def train(cfg: TrainConfig, log: TextIO | None = None, verbose: int = 0) -> dict[str, Any]:
    """Run `edgecxr train`: one model (bundle in cfg.out) or, with folds >= 2, a cross-validation.

    Returns a JSON-able summary (what `--json` prints).
    """
    cfg = cfg.resolved()
    log = log or sys.stderr
    require("keras", "training")
    set_threads(cfg.threads)
    classes = classes_for(cfg.model)
    records = read_manifest(cfg.data)
    out = Path(cfg.out)
    dataset = {"manifest": str(Path(cfg.data).resolve()), "sha256": manifest_sha256(cfg.data),
               "limit_per_class": cfg.limit_per_class}
    existing = [p for p in (out / CKPT_DIR / "state.json", out / "bundle.json", out / "cv.json") if p.is_file()]
    if existing and not cfg.resume:  # checked before minutes of image decoding, not after
        raise EdgeCXRError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")
    if cfg.folds:
        return _cross_validate(cfg, records, classes, dataset, out, log, verbose)
    train_recs = limit_records(select(records, "train"), classes, cfg.limit_per_class, cfg.seed)
    val_recs = limit_records(select(records, "val"), classes, cfg.limit_per_class, cfg.seed)
    spec = default_spec(cfg.model, cfg.input_size)
    progress = "loading images" if log.isatty() else False
    x_train, y_train = load_arrays(train_recs, spec, classes, progress=progress)
    x_val, y_val = load_arrays(val_recs, spec, classes, progress=progress)
    print(f"{cfg.model}: {len(train_recs)} train / {len(val_recs)} val images at {spec.id}, "
          f"batch {cfg.batch_size}, up to {cfg.epochs} epochs -> {out}", file=log, flush=True)
    model, state = fit(out, cfg, (x_train, y_train, x_val, y_val), classes, cfg.seed, log, verbose)
    metrics = val_metrics(model, x_val, y_val, classes, cfg.seed)
    dataset.update(train_split="train", val_split="val",
                   counts={"train": _counts(train_recs, classes), "val": _counts(val_recs, classes)})
    bundle = _write_bundle(out, cfg, model, state, classes, dataset, metrics, "val")
    summary = _summary(bundle, state, metrics)
    print(f"best epoch {state['best_epoch']} (val loss {state['best']:.4f}), val accuracy "
          f"{metrics['accuracy']:.4f}; bundle {bundle.path}", file=log, flush=True)
    return summary


def _summary(bundle: Bundle, state: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    keep = ("n", "accuracy", "macro_auc", "loss")
    return {
        "bundle": str(bundle.dir),
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "best_val_loss": state["best"],
        "wall_seconds": state["wall_seconds"],
        "metrics": {k: metrics[k] for k in keep if k in metrics},
    }


def _cross_validate(
    cfg: TrainConfig, records: list[Record], classes: Sequence[str], dataset: dict[str, Any],
    out: Path, log: TextIO, verbose: int,
) -> dict[str, Any]:
    keras = require("keras", "training")
    pool = limit_records(select(records, ("train", "val")), classes, cfg.limit_per_class, cfg.seed)
    fold_of = group_folds(pool, classes, cfg.folds, cfg.seed)
    spec = default_spec(cfg.model, cfg.input_size)
    x_all, y_all = load_arrays(pool, spec, classes, progress="loading images" if log.isatty() else False)
    results = []
    for k in range(cfg.folds):
        fold_dir = out / "folds" / f"fold_{k + 1}"
        held = np.flatnonzero(fold_of == k)
        rest = np.flatnonzero(fold_of != k)
        n_sub = max(2, round(1 / CV_SELECT_FRACTION))
        sub = group_folds([pool[i] for i in rest], classes, min(n_sub, len({pool[i].patient_group for i in rest})),
                          cfg.seed + 1000 + k)
        sel, trn = rest[sub == 0], rest[sub != 0]
        done = fold_dir / "fold.json"
        if cfg.resume and done.is_file():
            results.append(read_json(done))
            print(f"fold {k + 1}/{cfg.folds}: already done", file=log, flush=True)
            continue
        print(f"fold {k + 1}/{cfg.folds}: {len(trn)} train / {len(sel)} select / {len(held)} held-out images",
              file=log, flush=True)
        model, state = fit(fold_dir, cfg, (x_all[trn], y_all[trn], x_all[sel], y_all[sel]), classes,
                           cfg.seed + k, log, verbose)
        metrics = val_metrics(model, x_all[held], y_all[held], classes, cfg.seed)
        fold_dataset = dict(dataset, cv={"fold": k + 1, "folds": cfg.folds, "pool_splits": ["train", "val"],
                                         "held_out_groups": sorted({pool[i].patient_group for i in held}),
                                         "counts": {"train": _counts([pool[i] for i in trn], classes),
                                                    "select": _counts([pool[i] for i in sel], classes),
                                                    "held_out": _counts([pool[i] for i in held], classes)}})
        bundle = _write_bundle(fold_dir, cfg, model, state, classes, fold_dataset, metrics, "cv_held_out")
        result = {"fold": k + 1, **_summary(bundle, state, metrics)}
        write_json(done, result)
        results.append(result)
        print(f"fold {k + 1}: held-out accuracy {metrics['accuracy']:.4f}", file=log, flush=True)
        del model
        keras.backend.clear_session()
    summary: dict[str, Any] = {"model": cfg.model, "folds": cfg.folds, "config": cfg.to_dict(), "dataset": dataset,
                               "git_commit": git_commit(), "results": results}
    for key in ("accuracy", "macro_auc"):
        values = [r["metrics"][key] for r in results if r["metrics"].get(key) is not None]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                            "values": values}
    write_json(out / "cv.json", summary)
    acc = summary.get("accuracy", {})
    print(f"{cfg.folds}-fold CV accuracy {acc.get('mean', float('nan')):.4f} +- {acc.get('std', float('nan')):.4f}; "
          f"{out / 'cv.json'}", file=log, flush=True)
    return {"cv": str(out / "cv.json"), **{k: summary[k] for k in ("folds", "results") if k in summary},
            **({"accuracy": summary["accuracy"]} if "accuracy" in summary else {})}
