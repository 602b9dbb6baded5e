"""Fixtures of the data-layer tests (builders live in cxr_fixtures.py).

Tests that read ../shared use the `shared_cxr` / `shared_originals` fixtures of tests/conftest.py,
which skip when it is absent; everything here is built in tmp_path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cxr_fixtures import build_covid_layout, build_kermany_layout, make_dicom


@pytest.fixture
def dicom_factory(tmp_path: Path) -> Callable[..., Path]:
    """make_dicom bound to tmp_path: dicom_factory("name.dcm", pixels, ...)."""

    def build(name: str, pixels: np.ndarray, **kwargs) -> Path:
        return make_dicom(tmp_path / name, pixels, **kwargs)

    return build


@pytest.fixture
def covid_layout(tmp_path: Path) -> Path:
    return build_covid_layout(tmp_path / "covid-chestxray-dataset")


@pytest.fixture
def kermany_layout(tmp_path: Path) -> Path:
    return build_kermany_layout(tmp_path / "chest_xray")
