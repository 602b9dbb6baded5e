"""Training-time augmentation and batching in NumPy/OpenCV, so training runs on any Keras 3 backend.

Why NumPy and not `tf.data` or Keras' random layers: the training loop must run under JAX and
PyTorch too (a GPU machine without TensorFlow is where long runs happen), and on ~900 cached
150-224 px images an OpenCV affine warp costs well under a millisecond, far below one training step.
Augmentation never enters the model graph, so the exported ONNX is the same with or without it.

Policies (`POLICIES`), all in the preprocessed tensor's own units:
  * `none`: no augmentation.
  * `paper`: the CNN-LSTM paper's list: rotation +-10 deg, shift +-5 %, zoom +-10 %, black fill.
  * `cxr`: chosen for from-scratch training on chest films (see docs/REPRODUCTION.md, ablation):
    rotation +-10 deg, shift +-8 %, zoom +-12 %, brightness +-0.1 and contrast x[0.85, 1.15] on the
    [0, 1] intensity scale (exposure and detector differences between sites). No left/right flip:
    the heart and the aortic knob sit on the patient's left, and laterality markers are text; a
    flipped film is not a film the scanner produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.lazy import require


@dataclass(frozen=True)
class AugmentPolicy:
    """Magnitudes of one augmentation policy (0 disables a transform)."""

    rotation_deg: float = 0.0
    shift: float = 0.0  #: fraction of the side, each axis
    zoom: float = 0.0  #: scale drawn from [1 - zoom, 1 + zoom]
    brightness: float = 0.0  #: added on the [0, 1] intensity scale
    contrast: float = 0.0  #: contrast factor drawn from [1 - contrast, 1 + contrast]

    @property
    def geometric(self) -> bool:
        return bool(self.rotation_deg or self.shift or self.zoom)

    @property
    def photometric(self) -> bool:
        return bool(self.brightness or self.contrast)


POLICIES: dict[str, AugmentPolicy] = {
    "none": AugmentPolicy(),
    "paper": AugmentPolicy(rotation_deg=10.0, shift=0.05, zoom=0.10),
    "cxr": AugmentPolicy(rotation_deg=10.0, shift=0.08, zoom=0.12, brightness=0.10, contrast=0.15),
}


def get_policy(name: str) -> AugmentPolicy:
    if name not in POLICIES:
        raise EdgeCXRError(f"unknown augmentation policy {name!r}; expected one of {sorted(POLICIES)}")
    return POLICIES[name]


def warp(img: np.ndarray, angle: float, zoom: float, tx: float, ty: float, offset: float = 0.0) -> np.ndarray:
    """`img` (HxWxC) turned by `angle` degrees and scaled by `zoom` about its centre, then shifted by (tx, ty)
    pixels; what that uncovers is black in model units (`offset`) in every channel."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, zoom)
    m[:, 2] += (tx, ty)
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(offset, offset, offset, offset))
    return out[..., None] if out.ndim == 2 else out  # OpenCV drops a single channel axis


def augment_image(img: np.ndarray, rng: np.random.Generator, policy: AugmentPolicy,
                  scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """One random view of a preprocessed HxWxC float32 image (value = v * scale + offset, v in [0, 1]).

    Geometric transforms fill with intensity 0 (black, as the papers' "constant" fill); photometric
    ones act on v and clip it to [0, 1], so the output stays in the model's input range.
    """
    out = img
    h, w = img.shape[:2]
    if policy.geometric:
        angle = rng.uniform(-policy.rotation_deg, policy.rotation_deg)
        zoom = rng.uniform(1.0 - policy.zoom, 1.0 + policy.zoom)
        tx, ty = rng.uniform(-policy.shift, policy.shift, size=2) * (w, h)
        out = warp(out, angle, zoom, tx, ty, offset)
    if policy.photometric:
        v = (out - offset) / scale
        c = rng.uniform(1.0 - policy.contrast, 1.0 + policy.contrast)
        b = rng.uniform(-policy.brightness, policy.brightness)
        v = np.clip((v - 0.5) * c + 0.5 + b, 0.0, 1.0)
        out = v * scale + offset
    return np.asarray(out, dtype=np.float32)


def one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[np.asarray(y, dtype=np.int64)]


def mix_batch(x: np.ndarray, y: np.ndarray, w: np.ndarray | None, rng: np.random.Generator,
              alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Mixup of one batch: lam x batch + (1 - lam) x the batch in a random order (lam ~ Beta(alpha, alpha))."""
    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(len(x))
    def blend(a: np.ndarray) -> np.ndarray:
        return (lam * a + (1.0 - lam) * a[perm]).astype(np.float32)
    return blend(x), blend(y), None if w is None else blend(w)


def batch_sequence(x: np.ndarray, y: np.ndarray, num_classes: int, batch_size: int, policy: AugmentPolicy,
                   seed: int, class_weights: dict[int, float] | None = None,
                   scale: float = 1.0, offset: float = 0.0, targets: np.ndarray | None = None,
                   mixup: float = 0.0) -> Any:
    """A `keras.utils.PyDataset` of shuffled (images, one-hot labels[, sample weights]) batches.

    One-hot labels let the loss apply label smoothing (`targets`, (N, C), replace them: distillation's
    mix of soft and true labels); class weights become per-sample weights
    (works the same on every backend). The order is reshuffled every epoch from `seed` + epoch,
    so a resumed run sees the same sequence of epochs as an uninterrupted one would.

    `mixup` > 0 (the Beta distribution's alpha; Zhang et al. 2018): each augmented batch is blended with
    a shuffled copy of itself, images, targets and sample weights alike, with one lambda ~ Beta(alpha,
    alpha) per batch, drawn from the batch's own generator (so still a pure function of seed, epoch,
    batch). A regulariser against memorising 1,600 images: the targets are never one-hot again.
    """
    keras = require("keras", "training")
    weights = None
    if class_weights:
        table = np.array([class_weights.get(c, 1.0) for c in range(num_classes)], dtype=np.float32)
        weights = table[np.asarray(y, dtype=np.int64)]
    labels = one_hot(y, num_classes) if targets is None else np.asarray(targets, dtype=np.float32)  # distillation

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0
            self._order = self._shuffle(0)

        def _shuffle(self, epoch: int) -> np.ndarray:
            return np.random.default_rng([seed, epoch]).permutation(len(x))

        def __len__(self) -> int:
            return math.ceil(len(x) / batch_size)

        def __getitem__(self, i: int) -> tuple[np.ndarray, ...]:
            return self.batch(self.epoch, i, self._order)

        def batch(self, epoch: int, i: int, order: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
            """Batch `i` of `epoch`: a pure function of (seed, epoch, i), whatever ran before."""
            order = self._shuffle(epoch) if order is None else order
            idx = order[i * batch_size : (i + 1) * batch_size]
            rng = np.random.default_rng([seed, epoch, i])
            xb = x[idx]
            if policy.geometric or policy.photometric:
                xb = np.stack([augment_image(im, rng, policy, scale, offset) for im in xb])
            yb = labels[idx]
            wb = None if weights is None else weights[idx]
            if mixup > 0:
                xb, yb, wb = mix_batch(xb, yb, wb, rng, mixup)
            return (xb, yb) if wb is None else (xb, yb, wb)

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch
            self._order = self._shuffle(epoch)

        def on_epoch_end(self) -> None:
            self.set_epoch(self.epoch + 1)

    return Batches()

