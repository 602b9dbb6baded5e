"""The backend interface every runtime implements; the base class owns the lifecycle.

Modelled on Polygraphy's BaseRunner: a runner wraps one model file, is a context manager,
`load()`s once and then `infer(batch)`s many times. Input is a preprocessed float32 NHWC batch
(see edgecxr.core.spec); output is float32 class probabilities (N, n_classes). A model may have a
second output, `features` (N, D): the penultimate layer, which the out-of-distribution score of
`edgecxr.runtime.ood` reads; `infer_outputs` returns every output by name, `infer` only the
probabilities, so callers that need no features never see them.

A backend implements `_load`, `_infer` and (if it holds resources) `_close`. The public
`load` / `infer` / `close` here do what every backend needs the same way: the file check, loading
once, loading on first use, the compute timing, and releasing exactly once.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgecxr.core.errors import BundleError

#: the first output of every model (the name `infer_outputs` gives it, whatever the file calls it)
PROBABILITIES = "probabilities"
#: the optional second output: penultimate-layer features for the out-of-distribution score
FEATURES = "features"


class Runner(abc.ABC):
    """One loaded model on one backend."""

    #: backend name, e.g. "onnxruntime", "tensorrt", "keras" (the artifact table's `backend`)
    name: ClassVar[str] = ""
    #: what the file is, for "not found" messages
    kind: ClassVar[str] = "model"
    #: a runtime that runs the files the artifact table gives another backend (OpenVINO runs the ONNX
    #: files of "onnxruntime"), not kinds of its own; None for the table's own backends
    runs_files_of: ClassVar[str | None] = None

    def __init__(self, path: str | Path, **options: Any):
        self.path = Path(path)
        self.options = options
        self.loaded = False
        self._last: dict[str, float] = {}

    # -- for backends to implement ---------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def availability(cls) -> str | None:
        """None when this backend can run here, else a one-line reason why not."""

    @abc.abstractmethod
    def _load(self) -> None:
        """Load the model / build the session (the file exists)."""

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """Class probabilities for a preprocessed NHWC float32 batch (any float array), or a dict of
        every output by name with the probabilities first (models that also output `features`)."""

    def _close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release sessions, buffers and streams."""

    # -- the lifecycle -----------------------------------------------------------------------------
    def load(self) -> Runner:
        """Load once; a second call does nothing."""
        if not self.loaded:
            if not self.path.is_file():
                raise BundleError(f"{self.path}: {self.kind} not found")
            try:
                self._load()
            except BaseException:
                self._close()  # a half-done load (buffers, a stream) is released, not leaked
                raise
            self.loaded = True
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) float32; loads on first use."""
        return self.infer_outputs(batch)[PROBABILITIES]

    def infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output as float32 by name: PROBABILITIES first, then e.g. FEATURES; loads on first use."""
        self.load()
        t0 = time.perf_counter()
        raw = self._infer(batch)
        if self._timed_by_base:
            self._last = {"compute_ms": (time.perf_counter() - t0) * 1e3}
        if not isinstance(raw, dict):
            return {PROBABILITIES: np.asarray(raw, dtype=np.float32)}
        if not raw:
            raise BundleError(f"{self.path}: the model returned no outputs")
        names = list(raw)
        out = {PROBABILITIES: np.asarray(raw[names[0]], dtype=np.float32)}
        out.update((n, np.asarray(raw[n], dtype=np.float32)) for n in names[1:])
        return out

    #: False where `_infer` records its own split of the time (TensorRT: h2d / compute / d2h)
    _timed_by_base: ClassVar[bool] = True

    def close(self) -> None:
        """Release what `load` took; safe to call twice."""
        if self.loaded:
            self._close()
            self.loaded = False

    def describe(self) -> dict[str, Any]:
        """What ran: backend, device, precision; recorded in verify/bench output."""
        return {"backend": self.name, "path": str(self.path)}

    def io_shapes(self) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
        """(input shape, output shape) the loaded model declares; dynamic dims as str/None/-1, None where unknown.

        Lets the caller compare them with the bundle's preprocessing and classes right after the
        load, instead of the first batch failing deep inside the backend.
        """
        return None, None

    def output_names(self) -> list[str] | None:
        """Names of the loaded model's outputs (probabilities first), None where the backend cannot tell."""
        return None

    def embedded_metadata(self) -> dict[str, str]:
        """Metadata the model file carries itself (ONNX metadata_props), {} where it has none."""
        return {}

    def timings(self) -> dict[str, float]:
        """Milliseconds of the last infer split into h2d/compute/d2h where the backend can tell."""
        return dict(self._last)

    def __enter__(self) -> Runner:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()


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


class OnnxFileIO:
    """What the runners of ONNX files (onnxruntime, openvino) share once loaded: one input, the
    probabilities first and an optional `features` output, and the shapes and output names they
    report. `_set_io` checks the contract and records them; the accessors read what it recorded."""

    path: Path
    loaded: bool

    def _set_io(self, n_inputs: int, outputs: list[str], input_shape: tuple[Any, ...],
                output_shape: tuple[Any, ...]) -> None:
        if n_inputs != 1 or not outputs or outputs[1:] not in ([], [FEATURES]):
            raise BundleError(f"{self.path}: expected 1 input and 1 output (plus an optional {FEATURES!r}), got "
                              f"{n_inputs} inputs and outputs {outputs}")
        self._outputs = list(outputs)
        self.input_shape = input_shape
        self.output_shape = output_shape

    def io_shapes(self) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
        if not self.loaded:
            return None, None
        return self.input_shape, self.output_shape

    def output_names(self) -> list[str] | None:
        return list(self._outputs) if self.loaded else None
