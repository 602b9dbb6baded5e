"""The models a service serves: each a `Classifier` with its own inference thread and batchers.

A model is served under a name: a shipped or registered model under its own name (`coronet`,
`cnn-lstm`, see `edgecxr models`), a bundle or model file under its folder's / file's name, or
under any name with `NAME=PATH`. The Open Inference Protocol side (`/v2/models/NAME/infer`)
takes the preprocessed tensor and returns the model's raw outputs under the model file's own names
(the reference ONNX files call the probabilities `probs`; `features` where the model has it),
as Triton serving the same file does;
the `/v1/classify` side runs the whole `Classifier` path (decoding limits, input checks,
temperature and out-of-distribution abstention), so its answers are the ones `edgecxr infer` gives.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.core.errors import BundleError
from edgecxr.runtime.base import PROBABILITIES
from edgecxr.runtime.input_checks import DEFAULT_RULES
from edgecxr.serve.batching import DynamicBatcher
from edgecxr.serve.stats import ModelStats

#: a served model name (URL path segment): what `edgecxr models add` accepts
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION = "1"
#: names that would be read as a route, not a model (Triton's URL space has the same ambiguity)
RESERVED = frozenset({"stats"})


@dataclass(frozen=True)
class ModelSpec:
    """One `-m` of `edgecxr serve`: the name it is served under and what `Classifier.load` gets."""

    name: str
    source: str

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """'coronet', 'runs/x' (served as 'x'), 'runs/x/model.int8.onnx' (as 'model.int8') or 'NAME=PATH'."""
        from edgecxr.runtime import store

        if "=" in text and not Path(text).exists():
            name, source = text.split("=", 1)
        else:
            source = text
            path = Path(text).expanduser()
            name = text if not path.exists() else (path.name if path.is_dir() else path.stem)
        name = name.strip().lower()
        if name in RESERVED:
            raise BundleError(f"model name {name!r} is reserved (GET /v2/models/stats: every model's statistics); "
                              "give NAME=PATH", params=("models",))
        if not NAME.match(name):
            raise BundleError(f"model name {name!r}: use 1-64 of a-z, 0-9, '.', '_', '-' (or give NAME=PATH)",
                              params=("models",))
        store.resolve(source)  # a typo fails here, before the server starts, with the list of names
        return cls(name, source)


@dataclass
class ServedModel:
    """A loaded model with its thread, batchers and Open Inference Protocol description."""

    name: str
    classifier: Any
    input_name: str
    output_shapes: dict[str, list[int]] = field(default_factory=dict)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="model"))
    tensors: DynamicBatcher | None = None  #: /v2 infer rows
    images: DynamicBatcher | None = None  #: /v1/classify prepared inputs
    ready: bool = False
    warm_up_s: float = 0.0  #: the warm-up batch of two, for the first Retry-After estimates
    #: runner output name -> served name: the model file's own first output name for the probabilities
    output_alias: dict[str, str] = field(default_factory=dict)
    stats: ModelStats = field(default_factory=ModelStats)  #: Triton's statistics extension (stats.py)

    @property
    def input_shape(self) -> list[int]:
        return [-1, *self.classifier.spec.input_shape]

    @property
    def labels(self) -> dict[str, list[str]]:
        """Output name -> class names, for the classification extension: the probabilities output has
        the model's classes (as `labels.txt` in `edgecxr export triton`), other outputs none."""
        return {self.output_alias.get(PROBABILITIES, PROBABILITIES): list(self.classifier.classes)}

    def run_tensors(self, rows: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """One batch of preprocessed rows through the runner: every output by its served name, split per row."""
        outputs = self.classifier.runner.infer_outputs(np.stack(rows))
        named = {self.output_alias.get(name, name): out for name, out in outputs.items()}
        return [{name: out[i] for name, out in named.items()} for i in range(len(rows))]

    def run_prepared(self, items: list[tuple[Any, np.ndarray | None]]) -> list[Any]:
        """One batch of `runtime.inputs.prepare` results through the Classifier's model half."""
        return self.classifier._run_model(items)

    def warm_up(self) -> None:
        """One inference on a mid-grey batch of two (both batch paths), checked; raises BundleError if wrong."""
        spec = self.classifier.spec
        lo, hi = spec.output_range
        rows = [np.full(spec.input_shape, (lo + hi) / 2, np.float32)] * 2
        t0 = time.perf_counter()
        results = self.run_tensors(rows)
        self.warm_up_s = time.perf_counter() - t0
        n = len(self.classifier.classes)
        for name, value in results[0].items():
            self.output_shapes[name] = [-1, *value.shape]
        probs = np.stack([r[next(iter(r))] for r in results])
        if probs.shape != (2, n) or not np.isfinite(probs).all() or not np.allclose(probs.sum(axis=1), 1, atol=1e-2):
            raise BundleError(f"model {self.name}: the warm-up inference gave no valid probabilities "
                              f"(shape {probs.shape}, expected (2, {n}) rows summing to 1)")
        self.ready = True

    def metadata(self) -> dict[str, Any]:
        """GET /v2/models/NAME: the Open Inference Protocol's model metadata."""
        info = self.classifier.backend_info
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}.get(info["backend"],
                                                                                             info["backend"]),
            "inputs": [{"name": self.input_name, "datatype": "FP32", "shape": self.input_shape}],
            "outputs": [{"name": n, "datatype": "FP32", "shape": s} for n, s in self.output_shapes.items()],
            "parameters": {"classes": list(self.classifier.classes), "preprocess": self.classifier.spec.id,
                           "precision": info.get("precision"), "artifact_sha256": info.get("sha256")},
        }

    def config(self, max_batch: int, max_delay_s: float) -> dict[str, Any]:
        """GET /v2/models/NAME/config: Triton's model configuration, as JSON (what tritonclient reads)."""
        return {
            "name": self.name,
            "platform": self.metadata()["platform"],
            "max_batch_size": max_batch,
            "input": [{"name": self.input_name, "data_type": "TYPE_FP32", "dims": self.input_shape[1:]}],
            "output": [{"name": n, "data_type": "TYPE_FP32", "dims": s[1:]} for n, s in self.output_shapes.items()],
            "dynamic_batching": {"max_queue_delay_microseconds": int(max_delay_s * 1e6)},
        }

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.classifier.close()


def load_model(spec: ModelSpec, backend: str = "auto", precision: str | None = None, input_rules: Any = DEFAULT_RULES,
               allow_rejected: bool = False) -> ServedModel:
    """`Classifier.load` one model for serving (not yet warmed up); `input_rules` None: no input checks."""
    from edgecxr.runtime.classifier import Classifier

    clf = Classifier.load(spec.source, backend=backend, precision=precision, allow_rejected=allow_rejected,
                          input_rules=input_rules)
    served = ServedModel(spec.name, clf, str(getattr(clf.runner, "input_name", None) or "image"))
    names = file_output_names(clf.runner)
    if names:
        served.output_alias = {PROBABILITIES: names[0]}
    return served


def file_output_names(runner: Any) -> list[str] | None:
    """The output names in the model file (probabilities first), None where the runner cannot tell.

    The service answers under these names, not the runner's generic `probabilities`, because
    Triton serving the same file (`edgecxr export triton`) uses the file's names: a client written
    against this service then runs against Triton unchanged.
    """
    names = getattr(runner, "output_names", None)
    if callable(names):
        names = names()
    if not names:
        names = getattr(runner, "_outputs", None)
    return [str(n) for n in names] if names else None
