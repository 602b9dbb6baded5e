"""Lazy imports of heavy optional packages (TensorFlow, tf2onnx, TensorRT, Polygraphy).

`edgecxr --help` and `edgecxr infer` must start in well under a second on a workstation without
TensorFlow, so heavy packages are only imported inside the function that needs them, through
`require`, which turns an ImportError into a `MissingDependencyError` naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType

from edgecxr.core.errors import MissingDependencyError

# Which extra provides each optional top-level module.
_EXTRA_OF = {
    "tensorflow": "train",
    "keras": "train",
    "tf2onnx": "train",
    "onnxconverter_common": "train",
    "matplotlib": "train",
    "polygraphy": "gpu",
    "pylibjpeg": "dicom",
}


#: modules whose import starts TensorFlow (and with it its C++ logging)
_IMPORTS_TENSORFLOW = ("tensorflow", "keras", "tf2onnx", "onnxconverter_common")


def available(module: str) -> bool:
    """True when `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the extra that provides it."""
    if module.split(".")[0] in _IMPORTS_TENSORFLOW:
        quiet_tensorflow()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if top == "tensorrt":
            raise MissingDependencyError(
                "tensorrt",
                None,
                purpose or "TensorRT engines",
                hint="TensorRT comes from the platform: JetPack on Jetson, NVIDIA's pip index "
                "(pip install tensorrt) or an NGC container on x86-64 (see README, 'TensorRT')",
            ) from exc
        raise MissingDependencyError(top, _EXTRA_OF.get(top), purpose) from exc


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter unless the user asked for it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
