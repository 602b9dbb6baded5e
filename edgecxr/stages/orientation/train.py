"""Train the orientation gate self-supervised, choose it on `val`, export it to ONNX with its sidecar.

Every film of `train` is upright (the curated set was checked by eye and by the input checks'
polarity rules), so each of the 16 `TRANSFORMS` of it is a labelled example: no labels beyond the
manifest's split are needed. Each batch draws films and a transform uniformly, after a light
augmentation of the upright film (a random crop of 80-100% of each side, so aspect and framing
vary; gamma 0.7-1.4; now and then a blur or a little noise) so that the gate learns the layout of
a chest, not the pixels of 1,600 files.

What is chosen where: the epoch (best `val` accuracy over the 16 classes, after the last epoch
the weights of that epoch are restored), whether the gate is mirror-invariant (a left-right
mirror counts as upright unless the gate names mirrored `val` films at least `LR_MIN_ACC` of the
time: a chest's left and right differ less than its top and bottom), and the threshold on p(upright) (the split-conformal rank of the upright
`val` films, so that at least `1 - alpha` of exchangeable upright films pass, capped at 0.5).
`test` is read once, after all of that, for the sidecar's report.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.runtime.orientation import GATE_JSON, GATE_ONNX, MIRROR, TRANSFORMS, grouped, standardize

#: classes named in reports, with the kinds the issue lists first
REPORT_KINDS = {
    "rot90": "turned 90 degrees anticlockwise",
    "rot180": "turned 180 degrees",
    "rot270": "turned 90 degrees clockwise",
    "flip": "flipped top-bottom",
    "neg": "negative (inverted)",
}
#: a left-right mirror counts as upright unless `val` says the gate tells it apart at least this well
LR_MIN_ACC = 0.98


def transform_batch(small: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Apply TRANSFORMS[label] to each (size, size) float image; returns (N, size, size, 1) standardized."""
    out = np.empty((len(small), *small.shape[1:]), np.float32)
    for i, (img, k) in enumerate(zip(small, labels, strict=True)):
        t = TRANSFORMS[int(k)]
        x = np.flipud(img) if t.flip else img
        x = np.rot90(x, t.turns) if t.turns else x
        out[i] = 1.0 - x if t.negative else x
    return standardize(out)[..., None]


def augment(films: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random crops (80-100% of each side), gamma and occasional blur or noise of films in [0, 1] -> (N, size, size)."""
    import cv2

    n, big = films.shape[0], films.shape[1]
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        ch, cw = (rng.uniform(0.8, 1.0, 2) * big).astype(int)
        y, x = rng.integers(0, big - ch + 1), rng.integers(0, big - cw + 1)
        crop = films[i, y : y + ch, x : x + cw].astype(np.float32)
        img = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
        img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
        r = rng.random()
        if r < 0.15:
            img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.5, 1.2))
        elif r < 0.3:
            img = img + rng.normal(0, rng.uniform(0.01, 0.04), img.shape).astype(np.float32)
        out[i] = img
    return out


def build_model(size: int, classes: int = len(TRANSFORMS)) -> Any:
    """A tiny CNN (~80k parameters, ~3 MFLOP at 64 x 64): strided 3x3 convolutions down to 4 x 4, then
    a dense layer over the whole 4 x 4 map (not a global pool: where things are is the point)."""
    import keras
    from keras import layers

    inp = keras.Input((size, size, 1), name="image")
    x = inp
    for filters, stride in ((16, 2), (32, 2), (32, 1), (64, 2), (64, 2)):
        x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    out = layers.Dense(classes, activation="softmax", name="probs")(x)
    return keras.Model(inp, out, name="orientation_gate")


def all_transforms(small: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every film under every transform: (inputs, labels, film index), for evaluation."""
    films = small.astype(np.float32)
    n, k = len(films), len(TRANSFORMS)
    labels = np.tile(np.arange(k), n)
    idx = np.repeat(np.arange(n), k)
    return transform_batch(films[idx], labels), labels, idx


def fit(train96: np.ndarray, val64: np.ndarray, size: int = 64, epochs: int = 12, steps: int = 200,
        batch: int = 128, seed: int = 0, log: Any = print) -> tuple[Any, list[dict[str, Any]]]:
    """Train; returns the model at its best `val` epoch and the per-epoch history."""
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(size)
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, epochs * steps, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x_val, y_val, _ = all_transforms(val64)
    history, best, best_weights = [], -1.0, None
    for epoch in range(epochs):
        t0 = time.perf_counter()
        losses = []
        for _ in range(steps):
            films = train96[rng.integers(0, len(train96), batch)]
            labels = rng.integers(0, len(TRANSFORMS), batch)
            x = transform_batch(augment(films, size, rng), labels)
            loss, _ = model.train_on_batch(x, labels)
            losses.append(float(loss))
        probs = model.predict(x_val, batch_size=512, verbose=0)
        acc = float((probs.argmax(1) == y_val).mean())
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_acc": acc, "seconds": time.perf_counter() - t0}
        history.append(row)
        log(f"epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f}  val acc (16 classes) {acc:.4f}  {row['seconds']:.0f}s")
        if acc > best:
            best, best_weights = acc, model.get_weights()
    model.set_weights(best_weights)
    return model, history


def conformal_threshold(p_upright: np.ndarray, alpha: float = 0.01, cap: float = 0.5) -> float:
    """A cut on p(upright) that at least (1 - alpha) of exchangeable upright films pass: the k-th
    smallest of the n upright `val` scores with k = floor((n + 1) * alpha), capped at `cap` (the
    gate must be at least that sure a film is upright... or at least not sure it is not)."""
    s = np.sort(np.asarray(p_upright, dtype=np.float64))
    k = max(1, math.floor((len(s) + 1) * alpha))
    return float(min(cap, s[k - 1]))


def evaluate(probs: np.ndarray, labels: np.ndarray, mirror_invariant: bool, threshold: float) -> dict[str, Any]:
    """Per class: rejected (p(upright) < threshold: caught, for every class but upright), and how often
    the layout is named right (`named`: the exact transform; `named_up_to_mirror`: it or its mirror
    image); plus the issue's kinds, each one transform of an upright film."""
    names = [t.name for t in TRANSFORMS]
    group = grouped(probs, mirror_invariant)
    rejected = group[:, 0] < threshold
    pick = group.argmax(1)
    if mirror_invariant:  # the likelier of the mirror pair, as OrientationGate.verdicts names it
        pick = np.where(probs[np.arange(len(pick)), MIRROR[pick]] > probs[np.arange(len(pick)), pick], MIRROR[pick], pick)
    per_class = {}
    for k, name in enumerate(names):
        m = labels == k
        per_class[name] = {"n": int(m.sum()), "rejected": float(rejected[m].mean()),
                           "named": float((pick[m] == k).mean()),
                           "named_up_to_mirror": float(np.isin(pick[m], [k, MIRROR[k]]).mean())}
    upright = np.isin(labels, [0, MIRROR[0]] if mirror_invariant else [0])
    return {"threshold": threshold, "mirror_invariant": mirror_invariant, "per_class": per_class,
            "upright_not_answered": per_class["upright"]["rejected"],
            "caught": {kind: per_class[kind]["rejected"] for kind in REPORT_KINDS},
            "caught_all_non_upright": float(rejected[~upright].mean()),
            "accuracy_16": float((probs.argmax(1) == labels).mean())}


def export_onnx(model: Any, size: int, path: Path) -> Path:
    """tf2onnx, then ONNX Runtime's basic offline optimisation (folds BatchNorm into the convolutions)."""
    import logging

    import onnx
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    signature = (tf.TensorSpec((None, size, size, 1), tf.float32, name="image"),)

    @tf.function(input_signature=signature)
    def serve(image: Any) -> dict[str, Any]:
        return {"probs": model(image, training=False)}

    onnx_model, _ = tf2onnx.convert.from_function(serve, input_signature=signature, opset=17)
    from edgecxr.stages.export.onnx_tools import optimize_onnx, set_batch_dim

    set_batch_dim(onnx_model)
    try:
        optimized, _ = optimize_onnx(onnx_model)
    except Exception:  # noqa: BLE001 - keep the plain graph; its parity is checked by the caller
        optimized = onnx_model
    optimized.producer_name = "edgecxr orientation gate"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(optimized, str(path))
    return path


def onnx_probs(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {s.get_inputs()[0].name: x[i : i + 1024]})[0] for i in range(0, len(x), 1024)])


