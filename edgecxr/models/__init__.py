"""The model registry: everything that makes a model CoroNet or the CNN-LSTM, in one table.

Each model module (coronet.py, cnn_lstm.py) states its own facts next to its builder: name, class
order, preprocessing spec, the paper's training recipe, the from-scratch peak rate and the
test-only miniature. This table collects them; training, the CLI and the docs ask it instead of
keeping their own lists. Builders import Keras lazily, so importing this package never pulls in
TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.spec import PreprocessSpec
from edgecxr.models import cnn_lstm, coronet


@dataclass(frozen=True)
class ModelDef:
    """One model family."""

    name: str
    classes: tuple[str, ...]  #: output order
    spec: PreprocessSpec  #: preprocessing at the paper's input size
    builder: Callable[..., Any]  #: builds the uncompiled Keras model
    paper_recipe: dict[str, Any]  #: the paper's hyper-parameters
    scratch_lr: float  #: peak rate of the from-scratch recipe
    tiny: dict[str, Any]  #: builder options of the test-only miniature
    has_imagenet_weights: bool  #: whether `weights="imagenet"` means anything


MODELS: dict[str, ModelDef] = {
    m.name: m
    for m in (
        ModelDef(coronet.NAME, coronet.CLASSES, coronet.CORONET_V1, coronet.build_coronet, coronet.PAPER_RECIPE,
                 coronet.SCRATCH_LR, coronet.TINY, True),
        ModelDef(cnn_lstm.NAME, cnn_lstm.CLASSES, cnn_lstm.CNN_LSTM_V1, cnn_lstm.build_cnn_lstm,
                 cnn_lstm.PAPER_RECIPE, cnn_lstm.SCRATCH_LR, cnn_lstm.TINY, False),
    )
}
MODEL_NAMES = tuple(MODELS)


def get(name: str) -> ModelDef:
    """The registry entry of `name`; EdgeCXRError naming the known models otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise EdgeCXRError(f"unknown model {name!r}; expected one of {list(MODELS)}") from None


def model_options(name: str, tiny: bool = False, **options: Any) -> dict[str, Any]:
    """The full option set a build will use: tiny defaults (if asked) overridden by explicit options.

    Options whose value is None are dropped (so "not given" falls back to the default), except
    `weights`, where None means "random initialisation".
    """
    merged = dict(get(name).tiny) if tiny else {}
    for key, value in options.items():
        if value is not None or key == "weights":
            merged[key] = value
    return merged


def build_model(name: str, *, tiny: bool = False, **options: Any) -> Any:
    """Build an uncompiled Keras model by name.

    Args:
        name: "coronet" (4 classes, Xception base) or "cnn-lstm" (3 classes).
        tiny: start from the model's TINY options (test-only miniature of the same architecture).
        **options: passed to the builder (input_size, weights, dropout, base, dense_units / width,
            blocks, lstm_units).
    """
    model_def = get(name)
    opts = model_options(name, tiny=tiny, **options)
    if model_def.has_imagenet_weights:
        return model_def.builder(**opts)
    weights = opts.pop("weights", None)
    model = model_def.builder(**opts)
    if weights is not None and str(weights).lower() != "none":
        _load_weights(model_def, model, weights)
    return model


def _load_weights(model_def: ModelDef, model: Any, weights: Any) -> None:
    """Initialise a model without ImageNet weights from a weights file of the same architecture."""
    text = str(weights)
    if text.lower() == "imagenet":
        raise EdgeCXRError(f"{model_def.name} has no ImageNet weights (the paper trains it from scratch); "
                           "use random initial weights or a weights file")
    if not Path(text).is_file():
        raise EdgeCXRError(f"weights file {text} not found")
    try:
        model.load_weights(text)
    except Exception as exc:  # Keras raises ValueError/KeyError variants on mismatch
        raise EdgeCXRError(f"could not load {model_def.name} weights from {text}: {exc}") from exc


def default_spec(name: str, input_size: int | None = None) -> PreprocessSpec:
    """The preprocessing spec of a model family, at `input_size` when given (else the paper's size)."""
    spec = get(name).spec
    return spec.with_size(int(input_size)) if input_size else spec


def default_input_size(name: str, tiny: bool = False) -> int:
    """Input side a build uses when none is given: the paper's, or the tiny variant's."""
    if tiny:
        return int(get(name).tiny["input_size"])
    return default_spec(name).height
