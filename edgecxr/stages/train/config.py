"""Training configuration and the data-side decisions taken before fitting: subsets, folds,
class weights.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.errors import ArgumentError, DataError, EdgeCXRError
from edgecxr.core.fileutil import sha256_file
from edgecxr.data.manifest import Record, label_indices
from edgecxr.models import default_input_size, model_options
from edgecxr.models import get as get_model
from edgecxr.stages.train.augment import get_policy
from edgecxr.stages.train.recipes import (
    OPTIMIZERS,
    PAPER_RECIPES,
    PRECISIONS,
    RECIPES,
    SCHEDULES,
)

MONITOR = "val_loss"


#: Share of the training pool's patient groups used for model selection inside a CV fold.
CV_SELECT_FRACTION = 0.15


CKPT_DIR = "checkpoints"
#: environment variable naming the folder that holds training runs (default ~/.cache/edgecxr/runs)
KEEP = ("all", "last", "best")
RUNS_ENV = "EDGECXR_RUNS"


def default_run_dir(name: str) -> Path:
    """Where `edgecxr train` keeps a run when --out is not given: outside any checkout, so a fresh
    clone (or `git clean`) never loses days of training, and the same command line finds it again."""
    root = os.environ.get(RUNS_ENV) or str(Path.home() / ".cache" / "edgecxr" / "runs")
    return Path(root).expanduser() / name


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
    #: None: continue the run saved in `out` if there is one (same options), else start; True: the same,
    #: saying so when there is nothing to resume; False: refuse a folder that holds a run
    resume: bool | None = None
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
    #: momentum of an exponential moving average of the weights (0: off); validation, model selection
    #: and the saved model then use the averaged weights, and the raw weights are scored beside them
    ema: float = 0.0
    #: which checkpoints stay in out/checkpoints/ once the bundle is written: "all" (resume or extend
    #: later), "last" (last.keras + state: extend later), "best" (drop the large last.keras)
    keep: str = "all"
    #: distillation (stages/train/distill.py): a soft-label file for every training image, and the
    #: weight of the teachers' soft labels against the true one-hot label in the targets
    soft_labels: str | None = None
    distill_alpha: float = 0.5
    #: mixup's Beta alpha (stages/train/augment.mix_batch); 0: off
    mixup: float = 0.0

    def resolved(self) -> TrainConfig:
        """Fill unset options from the model's recipe (tiny runs never download weights)."""
        get_model(self.model)  # EdgeCXRError naming the known models
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
            raise ArgumentError("folds must be 0 (no cross-validation) or >= 2", params=("folds",))
        if cfg.limit_per_class is not None and cfg.limit_per_class < 1:
            raise EdgeCXRError("limit_per_class must be >= 1")
        if cfg.optimizer not in OPTIMIZERS or cfg.schedule not in SCHEDULES or cfg.precision not in PRECISIONS:
            raise EdgeCXRError(f"optimizer must be one of {OPTIMIZERS}, schedule one of {SCHEDULES}, "
                               f"precision one of {PRECISIONS}")
        get_policy(cfg.augment)
        if cfg.keep not in KEEP:
            raise ArgumentError(f"keep must be one of {', '.join(KEEP)}, got {cfg.keep!r}", params=("keep",))
        if not 0.0 <= cfg.ema < 1.0:
            raise ArgumentError(f"ema must be in [0, 1), got {cfg.ema}", params=("ema",))
        if not 0.0 <= cfg.mixup <= 10.0:
            raise ArgumentError(f"mixup alpha must be in [0, 10], got {cfg.mixup}", params=("mixup",))
        if not 0.0 <= cfg.distill_alpha <= 1.0:
            raise ArgumentError(f"distill alpha must be in [0, 1], got {cfg.distill_alpha}", params=("distill_alpha",))
        if cfg.soft_labels is not None:
            if cfg.folds:
                raise ArgumentError("soft labels are for one model, not a cross-validation", params=("soft_labels", "folds"))
            if not Path(cfg.soft_labels).is_file():
                raise ArgumentError(f"{cfg.soft_labels}: no such soft-label file", params=("soft_labels",))
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


def _identity(cfg: TrainConfig) -> dict[str, Any]:
    """Options a resumed run must share with the saved one (epochs/patience may change)."""
    keys = ("model", "input_size", "tiny", "batch_size", "augment", "class_weights", "limit_per_class", "seed",
            "recipe", "optimizer", "schedule", "label_smoothing", "precision")
    identity = {k: getattr(cfg, k) for k in keys}
    if cfg.ema:  # only when set, so runs saved before the option existed still resume
        identity["ema"] = cfg.ema
    if cfg.mixup:
        identity["mixup"] = cfg.mixup
    if cfg.soft_labels:  # the teachers' file by content: a resumed run must learn from the same one
        identity["soft_labels_sha256"] = sha256_file(Path(cfg.soft_labels))
        identity["distill_alpha"] = cfg.distill_alpha
    return identity


def _arch_options(cfg: TrainConfig, classes: Sequence[str]) -> dict[str, Any]:
    """Architecture options of the build (initial weights are a training choice, kept in the config)."""
    opts = model_options(cfg.model, tiny=cfg.tiny, input_size=cfg.input_size, num_classes=len(classes))
    opts.pop("weights", None)
    return opts
