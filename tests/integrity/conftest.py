"""Fixtures of the integrity campaign, and its one-line summary at the end of the test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from runtime import tinymodels

from integrity import campaign


@pytest.fixture(scope="session")
def template_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny real bundle (FP32, FP16 and INT8 ONNX of a 32x32 classifier), built once."""
    return tinymodels.make_bundle(tmp_path_factory.mktemp("integrity") / "bundle").dir


@pytest.fixture()
def case_dir(tmp_path: Path, template_bundle: Path) -> Path:
    """A fresh folder holding a copy of the tiny bundle as `bundle/`; each case writes its files here."""
    shutil.copytree(template_bundle, tmp_path / "bundle")
    return tmp_path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001 - pytest hook
    text = campaign.summary()
    if text:
        terminalreporter.write_sep("-", "integrity campaign")
        terminalreporter.write_line(text)
