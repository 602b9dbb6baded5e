"""`edgecxr export triton --flavour python`: the gated ONNX in Triton's Python backend, run through ONNX Runtime.

The repository is checked like the onnxruntime flavour's (configs parsed by Triton's ModelConfig
protobuf, IO against the ONNX file) and the exported model.py runs under tests/export/triton_stub
(a stand-in for Triton's util module). NVIDIA's real server runs it in `make triton-check`
(scripts/triton_check.py; tests/export/test_triton_check.py where its venv exists).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runtime import tinymodels

from edgecxr.cli import main
from edgecxr.core.errors import ArgumentError
from edgecxr.runtime.backends import create_runner
from edgecxr.stages.export import triton_onnx
from edgecxr.stages.export.triton import MANIFEST, TritonOptions, check_repository, export_triton
from edgecxr.stages.export.triton_config import parse_pbtxt

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient (extra `triton`)")

STUB = Path(__file__).parent / "triton_stub"


@pytest.fixture()
def python_repo(tmp_path) -> Path:
    bundle = tinymodels.make_bundle(tmp_path / "b", int8_passed=True)
    res = CliRunner().invoke(main, ["export", "triton", "-m", str(bundle.dir), "--flavour", "python",
                                    "--out", str(tmp_path / "repo")])
    assert res.exit_code == 0, res.output
    return tmp_path / "repo"


def test_python_flavour_config_and_files(python_repo):
    cfg = parse_pbtxt((python_repo / "coronet" / "config.pbtxt").read_text())
    assert cfg.backend == "python" and not cfg.platform
    assert {p.name for p in (python_repo / "coronet" / "1").iterdir()} == {"model.py", "model.onnx"}
    assert cfg.output[0].label_filename == "labels.txt"  # Triton's classification extension names classes
    assert check_repository(python_repo) == []
    manifest = json.loads((python_repo / MANIFEST).read_text())
    assert manifest["models"]["coronet"]["onnx"] | {} and manifest["models"]["coronet"]["onnx"]["flavour"] == "python"
    (python_repo / "coronet" / "1" / "model.py").unlink()
    assert any("model.py: missing" in p for p in check_repository(python_repo))


def test_exported_model_py_answers_like_the_onnxruntime_runner(python_repo, monkeypatch):
    monkeypatch.syspath_prepend(str(STUB))
    monkeypatch.delitem(sys.modules, "triton_python_backend_utils", raising=False)
    spec = importlib.util.spec_from_file_location("triton_onnx_model", python_repo / "coronet" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_repository": str(python_repo / "coronet"), "model_version": "1"})
    rng = np.random.default_rng(0)
    batches = [rng.random((n, *tinymodels.SPEC.input_shape), dtype=np.float32) for n in (1, 3)]
    pb = module.pb_utils
    responses = model.execute([pb.InferenceRequest([pb.Tensor(model.input, b)]) for b in batches])
    with create_runner("onnxruntime", python_repo / "coronet" / "1" / "model.onnx") as ort:
        for batch, resp in zip(batches, responses, strict=True):
            assert not resp.has_error()
            probs = pb.get_output_tensor_by_name(resp, "probs").as_numpy()
            np.testing.assert_allclose(probs, ort.infer(batch), atol=1e-6)
    bad = model.execute([pb.InferenceRequest([pb.Tensor(model.input, np.zeros((1, 5), np.float32))])])
    assert bad[0].has_error() and "\n" not in bad[0].error().message()


def test_model_py_builds_its_session_as_edgecxr_does():
    """model.py runs without edgecxr, so it repeats two facts; they must stay equal to edgecxr's."""
    from edgecxr.runtime.onnxrt import EXACT_INT8
    from edgecxr.runtime.sysinfo import INT8_DOT_FLAGS, cpu_int8_fast

    assert triton_onnx.INT8_DOT_FLAGS == INT8_DOT_FLAGS and triton_onnx.EXACT_INT8 == EXACT_INT8
    assert triton_onnx.cpu_int8_fast() == cpu_int8_fast()


def test_unknown_flavour_is_refused():
    with pytest.raises(ArgumentError, match="flavour"):
        TritonOptions(flavour="tensorflow")
    with pytest.raises(ArgumentError, match="flavour"):
        export_triton(["coronet"], "unused", TritonOptions(flavour="x"))
