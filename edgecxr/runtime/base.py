"""The backend interface every runtime implements, and the registry `auto` chooses from.

Modelled on Polygraphy's BaseRunner: a runner wraps one model file, is a context manager,
`load()`s once and then `infer(batch)`s many times. Input is a preprocessed float32 NHWC batch
(see edgecxr.preprocess); output is float32 class probabilities (N, n_classes).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgecxr.core.errors import BackendUnavailableError

_REGISTRY: dict[str, type[Runner]] = {}


class Runner(abc.ABC):
    """One loaded model on one backend."""

    #: registry name, e.g. "onnxruntime", "tensorrt", "keras"
    name: ClassVar[str] = ""
    #: file suffixes this backend can load
    suffixes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | Path, **options: Any):
        self.path = Path(path)
        self.options = options
        self.loaded = False

    # -- required -----------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def availability(cls) -> str | None:
        """None when this backend can run here, else a one-line reason why not."""

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model / build the session; called once before infer."""

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) float32 for a preprocessed NHWC float32 batch."""

    # -- optional -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release sessions, buffers and streams."""
        self.loaded = False

    def describe(self) -> dict[str, Any]:
        """What ran: backend, device, precision; recorded in verify/bench output."""
        return {"backend": self.name, "path": str(self.path)}

    def timings(self) -> dict[str, float]:
        """Milliseconds of the last infer split into h2d/compute/d2h where the backend can tell."""
        return {}

    def __enter__(self) -> Runner:
        if not self.loaded:
            self.load()
            self.loaded = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register(cls: type[Runner]) -> type[Runner]:
    """Class decorator adding a runner to the registry under `cls.name`."""
    _REGISTRY[cls.name] = cls
    return cls


def _ensure_registered() -> None:
    # Importing the modules registers their runners; none of them imports its framework at import time.
    from edgecxr.runtime import keras_runner, onnxrt, tensorrt  # noqa: F401


def backends() -> dict[str, type[Runner]]:
    _ensure_registered()
    return dict(_REGISTRY)


def availability() -> dict[str, str | None]:
    """Backend name -> None if usable here, else the reason it is not."""
    return {name: cls.availability() for name, cls in backends().items()}


def create_runner(name: str, path: str | Path, **options: Any) -> Runner:
    """Instantiate a registered backend (not yet loaded; use it as a context manager)."""
    registry = backends()
    if name not in registry:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {sorted(registry)}")
    cls = registry[name]
    reason = cls.availability()
    if reason:
        raise BackendUnavailableError(f"backend {name!r} is not available here: {reason}")
    return cls(path, **options)


def infer_in_batches(
    infer: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int = 16, progress: bool = False
) -> np.ndarray:
    """Run `infer` (a runner's, or a Keras model wrapped) over `x` in batches; stacked float32 probabilities.

    Batching keeps memory flat on whole splits; the progress bar shows on a terminal only.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if len(x) == 0:
        raise ValueError("no inputs to predict on")
    from tqdm.auto import tqdm

    starts = range(0, len(x), batch_size)
    bar = tqdm(starts, desc="inference", disable=None if progress else True, unit="batch", leave=False)
    return np.concatenate([np.asarray(infer(x[i : i + batch_size]), dtype=np.float32) for i in bar], axis=0)
