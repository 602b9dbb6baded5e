"""The OpenVINO backend: same answers as ONNX Runtime on the same files, on every load path; one line when absent."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from edgecxr.core.errors import BackendUnavailableError
from edgecxr.runtime.backends import create_runner
from edgecxr.runtime.classifier import Classifier
from runtime import tinymodels

pytest.importorskip("openvino")


def test_runner_matches_numpy_reference_and_onnxruntime(tiny_onnx):
    x = np.random.default_rng(1).random((3, *tinymodels.SPEC.input_shape), dtype=np.float32)
    with create_runner("openvino", tiny_onnx) as ov, create_runner("onnxruntime", tiny_onnx) as ort:
        got = ov.infer(x)
        np.testing.assert_allclose(got, tinymodels.reference_probs(x), atol=1e-5)
        np.testing.assert_allclose(got, ort.infer(x), atol=1e-5)
        assert ov.io_shapes() == ((None, *tinymodels.SPEC.input_shape), (None, len(tinymodels.CLASSES)))
        assert "edgecxr.classes" in ov.embedded_metadata()  # so Classifier.load checks it like ORT's


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_classifier_runs_each_gated_file_on_openvino(tmp_path, images, precision):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8_passed=True)
    with Classifier.load(bundle.dir, backend="openvino", precision=precision) as ov, \
            Classifier.load(bundle.dir, backend="onnxruntime", precision=precision) as ort:
        assert ov.backend_info["backend"] == "openvino"
        assert ov.backend_info["artifact"] == ort.backend_info["artifact"]
        assert ov.audit["backend"] == "openvino"
        a, b = ov.predict(images), ort.predict(images)
    assert [p.label for p in a] == [p.label for p in b]


def test_onnx_file_given_runs_on_openvino(tiny_onnx, images):
    with Classifier.load(tiny_onnx, backend="openvino") as clf:
        assert clf.backend_info["backend"] == "openvino"
        assert all(p.label for p in clf.predict(images[:2]))


def test_missing_openvino_is_one_line_naming_the_extra(monkeypatch, tiny_bundle, tiny_onnx, images):
    monkeypatch.setattr("edgecxr.runtime.openvino.openvino_version", lambda: None)
    with pytest.raises(BackendUnavailableError, match=r"edgecxr\[openvino\]"):
        Classifier.load(tiny_bundle.dir, backend="openvino")
    from edgecxr.cli import main

    res = CliRunner().invoke(main, ["infer", "-m", str(tiny_onnx), "--backend", "openvino", str(images[0])])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'edgecxr[openvino]'" in lines[0]


def test_bench_runs_openvino(tiny_bundle):
    from edgecxr.cli import main

    res = CliRunner().invoke(main, ["bench", "-m", str(tiny_bundle.dir), "--backend", "openvino", "--batch-size", "1",
                                    "--iterations", "3", "--warmup-s", "0", "--json"])
    assert res.exit_code == 0, res.output
    report = res.output[res.output.index("{"):]
    import json

    assert json.loads(report)["backend"]["backend"] == "openvino"


@pytest.mark.parametrize("model", ["coronet", pytest.param("cnn-lstm", marks=pytest.mark.slow)])
def test_reference_models_agree_with_onnxruntime_on_a_few_test_images(shared_cxr, model):
    """The fast slice of scripts/openvino_gate.py (the full split is in docs/BENCHMARKS.md): the file
    `--backend openvino` runs on this CPU (INT8 only where the CPU has VNNI) agrees with ONNX Runtime."""
    from edgecxr.core.bundle import Bundle
    from edgecxr.data.dataset import load_split
    from edgecxr.runtime import store
    from edgecxr.runtime.sysinfo import cpu_int8_fast

    bundle = Bundle.load(store.resolve(model))
    _, x, _ = load_split(bundle, shared_cxr / "manifest.csv", "test", limit=4, progress=False)
    path = bundle.artifact("onnx_int8" if cpu_int8_fast() else "onnx_fp16")
    with create_runner("openvino", path) as ov, create_runner("onnxruntime", path) as ort:
        a, b = ov.infer(x), ort.infer(x)
    assert (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(a - b).max() < 0.05


def test_no_openvino_int8_without_an_integer_dot_product(tmp_path, monkeypatch):
    """Where OpenVINO's INT8 failed the gate (no VNNI) it is refused by name and never raced under auto."""
    from edgecxr.core.errors import BundleError
    from edgecxr.runtime.select import choose_artifact

    monkeypatch.setattr("edgecxr.runtime.select.cpu_int8_fast", lambda: False)
    bundle = tinymodels.make_bundle(tmp_path / "b", int8_passed=True)
    with pytest.raises(BundleError, match="VNNI"):
        choose_artifact(bundle, "openvino", "int8")
    assert choose_artifact(bundle, "openvino").precision == "fp32"  # the choice without precision avoids it
    monkeypatch.delenv("EDGECXR_CPU_RUNTIME")
    monkeypatch.setattr("edgecxr.runtime.openvino_pick.pick_runtime", lambda *a, **k: pytest.fail("raced"))
    choice = choose_artifact(bundle, "auto", "int8")
    assert choice.backend == "onnxruntime" and "openvino not timed" in choice.reason