def run(manifest: str | Path, out_dir: str | Path, size: int = 64, epochs: int = 12, steps: int = 200,
        seed: int = 0, threads: int | None = None, log: Any = print) -> dict[str, Any]:
    """Train, choose on `val`, report on `test`, write gate.onnx and gate.json into `out_dir`."""
    import tensorflow as tf

    from edgecxr.core.fileutil import sha256_file
    from edgecxr.stages.orientation.data import load_split_copies

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    big = round(size * 1.5)
    copies = load_split_copies(manifest, ("train", "val", "test"), (size, big))
    t0 = time.perf_counter()
    model, history = fit(copies["train"][big], copies["val"][size], size, epochs, steps, seed=seed, log=log)
    train_s = time.perf_counter() - t0
    out_dir = Path(out_dir)
    onnx_path = export_onnx(model, size, out_dir / GATE_ONNX)

    x_val, y_val, _ = all_transforms(copies["val"][size])
    p_val = onnx_probs(onnx_path, x_val)
    keras_val = model.predict(x_val, batch_size=512, verbose=0)
    parity = float(np.abs(p_val - keras_val).max())
    names = [t.name for t in TRANSFORMS]
    lr_acc = float((p_val[y_val == MIRROR[0]].argmax(1) == MIRROR[0]).mean())
    mirror_invariant = lr_acc < LR_MIN_ACC
    threshold = conformal_threshold(grouped(p_val[y_val == 0], mirror_invariant)[:, 0])
    val_report = evaluate(p_val, y_val, mirror_invariant, threshold)

    x_test, y_test, _ = all_transforms(copies["test"][size])
    test_report = evaluate(onnx_probs(onnx_path, x_test), y_test, mirror_invariant, threshold)
    meta = {
        "format": "edgecxr-orientation-gate/1",
        "sha256": sha256_file(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "input_size": size,
        "input": "gray, stretched to a square (INTER_AREA), standardized per image; NHWC float32 'image'",
        "classes": names,
        "mirror_invariant": mirror_invariant,
        "threshold": threshold,
        "left_right_val_accuracy": lr_acc,
        "onnx_vs_keras_max_abs_diff": parity,
        "trained": {"manifest": Path(manifest).name, "films": {s: len(copies[s][size]) for s in copies},
                    "epochs": epochs, "steps_per_epoch": steps, "seed": seed, "seconds": round(train_s, 1),
                    "history": history, "date": _dt.date.today().isoformat()},
        "val": val_report,
        "test": test_report,
    }
    (out_dir / GATE_JSON).write_text(json.dumps(meta, indent=1) + "\n")
    return meta
