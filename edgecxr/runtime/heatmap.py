"""Heat maps from the deployed artifact: occlusion sensitivity, on any backend.

What a reader of a result wants to see is *where* the model looked. Gradient methods (Grad-CAM,
saliency) need the training graph, which a workstation does not have: it runs an FP16 ONNX, an
INT8 Q/DQ ONNX or a TensorRT engine. Occlusion sensitivity (Zeiler & Fergus, 2014) needs nothing
but the model's forward pass, so it explains exactly the artifact that produced the answer, on
every backend, TensorRT included: the preprocessed input is copied, one square patch of each copy
is replaced by a constant, the copies go through `runner.infer` in batches, and each pixel gets the
mean drop of the target class probability over the patches that covered it.

Why these defaults (`Occlusion`): a patch of 1/5 of the input side (30 px of CoroNet's 150, 45 px
of the CNN-LSTM's 224) is about one intercostal space to a third of a lung field, large enough
that hiding it can change the answer of a network with wide receptive fields, small enough to
tell the lungs apart; a stride of 1/10 of the side gives 9 x 9 = 81 masked copies at both input
sizes, so a map costs about 82 images' worth of model time (`scripts/heatmap_cost.py` measures
it). The fill is the image's own mean intensity: a black patch on a radiograph reads as air or a
collimated edge (a feature of its own), the mean gray is the least informative constant.

The map lives in the model's input pixels (height x width of the preprocessing spec). The spec
resizes by stretching, so `edgecxr.runtime.overlay` stretches it back onto the original image.
Values are raw probability drops: positive where hiding the region lowers the target class,
negative where hiding it raises it; `HeatMap.normalized()` is the display form.

The probabilities are the model's own (the runner's output), before any temperature scaling a
Classifier applies to what it reports; scaling is monotonic, so the predicted class is the same.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecxr.core.errors import ArgumentError
from edgecxr.core.spec import PreprocessSpec
from edgecxr.runtime.inputs import prepare
from edgecxr.runtime.prediction import Prediction

__all__ = ["OCCLUSION", "HeatMap", "Occlusion", "explain", "occlusion_map"]


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Occlusion:
    """How the masked copies are made; sizes are fractions of the input side, so one config fits 150 and 224.

    Attributes:
        patch: side of the square patch, as a fraction of the input's shorter side (0 < patch <= 1).
        stride: step between patch positions, as a fraction of the shorter side (0 < stride <= patch,
            so every pixel is covered); the last position is flush with the far edge.
        fill: "mean" (the image's own mean, the default) or an intensity in [0, 1] (0 black,
            1 white) before the spec's scaling, so the same number means the same gray on every model.
    """

    patch: float = 0.2
    stride: float = 0.1
    fill: str | float = "mean"

    def __post_init__(self) -> None:
        if not _real(self.patch) or not 0 < self.patch <= 1:
            raise ArgumentError(f"occlusion patch must be a fraction of the input side in (0, 1], got {self.patch!r}",
                                params=("patch",))
        if not _real(self.stride) or not 0 < self.stride <= self.patch:
            raise ArgumentError(f"occlusion stride must be in (0, patch={self.patch}], got {self.stride!r} "
                                "(a larger stride leaves pixels no patch covers)", params=("stride",))
        if self.fill != "mean" and (not _real(self.fill) or not 0 <= float(self.fill) <= 1):
            raise ArgumentError(f"occlusion fill must be 'mean' or an intensity in [0, 1], got {self.fill!r}",
                                params=("fill",))

    def windows(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """(top, left, side) of every patch on a height x width input, row by row."""
        side = max(1, round(self.patch * min(height, width)))
        step = max(1.0, self.stride * min(height, width))
        rows = _positions(height, side, step)
        cols = _positions(width, side, step)
        return [(y, x, side) for y in rows for x in cols]

    def fill_value(self, tensor: np.ndarray, spec: PreprocessSpec) -> float:
        """The constant a patch is filled with, in the model's input units."""
        if self.fill == "mean":
            return float(tensor.mean())
        return float(self.fill) * spec.scale + spec.offset


#: the defaults: 1/5-side patches every 1/10 side, filled with the image mean (81 masked copies)
OCCLUSION = Occlusion()


