"""Quantization-aware fine-tuning: fake quantization that rounds as the ONNX Q/DQ file does, and
`edgecxr qat` from a trained bundle to a gated model.int8.onnx (tiny models, synthetic images)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import BundleError
from edgecxr.stages.export.int8 import quantize_qdq
from edgecxr.stages.export.keras_io import load_keras, walk_layers
from edgecxr.stages.export.qdq_check import resolve_keep_float
from edgecxr.stages.export.sensitivity import _predict
from tests.export.conftest import SIZE, build_tiny_cnn, build_tiny_lstm, write_synthetic_manifest

pytest.importorskip("tensorflow")
fake_quant = pytest.importorskip("edgecxr.stages.train.fake_quant")


def _x(n: int, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, channels)).astype(np.float32)


@pytest.mark.parametrize("build, channels", [(build_tiny_cnn, 3), (build_tiny_lstm, 1)])
def test_wrap_fake_quantizes_every_weighted_layer_and_strip_restores_the_float_model(build, channels):
    model = build()
    qat = fake_quant.wrap(model)
    kinds = sorted(type(layer).__name__ for layer in fake_quant.quantized_layers(qat))
    expected = {"tiny_cnn": ["QatConv2D", "QatDense", "QatDense", "QatSeparableConv2D"],
                "tiny_lstm": ["QatConv2D", "QatConv2D", "QatDense", "QatLSTM"]}[model.name]
    assert kinds == expected
    x = _x(8, channels, 0)
    ranges = fake_quant.observe(qat, x)
    first = fake_quant.quantized_layers(qat)[0]
    assert first.qat_amax[0] == pytest.approx(float(np.abs(x).max()))  # the image itself, max|x|
    # one range per quantized input; two for the separable conv (depthwise, pointwise) and the softmax layer (its logits)
    assert len(ranges) == {"tiny_cnn": 6, "tiny_lstm": 5}[model.name] and min(ranges) > 0
    float_probs = model(x, training=False).numpy()
    fq_probs = qat(x, training=False).numpy()
    assert 0 < np.abs(fq_probs - float_probs).max() < 0.5  # rounding happened, and it is rounding
    plain = fake_quant.strip(qat, model)
    assert type(plain) is type(model) and not fake_quant.quantized_layers(plain)
    np.testing.assert_array_equal(plain(x, training=False).numpy(), float_probs)
    bn = [layer for layer in walk_layers(qat) if "batch_normalization" in layer.name]
    assert all(not layer.trainable for layer in bn)


def test_fake_quantized_kernels_lie_on_the_symmetric_per_channel_int8_grid():
    qat = fake_quant.wrap(build_tiny_cnn())
    conv = fake_quant.quantized_layers(qat)[0]
    w = conv.kernel.numpy()
    q = np.asarray(fake_quant.fq_weight(conv.kernel))
    scale = np.abs(w).reshape(-1, w.shape[-1]).max(axis=0) / 127
    steps = q / scale
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(np.round(steps)).max() == 127 and not np.array_equal(q, w)


def test_fake_quantization_rounds_like_the_onnx_int8_model(exported_cnn):
    """Keras's fake-quantized model and ONNX Runtime running the Q/DQ file (Q/DQ on the inputs of the
    weighted ops: TensorRT's placement) give the same probabilities, far closer to each other than
    either is to float: the fine-tuning trains against the rounding the deployed file does."""
    bundle = Bundle.load(exported_cnn)
    fp32_path = bundle.artifact("onnx_fp32")
    fp32 = onnx.load(str(fp32_path))
    x_cal, x = _x(16, 3, 1), _x(16, 3, 2)
    model = load_keras(bundle.artifact("keras"))
    qat = fake_quant.wrap(model)
    fake_quant.observe(qat, x_cal)
    float_probs = model(x, training=False).numpy()
    fq_probs = qat(x, training=False).numpy()
    exclude = [n for names in resolve_keep_float(fp32, ["activations"]).values() for n in names]
    out = exported_cnn.parent / "qat-fidelity.int8.onnx"
    quantize_qdq(fp32_path, out, x_cal, nodes_to_exclude=exclude, progress=False)
    ort_probs = _predict(onnx.load(str(out)), x)
    to_float = np.abs(ort_probs - float_probs).mean()
    assert to_float > 1e-3  # INT8 did change something
    assert np.abs(fq_probs - ort_probs).mean() < to_float / 5  # not equal: a rounding tie can fall either way


@pytest.fixture(scope="module")
def qat_manifest(tmp_path_factory):
    """Random-texture PNGs in train / calib / val / test (labels carry no signal; the gate compares models)."""
    return write_synthetic_manifest(tmp_path_factory.mktemp("qat-cxr"),
                                    (("train", 6), ("calib", 3), ("val", 3), ("test", 3)), seed=3)


LOOSE = "[gates]\nmin_agreement = 0.5\nmax_acc_drop = 100.0\ncovid_sensitivity_not_lower = false\n"


@pytest.mark.parametrize("fixture, ranges", [("exported_cnn", 6), ("exported_lstm", 5)])
def test_qat_command_fine_tunes_chooses_on_val_and_publishes_a_gated_int8(fixture, ranges, request, copy_bundle,
                                                                          qat_manifest, tmp_path):
    bundle = copy_bundle(request.getfixturevalue(fixture))
    gates = tmp_path / "gates.toml"
    gates.write_text(LOOSE)
    result = CliRunner().invoke(main, ["qat", "-m", str(bundle.dir), "--data", str(qat_manifest), "--epochs", "2",
                                       "--lr", "1e-4", "--gates", str(gates), "-q", "--json"])
    assert result.exit_code == 0, result.output
    section = json.loads(result.output)
    q = section["qat"]
    assert [row["epoch"] for row in q["history"]] == [0, 1, 2] and q["selected_on"] == "val" and q["target"] == "teacher"
    assert q["history"][1]["activation_ranges"] == ranges and "train_loss" in q["history"][1]
    assert section["ops"].get("LSTM", 0) == (fixture == "exported_lstm")  # still one ONNX LSTM op after QAT
    best = max((r for r in q["history"] if r["passed"]), key=lambda r: (r["top1_agreement"], r["accuracy"]))
    assert q["chosen_epoch"] == best["epoch"]
    assert section["gate"]["split"] == "test" and section["gate"]["passed"]
    reloaded = Bundle.load(bundle.dir)
    assert reloaded.artifact("onnx_int8").is_file()
    calib = reloaded.meta["calibration"]
    assert calib["qat"]["chosen_epoch"] == q["chosen_epoch"]
    assert calib["fp32_sha256"] == reloaded.meta["export"]["onnx_sha256"]  # derived from the bundle's FP32 model
    if q["chosen_epoch"]:
        from edgecxr.core.fileutil import sha256_file

        assert calib["qat"]["source_sha256"] == sha256_file(bundle.dir / "qat" / "model.onnx")
        assert (bundle.dir / "qat" / "model.keras").is_file()
    assert reloaded.artifact("keras").is_file() and reloaded.artifact("onnx_fp32").is_file()  # the trained model stays


def test_qat_publishes_nothing_and_never_reads_test_when_no_epoch_passes_on_val(exported_cnn, copy_bundle, qat_manifest,
                                                                                 monkeypatch):
    from edgecxr.core.errors import GateFailedError
    from edgecxr.stages.export import qat as qat_stage
    from edgecxr.stages.gate.config import Gates

    bundle = copy_bundle(exported_cnn)
    read = []
    real = qat_stage.load_split
    monkeypatch.setattr(qat_stage, "load_split", lambda b, m, split, **kw: (read.append(split), real(b, m, split, **kw))[1])
    monkeypatch.setattr(qat_stage, "calibrate_bundle", lambda *a, **k: pytest.fail("the publication gate must not run"))
    impossible = Gates(min_agreement=1.0, max_acc_drop=0.0, max_prob_diff=1e-9)
    with pytest.raises(GateFailedError, match="nothing published, test not read"):
        qat_stage.qat_bundle(Bundle.load(bundle.dir), qat_manifest, epochs=1, gates=impossible, progress=False)
    assert "test" not in read and not (bundle.dir / "model.int8.onnx").exists()


def test_qat_refuses_a_bundle_without_keras_weights_in_one_line(exported_cnn, copy_bundle, qat_manifest):
    bundle = copy_bundle(exported_cnn)
    (bundle.dir / "model.keras").unlink()
    result = CliRunner().invoke(main, ["qat", "-m", str(bundle.dir), "--data", str(qat_manifest)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "has no trained Keras model (model.keras)" in result.output
    with pytest.raises(BundleError, match="model.keras"):
        from edgecxr.stages.export.qat import qat_bundle

        qat_bundle(Bundle.load(bundle.dir), qat_manifest, progress=False)
