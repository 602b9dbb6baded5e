"""Keras backend: the FP32 reference the accuracy gate compares every exported artifact against.

Only used where TensorFlow is installed (training machines); never picked by `auto` on a workstation.
"""

from __future__ import annotations

import numpy as np

from edgecxr.core.errors import BundleError
from edgecxr.core.lazy import available, require
from edgecxr.runtime.base import Runner


class KerasRunner(Runner):
    name = "keras"
    kind = "Keras model"

    @classmethod
    def availability(cls) -> str | None:
        return None if available("tensorflow") and available("keras") else "TensorFlow/Keras not installed (edgecxr[train])"

    def _load(self) -> None:
        keras = require("keras", "the Keras reference model")
        try:
            self.model = keras.saving.load_model(self.path, compile=False)
        except Exception as exc:  # keras raises ValueError/TypeError/OSError for unreadable files
            raise BundleError(f"{self.path}: Keras cannot load this model: {exc}") from exc

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(np.ascontiguousarray(batch, dtype=np.float32), training=False))

    def _close(self) -> None:
        self.model = None
