"""`edgecxr export triton`: configs parsed by Triton's ModelConfig protobuf, IO against the model files,
and the Python-backend preprocessing against edgecxr's own on real images.

Triton Inference Server is not installed here: the configs are checked with the protobuf schema that
tritonclient ships, and model.py runs under tests/export/triton_stub (a stand-in for Triton's util
module, NOT Triton).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from runtime import tinymodels

from edgecxr.cli import main
from edgecxr.core.errors import ArgumentError, BundleError
from edgecxr.core.fileutil import sha256_file, write_json
from edgecxr.core.metadata import make_sidecar, sidecar_path
from edgecxr.core.spec import preprocess
from edgecxr.data.io import load_image
from edgecxr.stages.export.triton import MANIFEST, TritonOptions, check_repository, export_triton
from edgecxr.stages.export.triton_config import onnx_io, parse_pbtxt

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient (extra `triton`)")

STUB = Path(__file__).parent / "triton_stub"
REFERENCE = Path(__file__).resolve().parents[2] / "edgecxr" / "reference"


def _config(repo: Path, name: str):
    return parse_pbtxt((repo / name / "config.pbtxt").read_text())


@pytest.fixture(scope="module")
def reference_repo(tmp_path_factory) -> Path:
    """The shipped CoroNet (INT8) and CNN-LSTM (FP16) exported once for the module."""
    repo = tmp_path_factory.mktemp("triton") / "repo"
    export_triton(["coronet", "cnn-lstm"], repo)
    return repo


def test_reference_repository_parses_and_matches_the_onnx_files(reference_repo):
    repo = reference_repo
    assert check_repository(repo) == []
    assert sorted(p.name for p in repo.iterdir()) == sorted(
        ["coronet", "coronet_preprocess", "coronet_image", "cnn-lstm", "cnn-lstm_preprocess", "cnn-lstm_image", MANIFEST])
    for name, classes in (("coronet", 4), ("cnn-lstm", 3)):
        size = tuple(json.loads((REFERENCE / name / "bundle.json").read_text())["input_shape"])  # as shipped
        assert len(size) == 3 and size[2] == (3 if name == "coronet" else 1)
        cfg = _config(repo, name)
        assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
        assert [g.kind for g in cfg.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
        assert list(cfg.version_policy.specific.versions) == [1]
        inputs, outputs, batched = onnx_io(repo / name / "1" / "model.onnx")
        assert batched and [(t.name, t.dims) for t in inputs] == [(i.name, tuple(i.dims)) for i in cfg.input]
        assert [t.name for t in outputs] == [o.name for o in cfg.output] and tuple(cfg.output[0].dims) == (classes,)
        assert tuple(cfg.input[0].dims) == size
        assert (repo / name / "labels.txt").read_text().split() == json.loads(
            (repo / f"{name}_preprocess" / "1" / "preprocess.json").read_text())["classes"]
        pre, ens = _config(repo, f"{name}_preprocess"), _config(repo, f"{name}_image")
        assert pre.backend == "python" and pre.input[0].data_type == pb.TYPE_STRING and pre.output[0].name == "image"
        assert ens.input[0].name == "image_file" and ens.output[0].name == "probs"
        assert [s.model_name for s in ens.ensemble_scheduling.step] == [f"{name}_preprocess", name]
    manifest = json.loads((repo / MANIFEST).read_text())["models"]
    assert manifest["coronet"]["onnx"]["precision"] == "int8"  # gated INT8 for a server CPU
    assert manifest["coronet"]["onnx"]["sha256"] == sha256_file(repo / "coronet" / "1" / "model.onnx")
    assert manifest["cnn-lstm"]["onnx"]["precision"] == "int8"  # its INT8 passed the gate too
    assert not list(repo.parent.glob(".*staging*"))


def _model_py(repo: Path, name: str, monkeypatch):
    """Import the exported model.py itself (not the package copy) with the stub util module."""
    monkeypatch.syspath_prepend(str(STUB))
    monkeypatch.delitem(sys.modules, "triton_python_backend_utils", raising=False)
    spec = importlib.util.spec_from_file_location(f"triton_model_{name.replace('-', '_')}",
                                                  repo / name / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.pb_utils is not None and module.pb_utils.__file__.startswith(str(STUB))
    model = module.TritonPythonModel()
    cfg = json.loads(json.dumps({"input": [{"name": "image_file"}], "output": [{"name": "image"}]}))
    model.initialize({"model_config": json.dumps(cfg), "model_repository": str(repo / name), "model_version": "1"})
    return module, model


def _request(module, blobs: list[bytes]):
    array = np.array(blobs, dtype=np.object_).reshape(-1, 1)
    return module.pb_utils.InferenceRequest([module.pb_utils.Tensor("image_file", array)])


def _synthetic(tmp_path: Path) -> list[Path]:
    """Depths and color types the curated set lacks: 16-bit gray PNG, RGB JPEG, palette PNG, small upscaled."""
    rng = np.random.default_rng(3)
    base = cv2.GaussianBlur(rng.integers(0, 65535, (300, 260), dtype=np.uint16), (0, 0), 9)
    out = {"g16.png": base, "rgb.jpg": np.dstack([base >> 8] * 3).astype(np.uint8) + np.uint8(3),
           "small.png": (base[:40, :50] >> 8).astype(np.uint8)}
    paths = []
    for name, image in out.items():
        path = tmp_path / name
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.mark.parametrize("name", ["coronet", "cnn-lstm"])
def test_python_backend_preprocessing_equals_edgecxr(reference_repo, name, shared_originals, monkeypatch, tmp_path):
    from edgecxr.core.bundle import Bundle
    from edgecxr.runtime import store

    spec = Bundle.load(store.resolve(name)).spec
    module, model = _model_py(reference_repo, f"{name}_preprocess", monkeypatch)
    files = sorted(shared_originals.iterdir()) + tinymodels.real_images(6) + _synthetic(tmp_path)
    assert any(max(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[:2]) > 4000 for p in files)  # reduced decode
    blobs = [p.read_bytes() for p in files]
    # three requests in one execute: batches of 1, many, and one with a bad file among good ones
    requests = [_request(module, blobs[:1]), _request(module, blobs[1:]), _request(module, [blobs[0], b"not an image"])]
    responses = model.execute(requests)
    got = np.concatenate([responses[0].output_tensors()[0].as_numpy(), responses[1].output_tensors()[0].as_numpy()])
    want = np.stack([preprocess(load_image(p, (spec.height, spec.width)), spec) for p in files])
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert responses[2].has_error() and "not a PNG, JPEG or DICOM" in responses[2].error().message()
    assert not responses[0].has_error() and not responses[1].has_error()


def test_decode_limits_and_dicom_without_edgecxr(reference_repo, monkeypatch):
    module, _model = _model_py(reference_repo, "coronet_preprocess", monkeypatch)
    config = module.load_config(reference_repo / "coronet_preprocess" / "1")
    huge = bytearray(cv2.imencode(".png", np.zeros((32, 32), np.uint8))[1].tobytes())
    huge[16:24] = (20000).to_bytes(4, "big") + (20000).to_bytes(4, "big")  # IHDR claims 20000x20000
    with pytest.raises(module.DecodeError, match="image too large"):
        module.decode(bytes(huge), config)
    with pytest.raises(module.DecodeError, match="empty input"):
        module.decode(b"", config)
    dicom = b"\0" * 128 + b"DICM" + b"\0" * 64
    monkeypatch.setitem(sys.modules, "edgecxr.data.io", None)  # as in a Triton image without edgecxr
    with pytest.raises(module.DecodeError, match="needs edgecxr installed"):
        module.decode(dicom, config)


def _engine_bundle(tmp_path: Path, gate: dict | None = None):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=True, int8_passed=True)
    engines = {}
    for rel, cc, gpu, max_batch in (("engines/a.engine", "7.5", "GTX 1660", 16), ("engines/b.engine", "8.7", "Orin", 4)):
        engine = bundle.dir / rel
        engine.parent.mkdir(exist_ok=True)
        engine.write_bytes(rel.encode() * 8)
        from edgecxr.stages.engine.profile import BuildProfile

        side = make_sidecar(
            bundle_meta=bundle.meta, engine_file=engine.name, engine_sha256=sha256_file(engine), precision="fp16",
            onnx_file="model.fp16.onnx", onnx_sha256="1" * 64,
            platform={"tensorrt": "10.3.0", "gpu": {"name": gpu, "compute_capability": cc}},
            io={"inputs": [{"name": "image", "shape": [-1, 32, 32, 3], "dtype": "float"}],
                "outputs": [{"name": "probs", "shape": [-1, 4], "dtype": "float"}]},
            profile=BuildProfile(opt_batch=min(8, max_batch), max_batch=max_batch), build_seconds=1.0, strongly_typed=True)
        write_json(sidecar_path(engine), side)
        engines[rel] = {"precision": "fp16", "sha256": side["engine"]["sha256"], "built_at": side["built_at"]}
    bundle.meta["engines"] = engines
    if gate:
        bundle.meta["gate"] = {**bundle.meta.get("gate", {}), **gate}
    bundle.save()
    return bundle


def test_engines_become_a_gpu_plan_model_per_compute_capability(tmp_path):
    bundle = _engine_bundle(tmp_path)
    repo = tmp_path / "repo"
    entries = export_triton([bundle.dir], repo, TritonOptions(max_batch_size=8))
    assert check_repository(repo) == []
    trt = _config(repo, "coronet_trt")
    assert trt.platform == "tensorrt_plan" and trt.max_batch_size == 4  # the Orin profile allows 4
    assert trt.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert dict(trt.cc_model_filenames) == {"7.5": "model_sm75.plan", "8.7": "model_sm87.plan"}
    assert (repo / "coronet_trt" / "1" / "model_sm87.plan").read_bytes() == (bundle.dir / "engines/b.engine").read_bytes()
    assert _config(repo, "coronet_trt_image").max_batch_size == 4
    assert entries["coronet"]["onnx"]["precision"] == "int8"
    assert sorted(r["gpu"]["name"] for r in entries["coronet"]["tensorrt"]) == ["GTX 1660", "Orin"]


def test_failed_engines_and_ungated_onnx_are_not_exported(tmp_path):
    bundle = _engine_bundle(tmp_path, gate={"engine:a.engine": {"passed": False}, "engine:b.engine": {"passed": False}})
    repo = tmp_path / "repo"
    export_triton([bundle.dir], repo)
    assert not (repo / "coronet_trt").exists() and (repo / "coronet").is_dir()
    assert _config(repo, "coronet").max_batch_size == 8
    with pytest.raises(BundleError, match="never checked by the accuracy gate"):
        export_triton([bundle.dir], tmp_path / "other", TritonOptions(precision="fp16"))
    failed = tinymodels.make_bundle(tmp_path / "f", int8=True, int8_passed=False)
    entries = export_triton([failed.dir], tmp_path / "r3")
    assert entries["coronet"]["onnx"]["precision"] == "fp32"  # INT8 failed the gate: the FP32 reference


def test_a_changed_engine_is_refused_and_nothing_is_written(tmp_path):
    bundle = _engine_bundle(tmp_path)
    (bundle.dir / "engines/a.engine").write_bytes(b"changed after the build")
    with pytest.raises(BundleError, match="sha256 does not match"):
        export_triton([bundle.dir], tmp_path / "repo")
    assert not (tmp_path / "repo").exists() and not list(tmp_path.glob(".*staging*"))


def test_check_repository_catches_what_triton_would_refuse(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    repo = tmp_path / "repo"
    export_triton([bundle.dir], repo)
    config = repo / "coronet" / "config.pbtxt"
    text = config.read_text()
    config.write_text(text.replace("dims: [ 32, 32, 3 ]", "dims: [ 32, 32, 1 ]", 1))
    assert any("config inputs" in p for p in check_repository(repo))
    config.write_text(text.replace("max_batch_size", "max_batch"))
    assert any("max_batch" in p for p in check_repository(repo))
    config.write_text(text)
    ens = repo / "coronet_image" / "config.pbtxt"
    ens.write_text(ens.read_text().replace('model_name: "coronet"', 'model_name: "coronet_fp99"'))
    assert any("not in the repository" in p for p in check_repository(repo))


def test_existing_models_are_kept_unless_replace(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    repo = tmp_path / "repo"
    (repo / "other_model").mkdir(parents=True)
    export_triton([bundle.dir], repo)
    before = (repo / "coronet" / "config.pbtxt").read_text()
    with pytest.raises(ArgumentError, match="already holds coronet"):
        export_triton([bundle.dir], repo, TritonOptions(max_batch_size=4))
    assert (repo / "coronet" / "config.pbtxt").read_text() == before
    export_triton([bundle.dir], repo, TritonOptions(max_batch_size=4), replace=True)
    assert _config(repo, "coronet").max_batch_size == 4 and (repo / "other_model").is_dir()
    assert not list(tmp_path.glob(".*staging*"))


def test_cli_export_triton(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    runner = CliRunner()
    repo = tmp_path / "repo"
    result = runner.invoke(main, ["export", "triton", "-m", str(bundle.dir), "--out", str(repo), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["coronet"]["models"] == ["coronet", "coronet_preprocess", "coronet_image"]
    result = runner.invoke(main, ["export", "triton", "-m", str(bundle.dir), "--out", str(repo)])
    assert result.exit_code == 2 and "--replace" in result.stderr
    result = runner.invoke(main, ["export", "-m", str(bundle.dir), "triton", "--out", str(repo)])
    assert result.exit_code == 2 and "put them after 'triton'" in result.stderr
    result = runner.invoke(main, ["export", "triton", "-m", str(tmp_path / "missing"), "--out", str(repo)])
    assert result.exit_code == 1 and result.stderr.startswith("error:")


def test_ensemble_steps_give_the_classifiers_probabilities(reference_repo, monkeypatch):
    """model.py, then ONNX Runtime on the copied model file (what NAME_image computes) = edgecxr's runner."""
    import onnxruntime as ort

    from edgecxr.runtime.classifier import Classifier

    files = tinymodels.real_images(4)
    module, model = _model_py(reference_repo, "coronet_preprocess", monkeypatch)
    tensors = model.execute([_request(module, [p.read_bytes() for p in files])])[0].output_tensors()[0].as_numpy()
    from edgecxr.runtime.onnxrt import session_options

    # built as edgecxr builds it (exact int8 sums on a CPU without VNNI), as a deployment should run it
    session = ort.InferenceSession(str(reference_repo / "coronet" / "1" / "model.onnx"), sess_options=session_options(),
                                   providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {"image": tensors})[0]
    with Classifier.load("coronet", precision="int8", input_rules=None) as clf:
        # the model's own output, as serve's /v2 infer and Triton return it (no temperature, no abstention)
        want = clf.runner.infer(np.stack([preprocess(load_image(p, (150, 150)), clf.spec) for p in files]))
        classes = clf.classes
    np.testing.assert_allclose(probs, want, atol=1e-5)
    assert (reference_repo / "coronet" / "labels.txt").read_text().split() == classes
