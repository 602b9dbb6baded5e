"""`edgecxr build --dry-run` on a machine without TensorRT: both reference models, every shipped profile,
every TensorRT line, and the failures it must catch (operators, Q/DQ, shapes, memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper
from runtime import tinymodels

from edgecxr.cli import main
from edgecxr.stages.engine import trt_lines
from edgecxr.stages.engine.dryrun import check_operators, dry_run, operator_lists
from edgecxr.stages.engine.profile import load_profile, resolve_profile

REPO = Path(__file__).resolve().parents[2]
PROFILES = sorted(p.stem for p in (REPO / "build_engines").glob("*.toml"))
#: reference model -> precisions it ships (cnn-lstm has no INT8 that passed the gate)
REFERENCES = {"coronet": ("fp16", "int8"), "cnn-lstm": ("fp16",)}
CASES = [(m, p, prec) for m, precs in REFERENCES.items() for p in PROFILES for prec in precs]


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECXR_MODELS", str(tmp_path / "models"))  # a dry run must copy nothing there
    return CliRunner()


@pytest.mark.parametrize("model,profile,precision", CASES, ids=[f"{m}-{p}-{x}" for m, p, x in CASES])
def test_reference_models_pass_for_every_shipped_profile(cli, tmp_path, model, profile, precision):
    result = cli.invoke(main, ["build", "-m", model, "--profile", profile, "--precision", precision, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["problems"] == [] and report["model"] == model
    wanted = [line.key for line in trt_lines.lines_for_majors(load_profile(profile).tensorrt)]
    assert [step["tensorrt_line"] for step in report["plan"]] == wanted
    checks = {c["check"] for c in report["checks"]}
    assert {"onnx", "io", "precision", "memory"} <= checks and {f"operators@{k}" for k in wanted} <= checks
    assert ("qdq" in checks) == (precision == "int8")
    assert not (tmp_path / "models").exists()  # read only


@pytest.mark.parametrize("line", [line.key for line in trt_lines.LINES])
@pytest.mark.parametrize("model", sorted(REFERENCES))
def test_reference_models_pass_on_every_tensorrt_line(cli, model, line):
    result = cli.invoke(main, ["build", "-m", model, "--precision", "fp16", "--dry-run", "--trt-version", line])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert text.rstrip().endswith("PASS: the build would reach TensorRT")
    path = trt_lines.BY_KEY[line]
    assert ("weakly typed" in text) == (not path.strongly_typed)
    assert ("builder precision flags FP16" in text) == (line == "8.6")


def test_orin_nano_refuses_a_workspace_that_does_not_fit(cli):
    result = cli.invoke(main, ["build", "-m", "coronet", "--profile", "jetson-orin-nano", "--workspace-mb", "6000", "--dry-run"])
    assert result.exit_code == 1
    assert "FAIL memory" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("error: dry run failed: memory: workspace 6000 MB")


def test_dry_run_imports_no_tensorrt_and_needs_no_gpu():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from edgecxr.cli import main\n"
        "r = CliRunner().invoke(main, ['build', '-m', 'cnn-lstm', '--profile', 'jetson-orin-nano', '--dry-run'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'tensorrt' not in sys.modules and 'polygraphy' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_trt_version_needs_dry_run_and_a_known_line(cli):
    result = cli.invoke(main, ["build", "--trt-version", "10.3"])
    assert result.exit_code == 2 and "--trt-version goes with --dry-run" in result.stderr
    result = cli.invoke(main, ["build", "--dry-run", "--trt-version", "7.1"])
    assert result.exit_code == 2 and "not a supported line" in result.stderr


# -- the checks themselves, on tiny models -------------------------------------------------------
def _with_extra_nodes(bundle, key: str, nodes: list, inits: list | None = None) -> None:
    path = bundle.artifact(key)
    model = onnx.load(str(path))
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits or [])
    onnx.save(model, str(path))
    bundle.set_artifact(key, path)
    bundle.save()


def test_operator_check_tells_unsupported_from_unknown():
    ops = {"Conv", "Hardmax", "StringNormalizer"}  # Hardmax: only the 10.15 list; StringNormalizer: no list
    problems, warnings, _ = check_operators(ops, 17, "10.3")
    assert len(problems) == 1 and "StringNormalizer" in problems[0]
    assert len(warnings) == 1 and "Hardmax" in warnings[0]
    problems, warnings, _ = check_operators(ops, 17, "10.x")  # the exact list: Hardmax is fine
    assert len(problems) == 1 and not warnings
    problems, warnings, _ = check_operators({"Conv"}, 18, "8.6")  # above 8.5's opset 17: a warning there
    assert not problems and "opset 18" in warnings[0]
    data = operator_lists()
    assert set(data["lines"]) == set(trt_lines.BY_KEY), "every TensorRT line needs an operator list"
    assert all(lst["source"] and lst["operators"] for lst in data["lists"].values())
    assert set(data["lists"]["trt-8_5"]["operators"]) <= set(data["lists"]["trt-10_15"]["operators"])


def test_unsupported_operator_fails_the_dry_run(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    _with_extra_nodes(bundle, "onnx_fp16", [helper.make_node("StringNormalizer", ["probs"], ["junk"])])
    result = dry_run(bundle.dir, resolve_profile(None, precision="fp16"), ["10.x"])
    assert not result.ok and any("StringNormalizer" in p for p in result.problems)


def test_qdq_rules_fail_the_dry_run(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b")  # the tiny test INT8 model quantizes its weight per tensor
    first = dry_run(bundle.dir, resolve_profile(None, precision="int8"), ["10.3"])
    assert first.problems == ["qdq: MatMul '': weight is quantized per-tensor; TensorRT needs per-channel scales"]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s_bad"),
             numpy_helper.from_array(np.array(3, np.int8), "zp_bad")]
    _with_extra_nodes(bundle, "onnx_int8", [helper.make_node("QuantizeLinear", ["probs", "s_bad", "zp_bad"], ["q_bad"])], inits)
    result = dry_run(bundle.dir, resolve_profile(None, precision="int8"), ["10.3"])
    assert not result.ok and any(p.startswith("qdq:") and "not 0 (asymmetric)" in p for p in result.problems)


def test_input_shape_and_outputs_are_checked(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    prof = resolve_profile(None, precision="fp16")
    ok = dry_run(bundle.dir, prof, ["10.x"])
    assert ok.ok and ok.facts["io"]["outputs"][0][0] == "probs"
    model = onnx.load(str(bundle.artifact("onnx_fp16")))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # a fixed batch of 1
    extra = helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT16, ["N", 4])
    model.graph.output.append(extra)  # a second output that is not "features"
    onnx.save(model, str(bundle.artifact("onnx_fp16")))
    bundle.set_artifact("onnx_fp16", bundle.artifact("onnx_fp16"))
    bundle.save()
    result = dry_run(bundle.dir, prof, ["10.x"])
    problems = " | ".join(result.problems)
    assert "fixed batch of 1" in problems and "must be just 'features'" in problems


def test_no_fast_fp16_is_refused_like_the_real_build(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    pascal = resolve_profile(load_profile("gtx16xx-turing").__class__(name="pascal", compute_capabilities=("6.1",)))
    result = dry_run(bundle.dir, pascal, ["8.6"])
    assert not result.ok and any("no fast FP16" in p for p in result.problems)


def test_parser_restrictions_are_checked(tmp_path):
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    nodes = [
        helper.make_node("MaxPool", ["probs"], ["pooled", "indices"], kernel_shape=[2, 2], name="pool_with_indices"),
        helper.make_node("LSTM", ["probs", "w", "r"], ["y"], hidden_size=4, layout=1, name="batch_first_lstm"),
    ]
    _with_extra_nodes(bundle, "onnx_fp16", nodes)
    result = dry_run(bundle.dir, resolve_profile(None, precision="fp16"), ["10.x"])
    problems = " | ".join(result.problems)
    assert "pool_with_indices': the Indices output is not supported" in problems
    assert "batch_first_lstm': layout must be 0" in problems
