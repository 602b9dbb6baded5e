"""Keras backend: the FP32 reference the accuracy gate compares every exported artifact against.

Only used where TensorFlow is installed (training machines); never picked by `auto` on a workstation.
"""

from __future__ import annotations

import time

import numpy as np

from edgecxr.core.errors import BundleError
from edgecxr.core.lazy import available, require
from edgecxr.runtime.base import Runner, register


@register
class KerasRunner(Runner):
    name = "keras"
    suffixes = (".keras",)

    @classmethod
    def availability(cls) -> str | None:
        return None if available("tensorflow") and available("keras") else "TensorFlow/Keras not installed (edgecxr[train])"

    def load(self) -> None:
        keras = require("keras", "the Keras reference model")
        if not self.path.is_file():
            raise BundleError(f"{self.path}: Keras model not found")
        try:
            self.model = keras.saving.load_model(self.path, compile=False)
        except Exception as exc:  # keras raises ValueError/TypeError/OSError for unreadable files
            raise BundleError(f"{self.path}: Keras cannot load this model: {exc}") from exc
        self.loaded = True
        self._last: dict[str, float] = {}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        if not self.loaded:
            self.load()
        t0 = time.perf_counter()
        out = self.model(np.ascontiguousarray(batch, dtype=np.float32), training=False)
        probs = np.asarray(out, dtype=np.float32)
        self._last = {"compute_ms": (time.perf_counter() - t0) * 1e3}
        return probs

    def timings(self) -> dict[str, float]:
        return dict(self._last)
