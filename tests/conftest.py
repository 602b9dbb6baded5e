"""Shared fixtures: the real data beside the checkout (skipped when absent) and small committed images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "images"


def _shared_root() -> Path:
    env = os.environ.get("EDGECXR_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_cxr() -> Path:
    """../shared/data/cxr (the curated 1,274-image set); skips when it is not beside the checkout."""
    root = _shared_root() / "data" / "cxr"
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"real data not found at {root} (set EDGECXR_SHARED to the shared/ folder)")
    return root


@pytest.fixture(scope="session")
def shared_originals() -> Path:
    """../shared/data/cxr-originals/files (full-size source JPEG/PNG); skips when absent."""
    root = _shared_root() / "data" / "cxr-originals" / "files"
    if not root.is_dir():
        pytest.skip(f"original files not found at {root}")
    return root


@pytest.fixture(scope="session")
def examples() -> Path:
    """Committed CC BY 4.0 Kermany example images (see examples/images/ATTRIBUTION.md)."""
    return EXAMPLES


@pytest.fixture(autouse=True)
def int8_capable_cpu(monkeypatch):
    """Tests of the artifact choice assume a CPU with an integer dot-product instruction (where `auto`
    prefers a gated INT8 model), whatever CPU runs them; tests of the other order patch it back."""
    monkeypatch.setattr("edgecxr.runtime.select.cpu_int8_fast", lambda: True)


@pytest.fixture(autouse=True)
def cpu_runtime_pinned(monkeypatch):
    """`auto` runs ONNX files on ONNX Runtime in tests, as they assert, instead of timing it against
    OpenVINO where that is installed (tests/runtime/test_openvino_pick.py tests the measured choice)."""
    monkeypatch.setenv("EDGECXR_CPU_RUNTIME", "onnxruntime")
