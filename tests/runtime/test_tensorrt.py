"""TensorRT on a real GPU: build engines (Polygraphy) from the tiny ONNX files, compare with ONNX Runtime, refuse mismatches.

Skipped (with the reason) where the tensorrt package, Polygraphy or an NVIDIA GPU is missing; CPU-only
CI never runs these, so with `make gpu-check` they are the only run of the TensorRT code paths.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (JetPack, NVIDIA's pip index or NGC)")

from edgecxr.runtime.gpu import gpu_availability  # noqa: E402

_NO_GPU = gpu_availability()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.trt,
    pytest.mark.skipif(_NO_GPU is not None, reason=f"no usable NVIDIA GPU: {_NO_GPU}"),
]

from edgecxr.core.bundle import Bundle  # noqa: E402
from edgecxr.core.errors import EngineMismatchError  # noqa: E402
from edgecxr.core.fileutil import write_json  # noqa: E402
from edgecxr.core.metadata import read_sidecar, sidecar_path  # noqa: E402
from edgecxr.core.spec import preprocess  # noqa: E402
from edgecxr.data.io import load_image  # noqa: E402
from edgecxr.runtime.backends import create_runner  # noqa: E402
from edgecxr.runtime.classifier import Classifier  # noqa: E402
from edgecxr.runtime.sysinfo import current_platform  # noqa: E402
from edgecxr.stages.engine.build import build_engine  # noqa: E402
from edgecxr.stages.engine.profile import resolve_profile  # noqa: E402
from runtime import tinymodels  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    bundle = tinymodels.make_bundle(tmp_path_factory.mktemp("trt") / "bundle")
    result = build_engine(bundle.dir, resolve_profile(None, precision="fp16", batch="1-2-4"), verify=False, log=print)
    return bundle, result


def _batch(images, n):
    xs = [preprocess(load_image(p), tinymodels.SPEC) for p in images]
    return np.stack([xs[i % len(xs)] for i in range(n)])


def test_fp16_engine_matches_onnxruntime(built, images):
    bundle, result = built
    assert result.engine.is_file() and sidecar_path(result.engine).is_file()
    side = read_sidecar(result.engine)
    here = current_platform()
    assert side["tensorrt"] == here["tensorrt"] and side["gpu"]["name"] == here["gpu"]["name"]
    assert side["precision"] == "fp16" and side["io"]["inputs"][0]["name"] == "image"
    assert Bundle.load(bundle.dir).meta["engines"]  # recorded
    x = _batch(images, 6)  # more than max_batch 4: the runner splits it
    with create_runner("onnxruntime", bundle.artifact("onnx_fp32")) as ort_runner:
        ref = ort_runner.infer(x)
    with create_runner("tensorrt", result.engine) as runner:
        out = runner.infer(x)
        assert set(runner.timings()) == {"h2d_ms", "compute_ms", "d2h_ms"}
        assert runner.describe()["batch_range"] == [1, 4]
    np.testing.assert_allclose(out, ref, atol=1e-2)
    np.testing.assert_allclose(out, tinymodels.reference_probs(x), atol=1e-2)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 5 / 6


def test_cuda_graph_gives_the_same_outputs(built, images):
    _, result = built
    x = _batch(images, 3)
    with create_runner("tensorrt", result.engine) as plain:
        want = plain.infer(x)
    with create_runner("tensorrt", result.engine, cuda_graph=True) as graphed:
        first = graphed.infer(x)
        second = graphed.infer(x[::-1].copy())
        used = graphed.describe()["cuda_graph"]
        captured = sorted(graphed.graphs)
    np.testing.assert_allclose(first, want, atol=1e-6)
    np.testing.assert_allclose(second, want[::-1], atol=1e-6)
    assert used, "graph capture should work for this simple engine"
    assert captured == [3]  # one graph for the one batch size, captured once and replayed


def test_classifier_auto_prefers_the_matching_engine(built, images):
    bundle, result = built
    with Classifier.load(bundle.dir) as clf:
        assert clf.backend_info["backend"] == "tensorrt"
        assert clf.backend_info["artifact"] == str(result.engine)
        preds = clf.predict(images)
    assert all(p.ok for p in preds)


def test_mismatched_sidecar_is_refused(built, tmp_path):
    _, result = built
    engine = tmp_path / "other.engine"
    shutil.copyfile(result.engine, engine)
    side = read_sidecar(result.engine)
    side["gpu"] = {"name": "NVIDIA Imaginary GPU 9000", "compute_capability": "9.9"}
    side["tensorrt"] = "0.0.1"
    write_json(sidecar_path(engine), side)
    with pytest.raises(EngineMismatchError) as info:
        Classifier.load(engine)
    msg = str(info.value)
    assert "Imaginary GPU 9000" in msg and current_platform()["gpu"]["name"] in msg
    assert "0.0.1" in msg and "edgecxr build" in msg


def test_int8_qdq_engine_builds_and_agrees(built, images):
    bundle, _ = built
    here = current_platform()
    from edgecxr.stages.engine.profile import has_int8

    if not has_int8(here["gpu"]["compute_capability"]):
        pytest.skip("GPU without INT8")
    result = build_engine(bundle.dir, resolve_profile(None, precision="int8", batch="1-4"), verify=False, log=print)
    x = _batch(images, 4)
    with create_runner("tensorrt", result.engine) as runner:
        out = runner.infer(x)
    np.testing.assert_allclose(out, tinymodels.reference_probs(x), atol=0.08)


def test_outputs_come_back_by_name_with_the_probabilities_first(built, images):
    """The runner's contract with base.Runner: {output name: array}, probabilities first, every output sized."""
    _, result = built
    x = _batch(images, 3)
    with create_runner("tensorrt", result.engine) as runner:
        outs = runner._infer(x)
        classes = runner.out_classes
    assert isinstance(outs, dict) and outs
    first = next(iter(outs))
    assert first != "features" and outs[first].shape == (3, classes)
    assert all(v.shape[0] == 3 and v.dtype == np.float32 for v in outs.values())


def test_dry_run_predicts_the_real_build(built):
    """What `build --dry-run` says for this TensorRT is what the build did."""
    from edgecxr.stages.engine.dryrun import dry_run

    bundle, result = built
    version = current_platform()["tensorrt"]
    report = dry_run(bundle.dir, resolve_profile(None, precision="fp16", batch="1-2-4"), [version])
    assert report.ok, report.problems
    side = read_sidecar(result.engine)
    assert side["strongly_typed"] == report.plan[0]["strongly_typed"]
    assert [o["name"] for o in side["io"]["outputs"]] == [name for name, _ in report.facts["io"]["outputs"]]


def test_int8_engine_matches_onnxruntime_int8(built, images, tmp_path):
    """The Q/DQ path: strongly typed on 10/11, INT8 builder flag on 8.6 (trt_lines)."""
    bundle, _ = built
    engine = build_engine(bundle.dir, resolve_profile(None, precision="int8", batch="1-2-4"),
                          out=tmp_path / "tiny-int8.engine", verify=False, log=print).engine
    x = _batch(images, 4)
    with create_runner("onnxruntime", bundle.artifact("onnx_int8")) as ort_runner:
        ref = ort_runner.infer(x)
    with create_runner("tensorrt", engine) as runner:
        out = runner.infer(x)
    np.testing.assert_allclose(out, ref, atol=5e-2)
