"""`python -m edgecxr.stages.demo` end to end on the committed example images (about 15 s on 2 cores)."""

from __future__ import annotations

import pytest

from edgecxr.core.bundle import Bundle
from edgecxr.core.lazy import available
from edgecxr.runtime.tensorrt import TensorRTRunner
from edgecxr.stages.demo import EXAMPLES_MANIFEST, main, pick_data, run_demo

needs_tf = pytest.mark.skipif(not (available("tensorflow") and available("tf2onnx")), reason="needs edgecxr[train]")
#: why TensorRT cannot run here (None where it can: then the demo builds an engine instead)
NO_TRT = TensorRTRunner.availability()


@needs_tf
@pytest.mark.skipif(
    NO_TRT is None, reason="TensorRT and a GPU are usable here: the demo builds an engine (see runtime/test_tensorrt.py)"
)
def test_demo_runs_every_stage_on_the_examples(tmp_path):
    """On a machine without TensorRT (CI, this one): every stage but the build succeeds, INT8 passes its gate
    (seed 0, deterministic on CPU) and the example is classified by ONNX Runtime with the INT8 model."""
    if not EXAMPLES_MANIFEST.is_file():
        pytest.skip("examples/images/manifest.csv not in this checkout")
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", data=str(EXAMPLES_MANIFEST), epochs=1, input_size=32, log=lines.append)
    stages = result["stages"]
    assert list(stages) == ["data", "train", "export", "calibrate", "verify", "build", "infer"]
    for name in ("data", "train", "export", "calibrate", "verify", "infer"):
        assert stages[name].startswith("ok"), (name, stages[name])
    assert stages["build"] == f"skipped: {NO_TRT}; inference uses ONNX Runtime"
    bundle = Bundle.load(result["bundle"])
    for key in ("keras", "onnx_fp32", "onnx_fp16", "onnx_int8"):
        assert bundle.artifact(key).is_file(), key
    assert bundle.gate_verdict("onnx_fp16") is True and bundle.gate_verdict("onnx_int8") is True
    assert (tmp_path / "demo" / "calibration").is_dir()  # not ./calibration in the working directory
    pred = result["prediction"]
    assert pred["error"] is None and pred["label"] in bundle.classes
    assert result["backend"]["backend"] == "onnxruntime" and result["backend"]["precision"] == "int8"
    assert "TensorRT unavailable" in result["backend"]["reason"]
    text = "\n".join(lines)
    for n in range(1, 8):
        assert f"[{n}/7]" in text


@needs_tf
def test_demo_data_choice_and_errors(tmp_path, capsys):
    manifest, described = pick_data(str(tmp_path / "m.csv"))
    assert manifest == tmp_path / "m.csv" and "as given" in described
    assert main(["--out", str(tmp_path / "o"), "--data", str(tmp_path / "missing.csv")]) == 1
    assert "manifest not found" in capsys.readouterr().err


def test_stages_record_gate_failures_and_optional_failures():
    from edgecxr.core.errors import BundleError, GateFailedError
    from edgecxr.stages.demo import Stages

    lines: list[str] = []
    st = Stages(4, lines.append)
    assert st.run("a", "first", lambda: 42) == 42

    def gate():
        raise GateFailedError("int8 dropped 3 pp")

    def broken():
        raise BundleError("no engine today")

    assert isinstance(st.run("b", "gated", gate), GateFailedError)
    assert isinstance(st.run("c", "optional", broken, optional=True), BundleError)
    with pytest.raises(BundleError):
        st.run("d", "required", broken)
    assert st.results["a"].startswith("ok") and st.results["b"].startswith("gate failed")
    assert st.results["c"] == "failed: no engine today"
    assert "[4/4] required" in "\n".join(lines)
