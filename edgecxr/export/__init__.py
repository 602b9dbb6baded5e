"""Export stages: Keras -> ONNX FP32 (`export_bundle`) and FP16 (`export_fp16`).

Importing this package imports neither TensorFlow nor tf2onnx; they are loaded (through
`edgecxr._lazy.require`) only when an export runs. INT8 calibration lives in `edgecxr.quantize`
and the accuracy gate in `edgecxr.verify`.
"""

from __future__ import annotations

from edgecxr.export.onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    export_bundle,
    keras_to_onnx,
    read_metadata,
)

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "ExportError", "export_bundle", "keras_to_onnx", "read_metadata"]
