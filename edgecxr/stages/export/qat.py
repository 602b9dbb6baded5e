"""`edgecxr qat`: quantization-aware fine-tuning, chosen on `val`, published through the INT8 gate.

When post-training calibration (with or without `--fallback auto`) cannot pass the gate, or only
by keeping too much in float, the weights themselves can learn to live on the int8 grid: a few
epochs on `train` with fake-quantized weights and activations (stages/train/fake_quant.py), at a
small learning rate, starting from the trained model. Each epoch's weights go back into the plain
float architecture, are exported to ONNX as `edgecxr export` does, calibrated on `calib` into the
same TensorRT Q/DQ file as `edgecxr calibrate` writes, and scored on `val` against the *trained*
model's FP32 ONNX with the gate's rule. Epoch 0 is plain post-training calibration, so the record
shows what QAT added. The epoch with the best `val` agreement (then accuracy) is chosen; only if it
passes on `val` is it calibrated once more by `calibrate_bundle(source=...)`, which runs the
publication gate on `test` once, against the trained model, and publishes model.int8.onnx.
`test` is never read before that.

The bundle keeps its trained model.keras, model.onnx and model.fp16.onnx: only the INT8 file comes
from the fine-tuned weights, which are kept in BUNDLE/qat/ (model.keras and the FP32 ONNX that was
quantized, sha256 in bundle.json["calibration"]["qat"]) so the INT8 file stays traceable.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError, GateFailedError
from edgecxr.core.lazy import require
from edgecxr.core.metadata import bundle_metadata, set_metadata
from edgecxr.data.dataset import load_split
from edgecxr.stages.export.features import add_features_output, has_features
from edgecxr.stages.export.fp32 import ensure_fp32
from edgecxr.stages.export.int8 import calibrate_bundle, quantize_qdq
from edgecxr.stages.export.keras_io import keras_to_onnx, load_keras
from edgecxr.stages.export.onnx_tools import optimize_onnx, write_model
from edgecxr.stages.export.qdq_check import resolve_keep_float
from edgecxr.stages.export.sensitivity import Scorer, score_row
from edgecxr.stages.gate.config import Gates

#: what the fake-quantized model learns to output: the trained model's probabilities (distillation) or the labels
TARGETS = ("teacher", "labels")
#: where the fine-tuned weights and the FP32 ONNX that was quantized are kept, inside the bundle
QAT_DIR = "qat"


def _distilled(batches: Any, teacher: Any) -> Any:
    """The same batches with the trained model's probabilities as targets.

    Why distillation: the gate asks the INT8 model to *agree* with the trained model (98%), not to be
    better on `train`. Fine-tuned on the labels, the demo CoroNet drifted from 99.2% to 86.8% `val`
    agreement in two epochs, a different model rather than a quantized one. Matching the trained
    model's soft outputs (Hinton et al. 2015, as in most QAT recipes) spends the epochs on the
    rounding error instead.
    """
    keras = require("keras", "quantization-aware fine-tuning")

    class Distilled(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)

        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
            xb, _, *weights = batches[i]
            soft = keras.ops.convert_to_numpy(teacher(xb, training=False)).astype(np.float32)
            return (xb, soft, *weights)

        def set_epoch(self, epoch: int) -> None:
            batches.set_epoch(epoch)

        def on_epoch_end(self) -> None:
            batches.on_epoch_end()

    return Distilled()


def _float_onnx(model: Any, bundle: Bundle, with_features: bool) -> Any:
    """The Keras model as the FP32 ONNX `edgecxr export` writes (plus the features output if the bundle's has one)."""
    onnx_model, _ = optimize_onnx(keras_to_onnx(model, bundle.spec))
    if with_features:
        onnx_model, _ = add_features_output(onnx_model)
    set_metadata(onnx_model, bundle_metadata(bundle, "fp32"))
    return onnx_model


def needs_keras(bundle: Bundle) -> Path:
    """The bundle's model.keras, or a one-line BundleError: QAT fine-tunes Keras weights."""
    path = bundle.artifact("keras", must_exist=False)
    if path is None or not Path(path).is_file():
        raise BundleError(f"{bundle.dir} has no trained Keras model (model.keras): QAT fine-tunes its weights. Train one "
                          "with `edgecxr train`; the shipped reference models carry ONNX files only")
    return Path(path)


def qat_bundle(
    bundle: Bundle,
    manifest: str | Path,
    *,
    epochs: int = 2,
    learning_rate: float = 1e-6,
    batch_size: int = 16,
    augment: str | None = None,
    target: str = "teacher",
    method: str = "minmax",
    keep_float: Sequence[str] = (),
    train_split: str = "train",
    split: str = "calib",
    select_split: str = "val",
    verify: bool = True,
    verify_split: str = "test",
    gates: Gates | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune the bundle's Keras model for INT8, choose the epoch on `select_split`, publish through the gate.

    Returns bundle.json's new "calibration" section (with "qat": the per-epoch `val` scores, the
    chosen epoch, the options). Raises GateFailedError when no epoch passes on `select_split`
    (nothing is published, `verify_split` is not read) or when the publication gate fails.
    """
    keras = require("keras", "quantization-aware fine-tuning")
    import onnx

    from edgecxr.stages.train import fake_quant
    from edgecxr.stages.train.augment import batch_sequence, get_policy
    from edgecxr.stages.train.config import balanced_class_weights
    from edgecxr.stages.train.progress import progress_callback

    if target not in TARGETS:
        raise BundleError(f"unknown QAT target {target!r}; choose from {list(TARGETS)}")
    if epochs < 1 or not learning_rate > 0 or batch_size < 1:
        raise BundleError("qat needs epochs >= 1, a learning rate > 0 and a batch size >= 1")
    if len({train_split, split, select_split} | ({verify_split} if verify else set())) < (4 if verify else 3):
        raise BundleError(f"the training ({train_split}), calibration ({split}), selection ({select_split}) and gate "
                          f"({verify_split}) splits must all differ")
    keras_path = needs_keras(bundle)
    say = log or (lambda _msg: None)
    gates = gates or Gates()
    trained_cfg = (bundle.meta.get("train") or {}).get("config") or {}
    augment = augment or trained_cfg.get("augment") or "none"
    policy = get_policy(augment)
    t0 = time.perf_counter()

    base_path = ensure_fp32(bundle)
    base = onnx.load(str(base_path))
    with_features = has_features(base)
    exclude = [n for names in resolve_keep_float(base, keep_float).values() for n in names]
    _, x_train, y_train = load_split(bundle, manifest, train_split, progress=progress)
    _, x_cal, _ = load_split(bundle, manifest, split, progress=progress)
    _, x_val, y_val = load_split(bundle, manifest, select_split, progress=progress)
    scorer = Scorer(base, x_val, y_val, bundle.classes, gates)

    trained = load_keras(keras_path)
    qat_model = fake_quant.wrap(trained)
    keras.utils.set_random_seed(seed)
    qat_model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                      loss=keras.losses.CategoricalCrossentropy())
    weights = balanced_class_weights(y_train, len(bundle.classes)) if trained_cfg.get("class_weights", True) else None
    batches = batch_sequence(x_train, y_train, len(bundle.classes), batch_size, policy, seed,
                             class_weights=weights, scale=bundle.spec.scale, offset=bundle.spec.offset)
    if target == "teacher":
        batches = _distilled(batches, trained)

    history: list[dict[str, Any]] = []
    best: tuple[tuple[float, float], int, Any, Path] | None = None  # (key, epoch, Keras model, its FP32 ONNX)
    with tempfile.TemporaryDirectory(prefix="edgecxr-qat-") as tmp:
        for epoch in range(epochs + 1):
            e0 = time.perf_counter()
            loss = None
            if epoch:
                ranges = fake_quant.observe(qat_model, x_cal)  # the ranges ONNX Runtime's calibrator will measure
                batches.set_epoch(epoch - 1)
                qat_model.train_function = None  # retrace: the ranges are constants of the traced step
                fit = qat_model.fit(batches, initial_epoch=epoch - 1, epochs=epoch, verbose=0,
                                    callbacks=[progress_callback(sys.stderr, epochs)] if progress else [])
                loss = float(fit.history["loss"][-1])
                if not math.isfinite(loss):
                    say(f"  epoch {epoch}: loss is not finite; stopping")
                    break
                plain = fake_quant.strip(qat_model, trained)
                source = Path(tmp) / f"epoch{epoch}.onnx"
                write_model(_float_onnx(plain, bundle, with_features), source)
            else:
                ranges, plain, source = [], trained, base_path
            candidate = Path(tmp) / f"epoch{epoch}.int8.onnx"
            quantize_qdq(source, candidate, x_cal, method=method, nodes_to_exclude=exclude, progress=False)
            res = scorer.score(onnx.load(str(candidate)))
            row = {"epoch": epoch, **score_row(res), "seconds": round(time.perf_counter() - e0, 1),
                   **({"train_loss": round(loss, 5)} if loss is not None else {}),
                   **({"activation_ranges": len(ranges)} if ranges else {})}
            history.append(row)
            say(f"  epoch {epoch}{' (post-training calibration)' if not epoch else ''}: {select_split} agreement "
                f"{row['top1_agreement']:.2%}, accuracy {row['accuracy']:.2%}, gate {'passes' if row['passed'] else 'fails'}"
                + (f", train loss {loss:.4f}" if loss is not None else "") + f" ({row['seconds']:.0f} s)")
            key = (row["top1_agreement"], row["accuracy"])
            if row["passed"] and (best is None or key > best[0]):
                best = (key, epoch, plain, source)
        record = {"epochs": epochs, "learning_rate": learning_rate, "batch_size": batch_size, "augment": augment, "target": target,
                  "train_split": train_split, "train_images": len(y_train), "selected_on": select_split,
                  "selection_images": len(y_val), "history": history,
                  "chosen_epoch": None if best is None else best[1],
                  "rule": "the epoch with the highest agreement with the trained FP32 model (then accuracy) among "
                          "those passing the gate on the selection split; epoch 0 is post-training calibration",
                  "fine_tune_seconds": round(time.perf_counter() - t0, 1)}
        if best is None:
            raise GateFailedError(f"no epoch of quantization-aware fine-tuning passes the gate on {select_split} "
                                  f"(best agreement {max(r['top1_agreement'] for r in history):.2%}); nothing published, "
                                  f"{verify_split} not read")
        chosen: Path | None = None  # epoch 0: the bundle's own FP32 model
        if best[1]:
            out = bundle.dir / QAT_DIR
            out.mkdir(exist_ok=True)
            best[2].save(str(out / "model.keras"))
            chosen = Path(shutil.copyfile(best[3], out / "model.onnx"))  # the very file that epoch was scored from
        else:
            say("  post-training calibration is already the best on the selection split; publishing it")
        return calibrate_bundle(bundle, manifest, split=split, method=method, keep_float=keep_float, verify=verify,
                                verify_split=verify_split, gates=gates, progress=progress, source=chosen, qat=record)


def summary_lines(section: dict[str, Any]) -> list[str]:
    """What `edgecxr qat` prints about the fine-tuning (the calibration lines follow)."""
    q = section.get("qat") or {}
    lines = [f"quantization-aware fine-tuning: {q.get('epochs')} epoch(s) at learning rate {q.get('learning_rate'):g}, "
             f"chosen on {q.get('selected_on')} ({q.get('selection_images')} images): epoch {q.get('chosen_epoch')}"]
    for row in q.get("history", []):
        lines.append(f"  epoch {row['epoch']}: agreement {row['top1_agreement']:.2%}, accuracy {row['accuracy']:.2%}"
                     f"{'' if row['passed'] else ' (fails)'}")
    return lines
