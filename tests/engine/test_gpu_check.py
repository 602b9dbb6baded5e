"""The GPU acceptance run refuses cleanly where TensorRT cannot run: one line, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgecxr.runtime.tensorrt import TensorRTRunner

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


@pytest.mark.skipif(TensorRTRunner.availability() is None, reason="TensorRT runs here: `make gpu-check` does the real run")
def test_gpu_check_refuses_in_one_line_without_tensorrt(tmp_path):
    out = tmp_path / "gpu-check-out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: skipped, TensorRT cannot run here: ")
    assert proc.stdout == "" and not out.exists()


def test_gpu_check_plans_the_shipped_precisions():
    """Both reference models ship FP16 and INT8: the run plans four engines."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shipped = {(m, p): module._ships(m, p) for m, precs in module.MODELS.items() for p in precs}
    assert shipped == {("coronet", "fp16"): True, ("coronet", "int8"): True,
                       ("cnn-lstm", "fp16"): True, ("cnn-lstm", "int8"): True}
    assert set(module.SHAPES) == set(module.MODELS)
