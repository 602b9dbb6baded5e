"""`make triton-check` in the test run: NVIDIA's real tritonserver answers like `edgecxr infer`.

scripts/triton_check.py needs the venv `make triton-check` creates (nvidia-pytriton's server, and
onnxruntime, numpy and OpenCV for its Python-backend models: ~580 MB from the package index), so
the end-to-end test runs only where that venv exists ($EDGECXR_TRITON_VENV, default
~/.cache/edgecxr/triton-check/venv) and says why it skips elsewhere. It takes 40-55 s on a busy
2-core machine: two server starts, both exports and one infer run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (dev extra)")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "triton_check.py"
VENV = Path(os.environ.get("EDGECXR_TRITON_VENV", "~/.cache/edgecxr/triton-check/venv")).expanduser()


def load_script():
    spec = importlib.util.spec_from_file_location("triton_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_venv_without_the_server_fails_in_one_line(tmp_path, capsys):
    # a venv whose Python lacks nvidia-pytriton (this one): one line naming what to run, exit 1
    fake = tmp_path / "venv"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "python").symlink_to(sys.executable)
    assert load_script().main(["--triton-venv", str(fake)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nvidia-pytriton" in err and "make triton-check" in err


def test_missing_venv_fails_in_one_line(tmp_path, capsys):
    assert load_script().main(["--triton-venv", str(tmp_path / "none")]) == 1
    assert "make triton-check" in capsys.readouterr().err


@pytest.mark.skipif(not (VENV / "bin" / "python").exists(),
                    reason=f"no Triton venv at {VENV}: `make triton-check` creates it (downloads nvidia-pytriton)")
def test_real_triton_server_answers_like_infer(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--triton-venv", str(VENV), "--work", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout
    line = lines[0]
    assert line.startswith("triton-check: Triton server 2.") and "all match" in line, line
    assert "'unable to find backend library' as expected" in line, line
    # the server really ran both repositories: its own logs say which models it loaded or refused
    log = (tmp_path / "tritonserver-repo-python.log").read_text(errors="replace")
    assert "successfully loaded 'coronet'" in log and "successfully loaded 'coronet_image'" in log
    ort_log = (tmp_path / "tritonserver-repo-onnxruntime.log").read_text(errors="replace")
    assert "unable to find backend library for backend 'onnxruntime'" in ort_log
