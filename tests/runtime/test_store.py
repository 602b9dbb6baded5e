"""The model store (edgecxr.runtime.store): name resolution, registration, hash checks, `edgecxr models`, writable copies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError
from edgecxr.runtime import store
from edgecxr.runtime.classifier import Classifier
from runtime import tinymodels


@pytest.fixture()
def models_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv(store.ENV_MODELS, str(folder))
    return folder


@pytest.fixture()
def fake_reference(tmp_path, monkeypatch) -> Path:
    """A reference folder holding one tiny model shipped as FP16 only, like the real ones."""
    ref = tmp_path / "reference"
    src = tinymodels.make_bundle(tmp_path / "src", int8=False)
    src.meta["gate"] = {"onnx_fp16": {"passed": True, "by": "verify"}}
    src.meta["metrics"] = {"test": {"n": 10, "accuracy": 0.9, "per_class": {"covid": {"recall": 1.0}}}}
    src.save()
    store.copy_deployable(src.dir, ref / "tinynet", ("onnx_fp16",))
    monkeypatch.setattr(store, "REFERENCE_DIR", ref)
    return ref / "tinynet"


def test_paths_win_over_names_and_unknown_names_list_the_models(models_dir, fake_reference, tmp_path, monkeypatch):
    assert store.resolve("tinynet") == fake_reference
    (tmp_path / "tinynet").mkdir()
    monkeypatch.chdir(tmp_path)
    assert store.resolve("tinynet") == Path("tinynet")  # an existing path is taken as a path
    with pytest.raises(BundleError, match=r"not a model name \(models: tinynet\)"):
        store.resolve("nosuch")


def test_reference_model_loads_by_name_on_fp16_and_predicts(models_dir, fake_reference):
    with Classifier.load("tinynet") as clf:
        assert clf.backend_info["precision"] == "fp16"
        assert "fp32 ONNX absent" in clf.backend_info["reason"]
        x = np.zeros((2, *tinymodels.SPEC.input_shape), np.float32)
        np.testing.assert_allclose(clf.runner.infer(x), tinymodels.reference_probs(x), atol=2e-3)


def test_tampered_artifact_is_refused(models_dir, fake_reference):
    onnx_file = fake_reference / "model.fp16.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.fp16.onnx: sha256 does not match .*bundle.json .*re-register"):
        Classifier.load("tinynet")


def test_add_registers_a_copy_with_hashes_and_refuses_reserved_names(models_dir, fake_reference, tmp_path):
    src = tinymodels.make_bundle(tmp_path / "mine")
    entry = store.add(src.dir, "mine")
    copy = Bundle.load(entry.path)
    assert set(copy.meta["artifacts"]) == {"onnx_fp32", "onnx_fp16", "onnx_int8"}
    assert set(copy.meta["artifact_sha256"]) == set(copy.meta["artifacts"])
    assert store.resolve("mine") == models_dir / "mine"
    with pytest.raises(BundleError, match="exists"):
        store.add(src.dir, "mine")
    with pytest.raises(BundleError, match="reference model's name"):
        store.add(src.dir, "tinynet")
    with pytest.raises(BundleError, match="model name"):
        store.add(src.dir, "../evil")
    with Classifier.load("mine") as clf:
        assert clf.backend_info["precision"] == "fp32"


def test_models_cli_lists_reference_and_user_models(models_dir, fake_reference, tmp_path):
    runner = CliRunner()
    src = tinymodels.make_bundle(tmp_path / "mine")
    added = runner.invoke(main, ["models", "add", str(src.dir), "--name", "mine"])
    assert added.exit_code == 0, added.output
    listed = runner.invoke(main, ["models", "--json"])
    assert listed.exit_code == 0, listed.output
    doc = json.loads(listed.stdout)
    rows = {r["name"]: r for r in doc["models"]}
    assert rows["tinynet"]["source"] == "reference" and rows["tinynet"]["precisions"] == ["fp16"]
    assert rows["tinynet"]["test"] == {"n": 10, "accuracy": 0.9, "covid_sensitivity": 1.0, "by": "the trained model"}
    assert rows["tinynet"]["artifacts"]["onnx_fp16"]["sha256"]
    assert rows["mine"]["source"] == "user" and rows["mine"]["bytes"] > 0
    text = runner.invoke(main, ["models"])
    assert "tinynet" in text.output and "test accuracy 90.0% (n=10), COVID sensitivity 100.0%" in text.output
    bad = runner.invoke(main, ["models", "add", str(src.dir), "--name", "tinynet"])
    assert bad.exit_code == 1 and bad.output.startswith("error:")


def test_writable_copy_of_a_reference_model(models_dir, fake_reference):
    path = store.writable(fake_reference)
    assert path == models_dir / "tinynet" and Bundle.load(path).meta["overlay_of"] == "tinynet"
    assert store.available()["tinynet"].source == "reference+local"
    assert store.resolve("tinynet") == path
    assert store.writable(fake_reference) == path  # made once


def test_infer_without_model_uses_the_default_reference(models_dir, fake_reference, monkeypatch, images):
    monkeypatch.setattr(store, "DEFAULT_MODEL", "tinynet")
    result = CliRunner().invoke(main, ["infer", str(images[0]), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["backend"]["precision"] == "fp16" and doc["backend"]["artifact"].startswith(str(fake_reference))


def test_build_refuses_without_tensorrt_before_copying(models_dir, fake_reference):
    pytest.importorskip("onnx")
    from edgecxr.runtime.sysinfo import tensorrt_version

    if tensorrt_version() is not None:
        pytest.skip("TensorRT is installed here")
    result = CliRunner().invoke(main, ["build", "-m", "tinynet", "--precision", "fp16"])
    assert result.exit_code == 2 and result.output.startswith("error:") and "TensorRT" in result.output
    assert not (models_dir / "tinynet").exists()


def test_models_shows_test_numbers_from_evaluate_or_the_gate_not_only_from_training():
    """`edgecxr models` said "test: not measured" for a bundle whose test numbers came from
    `evaluate --split test` or `verify`; each artifact now also shows its own gate result."""
    from edgecxr.cli.models import format_models

    gate = {"onnx_fp16": {"split": "test", "n": 126, "accuracy": 0.786, "covid_sensitivity": 0.933,
                          "passed": True, "time": "2026-12-07T11:07:00+00:00"},
            "onnx_int8": {"split": "val", "n": 129, "accuracy": 0.7, "passed": False}}
    assert store.test_metrics({}) is None
    assert store.test_metrics({"gate": gate})["by"] == "verify (onnx_fp16)"  # val-split gates are not test numbers
    evaluated = {"gate": gate, "evaluations": {"test": {"n": 126, "accuracy": 0.80, "covid_sensitivity": 0.9,
                                                        "artifact": "keras"}}}
    assert store.test_metrics(evaluated) == {"n": 126, "accuracy": 0.80, "covid_sensitivity": 0.9,
                                             "by": "evaluate (keras)"}
    assert set(store.gate_on_test({"gate": gate})) == {"onnx_fp16"}
    row = {"name": "m", "source": "user", "model": "coronet", "input_shape": [96, 96, 3], "precisions": ["fp16"],
           "classes": ["a"], "test": store.test_metrics({"gate": gate}), "location": "/x",
           "artifacts": {"onnx_fp16": {"file": "model.fp16.onnx", "bytes": 1, "sha256": "ab" * 32,
                                       "gate_on_test": store.gate_on_test({"gate": gate})["onnx_fp16"]}}}
    text = format_models([row])
    assert "not measured" not in text and "test accuracy 78.6% (n=126)" in text and "test 78.6% (passed the gate)" in text