@dataclass
class HeatMap:
    """One occlusion map and what it cost.

    Attributes:
        values: (height, width) float32 in model-input pixels: mean drop of the target probability
            when a patch covering the pixel is hidden (positive: the region supports the class).
        target: the class the map is for; target_index its column in the model output.
        baseline: the target probability of the unmasked input (same forward pass, same batch).
        masks: masked copies run; model_runs: masks + 1 (the unmasked copy).
        batch_size: copies per `runner.infer` call.
        seconds: wall time of the whole map (fill, copies, every model call).
        config: the Occlusion used.
    """

    values: np.ndarray
    target: str
    target_index: int
    baseline: float
    masks: int
    batch_size: int
    seconds: float
    config: Occlusion

    @property
    def model_runs(self) -> int:
        return self.masks + 1

    def normalized(self) -> np.ndarray:
        """Display form in [0, 1]: negative drops clipped to 0, the largest drop scaled to 1 (all 0 if none)."""
        pos = np.clip(self.values, 0, None)
        top = float(pos.max()) if pos.size else 0.0
        return (pos / top).astype(np.float32) if top > 0 else np.zeros_like(pos, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Facts for JSON output (not the pixels)."""
        return {
            "method": "occlusion",
            "target": self.target,
            "baseline": round(self.baseline, 6),
            "max_drop": round(float(self.values.max()), 6),
            "min_drop": round(float(self.values.min()), 6),
            "masks": self.masks,
            "model_runs": self.model_runs,
            "batch_size": self.batch_size,
            "seconds": round(self.seconds, 4),
            "patch": self.config.patch,
            "stride": self.config.stride,
            "fill": self.config.fill,
        }


def occlusion_map(
    infer: Callable[[np.ndarray], np.ndarray],
    tensor: np.ndarray,
    target_index: int | None = None,
    spec: PreprocessSpec | None = None,
    config: Occlusion = OCCLUSION,
    batch_size: int = 32,
    classes: Sequence[str] | None = None,
) -> HeatMap:
    """The occlusion map of one preprocessed input (H, W, C), running `infer` on batched masked copies.

    Args:
        infer: a runner's `infer` (N, H, W, C) float32 -> (N, n_classes) probabilities; any backend.
        tensor: the input exactly as the prediction saw it (`edgecxr.core.spec.preprocess`).
        target_index: the class column to explain; None: the unmasked input's top class.
        spec: its preprocessing spec (needed only for a numeric `config.fill`).
        config: patch, stride and fill.
        batch_size: masked copies per model call (the unmasked copy rides in the first batch).
        classes: class names, for `HeatMap.target`.
    """
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be >= 1, got {batch_size}", params=("batch_size",))
    tensor = np.asarray(tensor, dtype=np.float32)
    if tensor.ndim != 3:
        raise ArgumentError(f"expected one preprocessed input (H, W, C), got shape {tensor.shape}")
    if config.fill != "mean" and spec is None:
        raise ArgumentError("a numeric occlusion fill needs the preprocessing spec to convert it", params=("spec",))
    t0 = time.perf_counter()
    height, width = tensor.shape[:2]
    windows = config.windows(height, width)
    fill = config.fill_value(tensor, spec) if spec is not None else float(tensor.mean())
    # copy 0 is the unmasked input: its probability is the baseline, from the same model calls
    probs: list[np.ndarray] = []
    for start in range(0, len(windows) + 1, batch_size):
        idx = range(start, min(start + batch_size, len(windows) + 1))
        batch = np.repeat(tensor[None], len(idx), axis=0)
        for row, k in enumerate(idx):
            if k > 0:
                y, x, side = windows[k - 1]
                batch[row, y : y + side, x : x + side, :] = fill
        out = np.asarray(infer(batch), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != len(idx):
            raise ArgumentError(f"the model returned shape {out.shape} for a batch of {len(idx)}")
        probs.append(out)
    scores = np.concatenate(probs, axis=0)
    if target_index is None:
        target_index = int(np.argmax(scores[0]))
    if not 0 <= target_index < scores.shape[1]:
        raise ArgumentError(f"class index {target_index} is outside the model's {scores.shape[1]} classes")
    base = scores[0, target_index]
    drops = base - scores[1:, target_index]
    total = np.zeros((height, width), dtype=np.float64)
    count = np.zeros((height, width), dtype=np.int32)
    for (y, x, side), drop in zip(windows, drops, strict=True):
        total[y : y + side, x : x + side] += drop
        count[y : y + side, x : x + side] += 1
    values = (total / np.maximum(count, 1)).astype(np.float32)
    name = classes[target_index] if classes is not None else str(target_index)
    return HeatMap(values, name, target_index, float(base), len(windows), batch_size,
                   time.perf_counter() - t0, config)


def explain(
    classifier: Any,
    item: Any,
    target: str | None = None,
    config: Occlusion = OCCLUSION,
    batch_size: int = 32,
) -> tuple[Prediction, HeatMap | None]:
    """Decode, check and preprocess `item` as `Classifier.predict` does, then map it.

    The tensor comes from `edgecxr.runtime.inputs.prepare` with the classifier's own spec and
    input rules, so the map is of the same pixels the prediction used. Returns the decode's
    Prediction (only its error / status / reason / sha256 are set: the label is the caller's,
    from `predict`) and the map, or None when the input failed or was rejected.

    Args:
        classifier: a loaded `edgecxr.Classifier` (any backend).
        item: what `predict` takes: a path or a decoded array.
        target: the class to explain; None: the class the model ranks first for this input.
        config: patch, stride and fill (`Occlusion`).
        batch_size: masked copies per model call; TensorRT splits a batch above its profile's maximum.
    """
    classes = list(classifier.classes)
    index = None
    if target is not None:
        if target not in classes:
            raise ArgumentError(f"unknown class {target!r} for a heat map; the model's classes are {classes}",
                                params=("target",))
        index = classes.index(target)
    pred, tensor = prepare(item, 0, classifier.spec, classifier.input_rules)
    if tensor is None:
        return pred, None
    heat = occlusion_map(classifier.runner.infer, tensor, index, classifier.spec, config, batch_size, classes)
    return pred, heat


def _positions(size: int, side: int, step: float) -> list[int]:
    """Evenly spaced starts from 0 to size - side (flush with both edges), about `step` apart."""
    side = min(side, size)
    span = size - side
    n = math.ceil(span / step - 1e-9) + 1 if span > 0 else 1
    return sorted({round(v) for v in np.linspace(0, span, n)})
