"""API contract of the TensorRT code paths, checked on CPU against NVIDIA's real bindings wheels.

For each supported line (8.6, 10.3, the latest 10.x, 11.x; edgecxr/stages/engine/trt_lines.py), every
TensorRT name our code and the Polygraphy loaders/runner we call use on that path must exist in that
version's bindings module, and the pinned Polygraphy must accept that version. The wheels (about 1 MB
each) are fetched once with `pip download --no-deps` into ~/.cache/edgecxr/trt-wheels and read offline
afterwards; a line whose wheel cannot be had is skipped with the reason.

The negative tests show the check can fail: the 8.6 path (FP16 builder flag, EXPLICIT_BATCH) is
refused against 11.x, and the strongly typed path against 8.6.
"""

from __future__ import annotations

import pytest

from edgecxr.stages.engine import trt_lines, trt_wheels

LINES = [pytest.param(line, id=line.key) for line in trt_lines.LINES]


def _wheel(line: trt_lines.TrtLine):
    try:
        return trt_wheels.fetch_wheel(line.wheel)
    except trt_wheels.WheelUnavailable as exc:
        pytest.skip(f"TensorRT {line.key} bindings wheel unavailable (offline and not cached?): {exc}")


@pytest.mark.parametrize("line", LINES)
def test_every_name_of_the_path_exists_in_that_version(line):
    wheel = _wheel(line)
    version = trt_wheels.wheel_version(wheel)
    assert line.matches(version), f"{line.wheel} is not a {line.key} version"
    for step, names in trt_lines.names_used(line).items():
        missing = trt_wheels.missing_names(set(names), wheel)
        assert not missing, f"TensorRT {version} lacks {missing} used by the {step} step of the {line.key} path"


@pytest.mark.parametrize("line", LINES)
def test_the_pinned_polygraphy_supports_that_version(line):
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install 'edgecxr[gpu]')")
    import polygraphy
    from polygraphy.mod.trt_importer import tensorrt_module_and_version_string

    assert polygraphy.__version__ == trt_lines.POLYGRAPHY_VERSION, "pyproject pins the release these tests checked"
    requirement = tensorrt_module_and_version_string()  # "tensorrt>=8.5": what its lazy import demands
    name, _, minimum = requirement.partition(">=")
    assert name == "tensorrt" and minimum, requirement
    assert trt_lines.version_tuple(trt_wheels.wheel_version(_wheel(line))) >= trt_lines.version_tuple(minimum)


def test_polygraphy_loaders_we_call_take_the_arguments_we_pass():
    """Signatures of the Polygraphy API build.py and tensorrt.py call (no TensorRT needed to inspect them)."""
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install 'edgecxr[gpu]')")
    import inspect

    from polygraphy import cuda
    from polygraphy.backend import trt as pg

    def params(obj):
        return set(inspect.signature(obj).parameters)

    assert {"path", "strongly_typed"} <= params(pg.NetworkFromOnnxPath.__init__)
    assert {"tf32", "fp16", "int8", "use_dla", "allow_gpu_fallback"} <= params(pg.CreateConfig.__init__)
    common = pg.CreateConfig.__mro__[1].__init__  # profiles, pools and the timing cache live in the base
    assert {"profiles", "memory_pool_limits", "load_timing_cache"} <= params(common)
    assert {"network", "config", "save_timing_cache"} <= params(pg.EngineFromNetwork.__init__)
    assert {"engine", "path"} <= params(pg.SaveEngine.__init__)
    assert {"config", "func"} <= params(pg.PostprocessConfig.__init__)
    assert {"serialized_engine", "runtime"} <= params(pg.EngineFromBytes.__init__)
    assert {"min", "opt", "max"} <= params(pg.Profile.add)
    assert {"copy_outputs_to_host"} <= params(pg.TrtRunner.infer_impl)
    assert {"shape", "dtype"} <= params(cuda.DeviceArray.__init__)
    assert all(hasattr(cuda.DeviceArray, m) for m in ("resize", "copy_from", "copy_to", "view", "free"))
    assert not any("graph" in name.lower() for name in dir(pg.TrtRunner)), (
        "TrtRunner now offers CUDA graphs: drop runtime/gpu.CudaGraph and use it")


def test_a_name_only_8_6_has_is_caught_against_11():
    wheel11 = _wheel(trt_lines.BY_KEY["11.x"])
    missing = trt_wheels.missing_names(trt_lines.all_names(trt_lines.BY_KEY["8.6"]), wheel11)
    assert {"FP16", "EXPLICIT_BATCH"} <= set(missing)  # removed in 11: the 8.6 path would fail there
    assert trt_wheels.missing_names({"execute_async_v2", "build_engine"}, wheel11) == ["build_engine", "execute_async_v2"]


def test_the_strongly_typed_path_is_caught_against_8_6():
    wheel86 = _wheel(trt_lines.BY_KEY["8.6"])
    assert "STRONGLY_TYPED" in trt_wheels.missing_names(trt_lines.all_names(trt_lines.BY_KEY["10.3"]), wheel86)
    assert trt_wheels.missing_names({"execute_async_v2", "EXPLICIT_BATCH", "FP16"}, wheel86) == []


def test_docstring_words_are_not_names(tmp_path):
    """11.x mentions FP16 in prose only; an invented name is never found."""
    wheel11 = _wheel(trt_lines.BY_KEY["11.x"])
    names = trt_wheels.binding_names(wheel11)
    assert "STRONGLY_TYPED" in names and "execute_async_v3" in names and "set_tensor_address" in names
    assert "FP16" not in names and "no_such_tensorrt_api_name" not in names


