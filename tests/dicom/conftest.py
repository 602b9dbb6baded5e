"""Fixtures for the DICOM tests: a tiny real model bundle (FP32 ONNX only, for speed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime import tinymodels


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the tiny ONNX classifier (FP32 only: no quantizer run, loads in milliseconds)."""
    folder = tmp_path_factory.mktemp("model") / "bundle"
    tinymodels.make_bundle(folder, int8=False, fp16=False)
    return folder
