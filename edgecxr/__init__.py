"""edgecxr: chest X-ray classifiers (CoroNet, CNN-LSTM) from training to verified edge engines.

`from edgecxr import Classifier` is the workstation API; it imports neither TensorFlow nor
TensorRT until a backend that needs them is chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgecxr.core.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from edgecxr.runtime.classifier import Classifier, Prediction

__all__ = ["Classifier", "Prediction", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "Prediction"):
        from edgecxr.runtime import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'edgecxr' has no attribute {name!r}")
