"""Fixtures for runtime tests: a tiny real ONNX model, a tiny bundle, real example images."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import tinymodels


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tinymodels.make_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")


@pytest.fixture()
def tiny_bundle(tmp_path: Path):
    return tinymodels.make_bundle(tmp_path / "bundle")


@pytest.fixture(scope="session")
def images() -> list[Path]:
    found = tinymodels.real_images(4)
    if not found:
        pytest.skip("no real X-ray images (examples/images or ../shared/data/cxr) available")
    return found