def test_cache_lookup_and_offline_failure(tmp_path, monkeypatch):
    assert trt_wheels.cached_wheel("tensorrt-cu12-bindings==10.3.0", tmp_path) is None
    (tmp_path / "tensorrt_cu12_bindings-10.3.0-cp310-none-manylinux_2_17_x86_64.whl").write_bytes(b"")
    assert trt_wheels.cached_wheel("tensorrt-cu12-bindings==10.3.0", tmp_path).name.startswith("tensorrt_cu12_bindings-10.3.0-")
    monkeypatch.setattr(trt_wheels, "_FALLBACK_PYTHONS", ())  # one pip call is enough to show the failure
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: a wheel that is not cached cannot be fetched
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(trt_wheels.WheelUnavailable, match="not cached"):
        trt_wheels.fetch_wheel("tensorrt-cu12-bindings==9.9.9", tmp_path, timeout=120)
    with pytest.raises(ValueError, match="NAME==VERSION"):
        trt_wheels.cached_wheel("tensorrt-cu12-bindings", tmp_path)


#: TensorRT names the Polygraphy code we call uses only in branches edgecxr never takes, or behind
#: hasattr / try-except / version guards (read in polygraphy 0.53.6); everything else it touches must be
#: in trt_lines.names_used, and so is checked against every line's wheel above.
POLYGRAPHY_GUARDED = {
    "OnnxParserFlag", "NATIVE_INSTANCENORM", "ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA",  # parser flags: none passed
    "PreviewFeature", "QuantizationFlag",  # only when CreateConfig gets preview_features / quantization_flags
    "SHAPE",  # LayerType.SHAPE inside try/except AttributeError
    "ExecutionContextAllocationStrategy", "USER_MANAGED",  # TrtRunner allocation_strategy "profile"/"runtime" only
}
#: (file under polygraphy/backend/trt, classes and functions of it that build.py / tensorrt.py call)
POLYGRAPHY_CALLED = {
    "loader.py": ("CreateNetwork", "BaseNetworkFromOnnx", "NetworkFromOnnxPath", "EngineBytesFromNetwork",
                  "EngineFromNetwork", "EngineFromBytes", "SaveEngine"),
    "config.py": ("_CreateConfigCommon", "CreateConfig", "PostprocessConfig"),
    "runner.py": ("TrtRunner", "_make_output_allocator"),
    "util.py": ("get_trt_logger", "check_onnx_parser_errors", "get_metadata_from_engine", "get_tensor_format"),
}


def _trt_attributes(node) -> set[str]:
    """Every name X in `trt.X.Y...` chains inside an AST node."""
    import ast

    found = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute):
            chain, cur = [], sub
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "trt":
                found.update(chain)
    return {n for n in found if not n.startswith("__") and n != "values"}


def test_every_tensorrt_name_polygraphy_uses_on_our_path_is_in_the_table():
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install 'edgecxr[gpu]')")
    import ast
    from pathlib import Path

    import polygraphy

    root = Path(polygraphy.__file__).parent / "backend" / "trt"
    used: dict[str, set[str]] = {}
    for file, wanted in POLYGRAPHY_CALLED.items():
        tree = ast.parse((root / file).read_text(encoding="utf-8"))
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        assert set(wanted) <= set(defs), f"polygraphy {file} no longer defines {set(wanted) - set(defs)}"
        for name in wanted:
            used[f"{file}:{name}"] = _trt_attributes(defs[name])
    ours = set().union(*(trt_lines.all_names(line) for line in trt_lines.LINES))
    unlisted = {where: sorted(names - ours - POLYGRAPHY_GUARDED) for where, names in used.items()}
    assert not any(unlisted.values()), f"Polygraphy uses TensorRT names missing from trt_lines: {unlisted}"
    assert {"FP16", "INT8", "EXPLICIT_BATCH", "STRONGLY_TYPED", "execute_async_v3"} <= set().union(*used.values()) | ours


#: variable names that hold TensorRT objects in build.py and tensorrt.py (their attributes are TensorRT API)
_TRT_OBJECTS = {"trt", "engine", "ctx", "context", "network", "builder", "rt", "inp", "cfg", "t"}
#: attributes of same-named variables that are not TensorRT (build.engine_key's `engine` is a Path)
_NOT_TRT = {"resolve", "with_name"}


def test_every_tensorrt_name_our_code_uses_is_in_the_table():
    """build.py and runtime/tensorrt.py: each `trt.X` and each attribute of a TensorRT object is listed in trt_lines."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "edgecxr"
    ours = set().union(*(trt_lines.all_names(line) for line in trt_lines.LINES))
    for rel in ("stages/engine/build.py", "runtime/tensorrt.py"):
        used = set()
        for node in ast.walk(ast.parse((root / rel).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute):
                base = node.value
                name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else None
                if name in _TRT_OBJECTS:
                    used.add(node.attr)
        used |= _trt_attributes(ast.parse((root / rel).read_text(encoding="utf-8")))
        unlisted = sorted(used - ours - _NOT_TRT)
        assert not unlisted, f"{rel} uses TensorRT names missing from trt_lines.names_used: {unlisted}"
        assert used & ours, f"{rel}: the scan found no TensorRT names at all"
