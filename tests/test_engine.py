"""Engine build logic that needs no GPU: profiles, names, flags, sidecars, the compatibility decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecxr.core.bundle import Bundle
from edgecxr.core.errors import ArgumentError, BackendUnavailableError, BundleError, EngineMismatchError
from edgecxr.core.fileutil import write_json
from edgecxr.core.metadata import (
    check_compatibility,
    ensure_compatible,
    make_sidecar,
    read_sidecar,
    rebuild_command,
    sidecar_path,
)
from edgecxr.models.coronet import CORONET_V1
from edgecxr.runtime.select import choose_engine
from edgecxr.stages.engine import trt_lines
from edgecxr.stages.engine.build import (
    engine_filename,
    gpu_slug,
    record_engine,
    timing_cache_path,
)
from edgecxr.stages.engine.profile import (
    BuildError,
    BuildProfile,
    check_precision_support,
    check_profile_target,
    has_fast_fp16,
    has_int8,
    load_profile,
    parse_batch,
    parse_profile,
    resolve_profile,
)

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted((REPO / "build_engines").glob("*.toml"))

GTX = {"tensorrt": "10.3.0", "gpu": {"name": "NVIDIA GeForce GTX 1660 SUPER", "compute_capability": "7.5"}}
A4000 = {"tensorrt": "10.3.0", "gpu": {"name": "NVIDIA RTX A4000", "compute_capability": "8.6"}}


# -- profiles -----------------------------------------------------------------------------------
def test_committed_profiles_parse_and_are_the_documented_set():
    names = {p.stem for p in PROFILES}
    assert {"gtx16xx-turing", "rtx-ampere", "jetson-orin", "jetson-orin-nano"} <= names
    for path in PROFILES:
        prof = load_profile(path)
        assert prof.name == path.stem
        assert prof.precision in ("fp16", "int8")
        assert prof.description, f"{path.name} needs a description"
        assert prof.compute_capabilities, f"{path.name} should say which GPUs it targets"
        assert prof.device_memory_mb, f"{path.name} should state the device memory its workspace must fit"
    assert load_profile("gtx16xx-turing").compute_capabilities == ("7.5",)  # by name via PROFILE_DIRS


def test_jetson_profile_has_optional_dla_with_gpu_fallback():
    prof = load_profile("jetson-orin")
    assert prof.dla_core is None and prof.gpu_fallback is True
    assert resolve_profile(prof, dla_core=1).dla_core == 1
    assert resolve_profile(prof.__class__(dla_core=0), dla_core=-1).dla_core is None


def test_profile_validation_errors():
    with pytest.raises(BuildError, match="unknown key"):
        parse_profile('precision = "fp16"\nmax_bacth = 8\n', "typo")
    with pytest.raises(BuildError, match="invalid TOML"):
        parse_profile("precision = \n", "broken")
    with pytest.raises(BuildError, match="min_batch <= opt_batch"):
        parse_profile("min_batch = 4\nopt_batch = 2\nmax_batch = 8\n")
    with pytest.raises(BuildError, match="precision"):
        parse_profile('precision = "int4"\n')
    with pytest.raises(BuildError, match="integer"):
        parse_profile('max_batch = "8"\n')
    with pytest.raises(BuildError, match="workspace_mb"):
        parse_profile("workspace_mb = 1\n")
    with pytest.raises(BuildError, match="compute capability"):
        parse_profile('compute_capabilities = ["sm75"]\n')
    with pytest.raises(BuildError, match="dla_core"):
        parse_profile("dla_core = -2\n")
    with pytest.raises(BuildError, match="device_memory_mb"):
        parse_profile("device_memory_mb = 8\n")
    with pytest.raises(BuildError, match="not found"):
        load_profile("no-such-profile")


def test_parse_batch_and_overrides():
    assert parse_batch("8") == (8, 8, 8)
    assert parse_batch("1-8") == (1, 8, 8)
    assert parse_batch("1-4-8") == (1, 4, 8)
    for bad in ("x", "1-2-3-4", ""):
        with pytest.raises(BuildError):
            parse_batch(bad)
    base = load_profile("gtx16xx-turing")
    prof = resolve_profile(base, precision="int8", batch="2-16", workspace_mb=512, timing_cache="")
    assert (prof.precision, prof.batch, prof.workspace_mb, prof.timing_cache) == ("int8", (2, 16, 16), 512, None)
    assert prof.name == base.name and prof.compute_capabilities == base.compute_capabilities
    assert resolve_profile(None, max_batch=2).batch == (1, 2, 2)  # opt follows max down
    assert resolve_profile(None, min_batch=4).batch == (4, 8, 8)
    with pytest.raises(ArgumentError, match="either a batch range"):
        resolve_profile(None, batch="1-8", max_batch=4)
    with pytest.raises(BuildError):
        resolve_profile(None, min_batch=9, max_batch=4)


# -- names, flags, hardware facts ------------------------------------------------------------------
def test_names():
    assert gpu_slug("NVIDIA GeForce GTX 1660 SUPER") == "geforce-gtx-1660-super"
    assert gpu_slug("Orin (nvgpu)") == "orin-nvgpu"
    assert gpu_slug("???") == "gpu"
    assert engine_filename("coronet", "int8", "NVIDIA RTX A4000", "10.3.0") == "coronet-int8-rtx-a4000-trt10.3.0.engine"
    assert engine_filename("cnn-lstm", "fp16", "Orin", "10.3.0", dla_core=0).endswith("-trt10.3.0-dla0.engine")
    assert sidecar_path("e/x.engine") == Path("e/x.engine.json")


def test_code_path_by_tensorrt_line():
    """8.6 is weakly typed with FP16/INT8 builder flags; 10.x/11.x strongly typed with none (precision from the ONNX)."""
    line = trt_lines.line_for("8.6.1")
    assert line.key == "8.6" and not line.strongly_typed and line.network_flags == ("EXPLICIT_BATCH",)
    assert line.builder_flags == {"fp16": ("FP16",), "int8": ("INT8",)}
    assert trt_lines.line_for("8.6.2.3").key == "8.6"  # JetPack 6.0
    assert trt_lines.line_for("10.3.0.30").key == "10.3"  # JetPack 6.1/6.2
    assert trt_lines.line_for("10.16.1.11").key == "10.x"
    assert trt_lines.line_for("11.4.0.106").key == "11.x"
    for version in ("10.3.0", "10.16.1.11", "11.4.0.106"):
        line = trt_lines.line_for(version)
        assert line.strongly_typed and line.network_flags == ("STRONGLY_TYPED",) and line.builder_flags == {}
        assert "FP16" not in trt_lines.all_names(line) and "EXPLICIT_BATCH" not in trt_lines.all_names(line)
    for bad in ("7.2.3", "12.0", "8.5.3"):
        with pytest.raises(ValueError, match="not a supported line"):
            trt_lines.line_for(bad)
    assert [line.key for line in trt_lines.lines_for_majors((8, 10))] == ["8.6", "10.3", "10.x"]
    # the names a path uses follow the precision: INT8's Q/DQ layer check only on the weakly typed line
    assert "INT8" in trt_lines.names_used(trt_lines.BY_KEY["8.6"], "int8")["config"]
    assert "FP16" not in trt_lines.names_used(trt_lines.BY_KEY["8.6"], "int8")["config"]
    assert "PREFER_PRECISION_CONSTRAINTS" not in trt_lines.all_names(trt_lines.BY_KEY["11.x"])  # Polygraphy skips it on 11
    plan = trt_lines.describe_path(trt_lines.BY_KEY["8.6"], "fp16")
    assert plan["builder_precision_flags"] == ["FP16"] and "fp16=True" in " ".join(plan["calls"])


@pytest.mark.parametrize(
    "cc,fp16,int8",
    [("6.1", False, True), ("6.0", True, False), ("5.3", True, False), ("7.5", True, True), ("8.7", True, True), ("12.0", True, True)],
)
def test_precision_capabilities(cc, fp16, int8):
    assert has_fast_fp16(cc) is fp16
    assert has_int8(cc) is int8


def test_precision_is_refused_not_downgraded():
    with pytest.raises(BackendUnavailableError, match="no fast FP16"):
        check_precision_support("fp16", "6.1", "NVIDIA GeForce GTX 1080")
    check_precision_support("int8", "6.1", "NVIDIA GeForce GTX 1080")
    check_precision_support("fp16", "7.5", "NVIDIA GeForce GTX 1660")


def test_profile_target_check():
    prof = load_profile("gtx16xx-turing")
    assert check_profile_target(prof, "10.3.0", "7.5") == []
    problems = check_profile_target(prof, "11.0.0", "8.6")
    assert len(problems) == 2 and "8.6" in problems[0] and "11.0.0" in problems[1]
    assert check_profile_target(BuildProfile(), "8.6.1", "6.1") == []


def test_timing_cache_path(tmp_path):
    path = timing_cache_path("engines/timing-{gpu}-trt{trt}.cache", tmp_path, "NVIDIA RTX A4000", "10.3.0")
    assert path == tmp_path / "engines" / "timing-rtx-a4000-trt10.3.0.cache"
    assert timing_cache_path(None, tmp_path, "x", "1") is None
    assert timing_cache_path("/abs/t.cache", tmp_path, "x", "1") == Path("/abs/t.cache")


# -- sidecar and compatibility ---------------------------------------------------------------------
def _sidecar(platform=GTX, precision="fp16", profile=None, meta=None):
    meta = meta or {
        "model": "coronet",
        "classes": ["covid", "normal", "pneumonia_bacterial", "pneumonia_viral"],
        "preprocess": CORONET_V1.to_dict(),
        "calibration": {"manifest_sha256": "c" * 64, "method": "percentile"},
    }
    return make_sidecar(
        bundle_meta=meta,
        engine_file="coronet-fp16.engine",
        engine_sha256="e" * 64,
        precision=precision,
        onnx_file="model.fp16.onnx",
        onnx_sha256="o" * 64,
        platform={**platform, "gpu": {**platform["gpu"], "cuda_runtime": "12.4", "cuda_driver": "12.6"}},
        io={"inputs": [{"name": "image", "shape": [-1, 150, 150, 3], "dtype": "float"}], "outputs": []},
        profile=profile or load_profile("gtx16xx-turing"),
        build_seconds=12.345,
        strongly_typed=True,
        built_at="2025-01-01T00:00:00+00:00",
    )


def test_sidecar_content_round_trips(tmp_path):
    side = _sidecar(precision="int8")
    assert side["tensorrt"] == "10.3.0"
    assert side["gpu"] == {"name": "NVIDIA GeForce GTX 1660 SUPER", "compute_capability": "7.5"}
    assert side["cuda"]["cuda_runtime"] == "12.4"
    assert side["calibration"]["manifest_sha256"] == "c" * 64
    assert side["onnx"]["sha256"] == "o" * 64 and side["engine"]["sha256"] == "e" * 64
    assert side["profile"]["name"] == "gtx16xx-turing" and side["profile"]["compute_capabilities"] == ["7.5"]
    assert side["preprocess"]["family"] == "coronet" and len(side["classes"]) == 4
    assert side["build_seconds"] == 12.35 and side["edgecxr_version"]
    assert _sidecar(precision="fp16")["calibration"] is None  # only INT8 engines carry calibration provenance
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    write_json(sidecar_path(engine), side)
    assert read_sidecar(engine) == json.loads(json.dumps(side))


def test_read_sidecar_refuses_missing_corrupt_and_foreign(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(BundleError, match="no sidecar"):
        read_sidecar(engine)
    sidecar_path(engine).write_text("{")
    with pytest.raises(BundleError, match="corrupt"):
        read_sidecar(engine)
    write_json(sidecar_path(engine), {"format": "something-else"})
    with pytest.raises(BundleError, match="not an edgecxr engine sidecar"):
        read_sidecar(engine)
    side = _sidecar()
    del side["gpu"]
    write_json(sidecar_path(engine), side)
    with pytest.raises(BundleError, match="missing 'gpu'"):
        read_sidecar(engine)
    write_json(sidecar_path(engine), {**_sidecar(), "format_version": 99})
    with pytest.raises(BundleError, match="newer"):
        read_sidecar(engine)


def test_compatibility_decision():
    side = _sidecar(GTX)
    assert check_compatibility(side, GTX) == []
    # same GPU spelled with other whitespace / case is the same GPU
    assert check_compatibility(side, {"tensorrt": "10.3.0", "gpu": {"name": "nvidia geforce  GTX 1660 super", "compute_capability": "7.5"}}) == []
    other_gpu = check_compatibility(side, A4000)
    assert len(other_gpu) == 1 and "GTX 1660 SUPER" in other_gpu[0] and "RTX A4000" in other_gpu[0]
    other_trt = check_compatibility(side, {**GTX, "tensorrt": "10.5.0"})
    assert len(other_trt) == 1 and "10.3.0" in other_trt[0] and "10.5.0" in other_trt[0]
    both = check_compatibility(side, {**A4000, "tensorrt": "8.6.1"})
    assert len(both) == 2
    same_name_other_cc = check_compatibility(side, {"tensorrt": "10.3.0", "gpu": {**GTX["gpu"], "compute_capability": "8.6"}})
    assert len(same_name_other_cc) == 1 and "compute capability" in same_name_other_cc[0]


def test_mismatch_error_names_both_sides_and_the_rebuild_command(tmp_path):
    bundle = Bundle.create(tmp_path / "runs" / "coronet", "coronet", ["a", "b"], CORONET_V1)
    bundle.save()
    engine = bundle.dir / "engines" / "coronet-fp16.engine"
    side = _sidecar(GTX)
    with pytest.raises(EngineMismatchError) as info:
        ensure_compatible(engine, side, {**A4000, "tensorrt": "10.5.0"})
    msg = str(info.value)
    assert "GTX 1660 SUPER" in msg and "RTX A4000" in msg and "10.3.0" in msg and "10.5.0" in msg
    assert f"edgecxr build -m {bundle.dir} --precision fp16 --profile gtx16xx-turing" in msg
    ensure_compatible(engine, side, GTX)  # no error
    assert rebuild_command(tmp_path / "loose.engine", {"precision": "int8"}) == "edgecxr build -m BUNDLE --precision int8"


def _engine_in_bundle(bundle: Bundle, name: str, platform: dict, precision: str, verified, built_at: str) -> Path:
    engine = bundle.dir / "engines" / name
    engine.parent.mkdir(exist_ok=True)
    engine.write_bytes(b"plan")
    side = _sidecar(platform, precision)
    side["built_at"] = built_at
    write_json(sidecar_path(engine), side)
    record_engine(bundle, engine, side)
    if verified is not None:
        Bundle.load(bundle.dir).record_gate({f"engine:{name}": {"passed": verified}}, {"time": built_at}, by="build")
    return engine


def test_record_engine_and_choose_engine(tmp_path):
    bundle = Bundle.create(tmp_path / "b", "coronet", ["a", "b"], CORONET_V1)
    bundle.save()
    gtx16 = _engine_in_bundle(bundle, "gtx-fp16.engine", GTX, "fp16", True, "2025-01-01")
    gtx8 = _engine_in_bundle(bundle, "gtx-int8.engine", GTX, "int8", True, "2025-01-02")
    _engine_in_bundle(bundle, "gtx-int8-bad.engine", GTX, "int8", False, "2025-01-03")
    a4000 = _engine_in_bundle(bundle, "a4000-fp16.engine", A4000, "fp16", None, "2025-01-04")
    meta = Bundle.load(bundle.dir).meta
    assert Bundle.load(bundle.dir).gate_verdict("engine:gtx-int8-bad.engine") is False
    assert "verified" not in meta["engines"]["engines/gtx-int8-bad.engine"]  # verdicts live in "gate" only
    assert meta["engines"]["engines/gtx-fp16.engine"]["gpu"]["name"] == GTX["gpu"]["name"]

    chosen, rejected = choose_engine(bundle.dir, meta, GTX)
    assert chosen == gtx8  # verified INT8 beats FP16; the failed INT8 is skipped
    assert any("failed the accuracy gate" in r for r in rejected)
    assert any("RTX A4000" in r for r in rejected)
    assert choose_engine(bundle.dir, meta, GTX, precision="fp16")[0] == gtx16
    assert choose_engine(bundle.dir, meta, A4000)[0] == a4000  # unverified, but the only match
    none, why = choose_engine(bundle.dir, meta, {**GTX, "tensorrt": "10.5.0"})
    assert none is None and all("10.5.0" in r or "gate" in r for r in why)
    gtx16.unlink()
    assert any("file missing" in r for r in choose_engine(bundle.dir, meta, GTX, precision="fp16")[1])
