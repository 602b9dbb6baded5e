"""Training recipes and the knobs around them: hyper-parameter sets, optimizer and schedule, precision, threads.

`edgecxr.stages.train` resolves a `TrainConfig` against these tables; nothing here touches data. See
`SCRATCH_RECIPES` for why the from-scratch recipe differs from the papers', and
docs/REPRODUCTION.md for the ablation behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.lazy import require
from edgecxr.models import MODELS

#: The papers' recipes (`--recipe paper`), exactly as published: each model module states its own.
PAPER_RECIPES: dict[str, dict[str, Any]] = {name: dict(m.paper_recipe) for name, m in MODELS.items()}
#: The from-scratch recipe (`--recipe scratch`, the default when the initial weights are random),
#: chosen on `val` by the ablation in docs/REPRODUCTION.md. The papers' Adam 1e-4 with no
#: augmentation assumes ImageNet features: from random weights it memorises the ~900 training
#: films within a few epochs. What helps from scratch: a 10x higher peak rate with linear warm-up
#: and cosine decay, decoupled weight decay (AdamW), chest-film augmentation (augment.POLICIES),
#: label smoothing, class-balanced sample weights (the extended manifest is 2:1 bacterial), and
#: bfloat16 mixed precision where the CPU has bf16 instructions (1.7-2x faster here, scripts/bench_train.py).
_SCRATCH_COMMON: dict[str, Any] = {
    "epochs": 40, "batch_size": 32, "weights": "none", "patience": 12, "augment": "cxr", "class_weights": True,
    "optimizer": "adamw", "weight_decay": 0.05, "schedule": "cosine", "warmup_epochs": 2, "label_smoothing": 0.1,
    "precision": "auto",
}
#: Only the peak rate differs per model (models.ModelDef.scratch_lr): the CNN-LSTM's plain VGG stack
#: has no BatchNorm, so it gets 3e-4 against CoroNet's 1e-3.
SCRATCH_RECIPES: dict[str, dict[str, Any]] = {name: {**_SCRATCH_COMMON, "lr": m.scratch_lr} for name, m in MODELS.items()}
RECIPES: dict[str, dict[str, dict[str, Any]]] = {"paper": PAPER_RECIPES, "scratch": SCRATCH_RECIPES}
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")


def bf16_supported() -> bool:
    """Whether this CPU has bfloat16 instructions (oneDNN then runs bf16 convolutions natively)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def dtype_policy(precision: str) -> str:
    """Keras dtype policy for a --precision value ("auto": bf16 mixed precision on a GPU or a bf16 CPU)."""
    if precision != "auto":
        return precision
    keras = require("keras", "training")
    if keras.backend.backend() == "jax":
        import jax

        if any(d.platform == "gpu" for d in jax.devices()):
            return "mixed_bfloat16"
    if keras.backend.backend() == "torch":  # a GPU machine without TensorFlow (scripts/train_on_gpu.sh)
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "mixed_bfloat16"
    return "mixed_bfloat16" if bf16_supported() else "float32"


def set_threads(threads: int | None) -> None:
    """Limit the backend's CPU threads (two runs sharing a 2-core machine: one thread each).

    TensorFlow takes this only before its runtime starts, so `train` calls it first; where that is
    too late the backend's own environment variables (TF_NUM_INTRAOP_THREADS, ...) still work.
    """
    if not threads:
        return
    keras = require("keras", "training")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.threading.get_intra_op_parallelism_threads() == threads:
            return
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError as exc:  # the runtime was already initialised in this process
            raise EdgeCXRError(f"cannot set TensorFlow threads now ({exc}); set TF_NUM_INTRAOP_THREADS={threads}") from None
    elif backend == "torch":
        import torch

        torch.set_num_threads(threads)


def make_optimizer(cfg: Any, steps_per_epoch: int) -> Any:
    """Adam or AdamW at cfg.lr, constant or linear warm-up + cosine decay over cfg.epochs, with EMA if cfg.ema."""
    keras = require("keras", "training")
    lr: Any = cfg.lr
    if cfg.schedule == "cosine":
        warmup = cfg.warmup_epochs * steps_per_epoch
        total = max(cfg.epochs * steps_per_epoch, warmup + 1)
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=cfg.lr / 10 if warmup else cfg.lr, decay_steps=total - warmup, alpha=0.01,
            warmup_target=cfg.lr if warmup else None, warmup_steps=warmup)
    # EMA of the weights (Polyak averaging) lives in the optimizer, so its averages are saved with the
    # optimizer state in last.keras and a resumed run continues them; the loop evaluates and keeps them.
    ema = float(getattr(cfg, "ema", 0.0) or 0.0)
    extra = {"use_ema": True, "ema_momentum": ema} if ema else {}
    adamw, adam = ema_optimizers() if ema else (keras.optimizers.AdamW, keras.optimizers.Adam)
    if cfg.optimizer == "adamw":
        return adamw(learning_rate=lr, weight_decay=cfg.weight_decay, **extra)
    return adam(learning_rate=lr, **extra)


_EMA_CLASSES: tuple[Any, Any] | None = None


def ema_optimizers() -> tuple[Any, Any]:
    """AdamW and Adam whose weight average warms up: momentum min(ema_momentum, (1 + t) / (10 + t)) at step t.

    Why: Keras's own average starts at the first weights and uses `ema_momentum` from the first step,
    so after t steps it still holds ema_momentum^t of the random initialisation: 0.998 over a 16-epoch
    run of 816 steps keeps 20% of it, and the long runs of 2026-12-07 scored up to 16 (CNN-LSTM) and 40
    (CoroNet) points under their raw weights on `val` in their early epochs. The warm-up (as in TensorFlow's
    ExponentialMovingAverage with num_updates, and timm's ModelEmaV2) averages over about t / 10
    steps early on and reaches the set momentum after ~5,000 steps at 0.998. Registered with Keras, so
    last.keras loads (call this before `keras.saving.load_model` in a fresh process).
    """
    global _EMA_CLASSES
    if _EMA_CLASSES is None:
        keras = require("keras", "training")
        ops = keras.ops

        def update(self: Any, trainable_variables: Any) -> None:
            if not self.use_ema:
                return
            t = ops.cast(self.iterations, "float32")
            momentum = ops.minimum(ops.cast(self.ema_momentum, "float32"), (1.0 + t) / (10.0 + t))
            for var, average in zip(trainable_variables, self._model_variables_moving_average, strict=True):
                if average is not None:
                    m = ops.cast(momentum, var.dtype)
                    average.assign(ops.add(ops.multiply(m, average), ops.multiply(ops.subtract(1, m), var)))

        register = keras.saving.register_keras_serializable(package="edgecxr")
        _EMA_CLASSES = (
            register(type("WarmEMAAdamW", (keras.optimizers.AdamW,), {"_update_model_variables_moving_average": update})),
            register(type("WarmEMAAdam", (keras.optimizers.Adam,), {"_update_model_variables_moving_average": update})),
        )
    return _EMA_CLASSES


class dtype_scope:
    """Build models under a dtype policy, then restore the one before (float32 outside training: the saved
    artifact is always float32). Nests: a float32 twin built inside a bf16 scope leaves the bf16 scope on."""

    def __init__(self, name: str):
        self.name = name
        self.before: Any = "float32"

    def __enter__(self) -> None:
        config = require("keras", "training").config
        self.before = config.dtype_policy()
        config.set_dtype_policy(self.name)

    def __exit__(self, *exc: object) -> None:
        require("keras", "training").config.set_dtype_policy(self.before)
