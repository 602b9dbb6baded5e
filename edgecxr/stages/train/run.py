"""Training: the papers' recipes or our from-scratch recipe on `train`, model selection on `val`, a bundle out.

The loop uses Keras 3 only (no `tf.*`), so it runs under TensorFlow, JAX or PyTorch
(KERAS_BACKEND); augmentation and batching are NumPy (`edgecxr.augment`). The saved model.keras is
always float32, whatever precision trained it, and exports with TensorFlow as before.

`--recipe scratch` (`edgecxr.stages.train.recipes.SCRATCH_RECIPES`, the default when the initial weights are random) is what the
reference models were trained with; see its comment and docs/REPRODUCTION.md for the ablation.

Paper recipes (`--recipe paper`, `edgecxr.stages.train.recipes.PAPER_RECIPES`; every value can be overridden from the CLI):
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
atomically, and checkpoints/best.weights.h5 whenever val loss improves; train.jsonl gets one record
per epoch. The same command continues after the last saved epoch (`resume=None`, the default); every
batch is a pure function of (seed, epoch, index), so a run killed mid-epoch resumes with the batch
and learning rate an uninterrupted run would have used (tests/test_train.py kills one with SIGKILL).
Once the bundle is written, `keep` says which checkpoints stay (CoroNet's last.keras is ~540 MB
because of Adam's moments) and the size left is printed.

Cross-validation (`folds=K`): patient-group-level folds over train+val (stratified by each group's
class), each fold trained from a fresh model seeded with seed + fold. Fold k is held out for
evaluation; model selection and early stopping use ~15 % of the remaining groups, so the held-out
fold never influences its own model. Results go to out/folds/fold_k/ (a bundle each) and out/cv.json.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edgecxr import models
from edgecxr.core.bundle import Bundle, git_commit
from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.fileutil import read_json, recorded_path, sha256_file, write_json
from edgecxr.core.lazy import require
from edgecxr.data.manifest import Record, select
from edgecxr.data.packed import data_identity, load_training_arrays, read_records
from edgecxr.models import default_spec
from edgecxr.stages.train import distill
from edgecxr.stages.train.augment import one_hot
from edgecxr.stages.train.config import (
    CKPT_DIR,
    CV_SELECT_FRACTION,
    MONITOR,
    TrainConfig,
    _arch_options,
    _counts,
    group_folds,
    limit_records,
)
from edgecxr.stages.train.loop import _atomic_save, fit, val_metrics
from edgecxr.stages.train.recipes import (
    dtype_policy,
    set_threads,
)


def _figures(out: Path, history: dict[str, list[float]], metrics: dict[str, Any], classes: Sequence[str]) -> dict[str, str]:
    """curves.png and confusion.png (matplotlib comes with the `train` extra)."""
    from edgecxr.stages import plots

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
                          "schedule": cfg.schedule, "warmup_epochs": cfg.warmup_epochs,
                          "class": state.get("optimizer_class")},
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
    classes = models.get(cfg.model).classes
    records = read_records(cfg.data)  # a manifest CSV, or a pack of its images (edgecxr.data.packed)
    out = Path(cfg.out)
    dataset = {**data_identity(cfg.data), "limit_per_class": cfg.limit_per_class}
    existing = [p for p in (out / CKPT_DIR / "state.json", out / "bundle.json", out / "cv.json") if p.is_file()]
    if existing and cfg.resume is False:  # checked before minutes of image decoding, not after
        raise EdgeCXRError(f"{out} already holds a training run; resume it, or choose another output folder",
                           params=("resume", "out"))
    if cfg.folds:
        return _cross_validate(cfg, records, classes, dataset, out, log, verbose)
    train_recs = limit_records(select(records, "train"), classes, cfg.limit_per_class, cfg.seed)
    val_recs = limit_records(select(records, "val"), classes, cfg.limit_per_class, cfg.seed)
    spec = default_spec(cfg.model, cfg.input_size)
    progress = "loading images" if log.isatty() else False
    x_train, y_train = load_training_arrays(cfg.data, train_recs, spec, classes, progress=progress)
    x_val, y_val = load_training_arrays(cfg.data, val_recs, spec, classes, progress=progress)
    print(f"{cfg.model}: {len(train_recs)} train / {len(val_recs)} val images at {spec.id}, "
          f"batch {cfg.batch_size}, up to {cfg.epochs} epochs -> {out}", file=log, flush=True)
    targets, distilled = _distillation(cfg, train_recs, y_train, classes, log)
    model, state = fit(out, cfg, (x_train, y_train, x_val, y_val), classes, cfg.seed, log, verbose, targets=targets)
    metrics = val_metrics(model, x_val, y_val, classes, cfg.seed)
    dataset.update(train_split="train", val_split="val",
                   counts={"train": _counts(train_recs, classes), "val": _counts(val_recs, classes)})
    if distilled:
        dataset["distillation"] = distilled
    bundle = _write_bundle(out, cfg, model, state, classes, dataset, metrics, "val")
    summary = _summary(bundle, state, metrics)
    print(f"best epoch {state['best_epoch']} (val loss {state['best']:.4f}), val accuracy "
          f"{metrics['accuracy']:.4f}; bundle {bundle.path}", file=log, flush=True)
    summary["checkpoints"] = prune_checkpoints(out / CKPT_DIR, cfg.keep, log)
    return summary


def _distillation(cfg: TrainConfig, records: Sequence[Record], y: np.ndarray, classes: Sequence[str],
                  log: TextIO) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """The training targets of a distilled run (soft labels mixed with the true ones) and what bundle.json records."""
    if cfg.soft_labels is None:
        return None, None
    path = Path(cfg.soft_labels)
    doc = distill.read(path)
    soft = distill.soft_targets(doc, [r.relative_path for r in records], classes, where=str(path))
    targets = distill.mix(one_hot(y, len(classes)), soft, cfg.distill_alpha)
    agree = float(np.mean(soft.argmax(1) == np.asarray(y)))
    print(f"distilling from {path.name}: {len(doc.get('teachers') or [])} teacher(s), weight {cfg.distill_alpha}, "
          f"teachers agree with the true label on {agree:.1%} of {len(records)} training images", file=log, flush=True)
    return targets, {"soft_labels": recorded_path(path), "sha256": sha256_file(path), "alpha": cfg.distill_alpha,
                     "teachers": [t.get("model") for t in doc.get("teachers") or []],
                     "teacher_train_agreement": round(agree, 4)}


#: what each --keep value removes once the bundle (whose model.keras holds the best weights) is written
_DROP = {"all": (), "last": ("best.weights.h5",), "best": ("last.keras",)}


def prune_checkpoints(ckpt: Path, keep: str, log: TextIO) -> dict[str, Any]:
    """Drop the checkpoints `keep` does not want, then say what stays and its size: a CoroNet run
    leaves ~680 MB (last.keras carries Adam's moments), which nobody should find by surprise."""
    for name in _DROP[keep]:
        (ckpt / name).unlink(missing_ok=True)
    files = {p.name: p.stat().st_size for p in sorted(ckpt.glob("*")) if p.is_file()} if ckpt.is_dir() else {}
    total = sum(files.values())
    hint = {"all": "--keep last or --keep best next time to drop part of it; delete it once you will not "
                   "extend the run", "last": "last.keras lets the run be extended", "best": "the run cannot be "
                   "extended; the bundle's model.keras is the chosen model"}[keep]
    print(f"{ckpt} keeps {total / 1e6:.0f} MB ({', '.join(files) or 'nothing'}); {hint}", file=log, flush=True)
    return {"dir": str(ckpt), "keep": keep, "bytes": total, "files": sorted(files)}


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
    x_all, y_all = load_training_arrays(cfg.data, pool, spec, classes,
                                        progress="loading images" if log.isatty() else False)
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
        if cfg.resume is not False and done.is_file():
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
