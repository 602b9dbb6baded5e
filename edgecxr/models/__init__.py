"""Model registry: `build_model("coronet" | "cnn-lstm", **options)` and each model's preprocessing spec.

Builders import Keras lazily, so importing this package never pulls in TensorFlow. Defaults are the
papers' configurations; the few extra options (input size, dropout, tiny variants) exist for
experiments and for tests that must build and train a model in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgecxr.core.errors import EdgeCXRError
from edgecxr.core.spec import PreprocessSpec, get_spec

MODEL_NAMES = ("coronet", "cnn-lstm")

#: Options a `tiny=True` build uses (test-only; far too small to learn anything useful).
TINY_OPTIONS: dict[str, dict[str, Any]] = {
    "coronet": {"input_size": 32, "base": "tiny", "dense_units": 16, "weights": None},
    "cnn-lstm": {"input_size": 32, "width": 1 / 16, "blocks": 3, "lstm_units": 16},
}


def _builder(name: str) -> Callable[..., Any]:
    if name == "coronet":
        from edgecxr.models.coronet import build_coronet

        return build_coronet
    if name == "cnn-lstm":
        from edgecxr.models.cnn_lstm import build_cnn_lstm

        return build_cnn_lstm
    raise EdgeCXRError(f"unknown model {name!r}; expected one of {list(MODEL_NAMES)}")


def model_options(name: str, tiny: bool = False, **options: Any) -> dict[str, Any]:
    """The full option set a build will use: tiny defaults (if asked) overridden by explicit options.

    Options whose value is None are dropped (so CLI "not given" falls back to the default), except
    `weights`, where None means "random initialisation".
    """
    _builder(name)  # validates the name
    merged = dict(TINY_OPTIONS[name]) if tiny else {}
    for key, value in options.items():
        if value is not None or key == "weights":
            merged[key] = value
    return merged


def build_model(name: str, *, tiny: bool = False, **options: Any) -> Any:
    """Build an uncompiled Keras model by name.

    Args:
        name: "coronet" (4 classes, Xception base) or "cnn-lstm" (3 classes).
        tiny: start from TINY_OPTIONS (test-only miniature of the same architecture).
        **options: passed to `build_coronet` / `build_cnn_lstm` (input_size, weights, dropout,
            base, dense_units / width, blocks, lstm_units).
    """
    builder = _builder(name)
    opts = model_options(name, tiny=tiny, **options)
    if name == "cnn-lstm":
        weights = opts.pop("weights", None)
        model = builder(**opts)
        if weights is not None and str(weights).lower() != "none":
            _load_weights(model, weights)
        return model
    return builder(**opts)


def _load_weights(model: Any, weights: Any) -> None:
    """Initialise the CNN-LSTM from a weights file of the same architecture (it has no ImageNet weights)."""
    from pathlib import Path

    text = str(weights)
    if text.lower() == "imagenet":
        raise EdgeCXRError("the CNN-LSTM has no ImageNet weights (the paper trains it from scratch); use --weights none")
    if not Path(text).is_file():
        raise EdgeCXRError(f"weights file {text} not found")
    try:
        model.load_weights(text)
    except Exception as exc:  # Keras raises ValueError/KeyError variants on mismatch
        raise EdgeCXRError(f"could not load CNN-LSTM weights from {text}: {exc}") from exc


def default_spec(name: str, input_size: int | None = None) -> PreprocessSpec:
    """The preprocessing spec of a model family, at `input_size` when given (else the paper's size)."""
    _builder(name)
    spec = get_spec(name)
    return spec.with_size(int(input_size)) if input_size else spec


def default_input_size(name: str, tiny: bool = False) -> int:
    """Input side a build uses when none is given: the paper's, or the tiny variant's."""
    if tiny:
        return int(TINY_OPTIONS[name]["input_size"])
    return default_spec(name).height


__all__ = ["MODEL_NAMES", "TINY_OPTIONS", "build_model", "default_input_size", "default_spec", "model_options"]
