"""NOT TRITON: a minimal stand-in for Triton's `triton_python_backend_utils`, for tests only.

Triton Inference Server cannot be installed here. This module offers the few names the exported
`model.py` calls (Tensor, InferenceRequest, InferenceResponse, TritonError,
get_input_tensor_by_name) with the same call shapes, so a test can drive `TritonPythonModel.execute`
and compare its tensors with edgecxr's own preprocessing. It proves nothing about Triton itself
(scheduling, batching, the C++ side); docs/TRITON.md says what was and was not run.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TritonError:
    def __init__(self, message: str):
        self._message = message

    def message(self) -> str:
        return self._message


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceRequest:
    """What Triton hands `execute`: named input tensors (the stub builds them from numpy arrays)."""

    def __init__(self, inputs: list[Tensor]):
        self._inputs = {t.name(): t for t in inputs}

    def inputs(self) -> list[Tensor]:
        return list(self._inputs.values())


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor], error: TritonError | None = None):
        self._outputs, self._error = output_tensors, error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Any:
    return request._inputs.get(name)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Any:
    return next((t for t in response.output_tensors() if t.name() == name), None)
