"""`edgecxr build | infer | bench | info` through Click's CliRunner, on CPU."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from runtime import tinymodels

from edgecxr.cli import main
from edgecxr.core.lazy import available


@pytest.fixture()
def cli():
    return CliRunner()


@pytest.fixture()
def bundle(tmp_path):
    return tinymodels.make_bundle(tmp_path / "bundle", int8=False)


@pytest.fixture(scope="module")
def images():
    found = tinymodels.real_images(3)
    if not found:
        pytest.skip("no real X-ray images available")
    return found


# -- build ----------------------------------------------------------------------------------------
@pytest.mark.skipif(available("tensorrt"), reason="checks the message on machines without TensorRT")
def test_build_without_tensorrt_exits_2_with_one_line(cli, bundle):
    result = cli.invoke(main, ["build", "-m", str(bundle.dir), "--precision", "fp16", "--no-verify"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "tensorrt" in result.output.lower()
    assert "Traceback" not in result.output
    assert not (bundle.dir / "engines").exists()


def test_build_names_the_command_that_makes_the_missing_onnx(cli, bundle):
    result = cli.invoke(main, ["build", "-m", str(bundle.dir), "--precision", "int8"])
    assert result.exit_code == 1, result.output
    assert "onnx_int8" in result.output and "edgecxr calibrate" in result.output
    assert "Traceback" not in result.output


def test_build_rejects_bad_profiles_and_batches(cli, bundle, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('precision = "fp16"\nmax_bacth = 4\n')
    result = cli.invoke(main, ["build", "-m", str(bundle.dir), "--profile", str(bad)])
    assert result.exit_code == 1 and "unknown key" in result.output
    result = cli.invoke(main, ["build", "-m", str(bundle.dir), "--batch-size", "8-2"])
    assert result.exit_code == 2 and "MIN <= OPT <= MAX" in result.output  # a usage error, like any bad option value
    result = cli.invoke(main, ["build", "-m", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "no such file or folder, and not a model name" in result.output


# -- infer ----------------------------------------------------------------------------------------
def test_infer_mixed_good_and_broken_files(cli, bundle, images, tmp_path):
    bad = tinymodels.broken_files(tmp_path / "bad")
    args = ["infer", "--model", str(bundle.dir), *map(str, images), *map(str, bad), "--batch-size", "2"]
    result = cli.invoke(main, args)
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert out.split()[:3] == ["source", "label", "probability"]  # the table's header says `source`, like the CSV and JSON
    for p in images:
        assert str(p) in out
    assert out.count("FAILED") == len(bad)
    assert "empty file" in out
    assert "using backend onnxruntime" in result.stderr and "TensorRT" in result.stderr
    assert f"{len(images)} of {len(images) + len(bad)} image(s) classified, {len(bad)} failed" in result.stderr


def test_infer_json_and_csv(cli, bundle, images, tmp_path):
    bad = tinymodels.broken_files(tmp_path / "bad")[:1]
    csv_path = tmp_path / "out" / "preds.csv"
    args = ["infer", "-m", str(bundle.dir), *map(str, images), str(bad[0]), "--json", "--csv", str(csv_path), "--top-k", "2"]
    result = cli.invoke(main, args)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["count"] == len(images) + 1 and doc["failed"] == 1
    assert doc["classes"] == tinymodels.CLASSES and doc["backend"]["backend"] == "onnxruntime"
    good = [p for p in doc["predictions"] if p["error"] is None]
    assert len(good) == len(images)
    for p in good:
        assert p["label"] in tinymodels.CLASSES and len(p["top_k"]) == 2 and p["source"]
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(rows) == len(images) + 1
    assert list(rows[0]) == ["source", "label", "top1", *[f"p_{c}" for c in tinymodels.CLASSES], "preprocess_ms", "inference_ms", "error",
                              "status", "reason", "ood_score", "orientation", "input_sha256", "StudyInstanceUID",
                              "SeriesInstanceUID", "SOPInstanceUID", "time", "model", "artifact_sha256", "precision",
                              "backend", "preprocess", "temperature", "ood_threshold", "orientation_gate", "cxr_score", "edgecxr_version"]
    assert rows[-1]["error"] and rows[-1]["label"] == ""
    # the audit trail: each input's own sha256, and what ran, on every row and in the JSON
    for row, path in zip(rows, [*images, bad[0]], strict=True):
        assert row["input_sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest() and row["time"]
    ran = doc["backend"]["artifact"]
    assert doc["audit"]["artifact_sha256"] == hashlib.sha256(Path(ran).read_bytes()).hexdigest()
    assert {r["artifact_sha256"] for r in rows} == {doc["audit"]["artifact_sha256"]}
    assert doc["audit"]["preprocess"] == rows[0]["preprocess"] and doc["audit"]["edgecxr_version"]
    assert [p["input_sha256"] for p in doc["predictions"]] == [r["input_sha256"] for r in rows]
    assert all(r["label"] in tinymodels.CLASSES for r in rows[:-1])
    assert not list(csv_path.parent.glob(".*.tmp"))  # atomic write left no temp file


def test_infer_folder_and_glob_all_good_exits_0(cli, bundle, images, tmp_path):
    copies = tinymodels.copy_images(images, tmp_path / "scans")
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), str(tmp_path / "scans"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == len(copies)
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), str(tmp_path / "scans" / "*.png"), "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    assert "(fp16)" in result.stderr


def test_infer_bad_inputs_and_models(cli, bundle, tmp_path):
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), str(tmp_path / "missing.png")])
    assert result.exit_code == 1 and "no such file" in result.output
    result = cli.invoke(main, ["infer", "-m", str(tmp_path / "nomodel"), str(tmp_path)])
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(available("tensorrt"), reason="checks the CPU-only message")
def test_infer_tensorrt_backend_unavailable_exits_2(cli, bundle, images):
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), str(images[0]), "--backend", "tensorrt"])
    assert result.exit_code == 2 and "tensorrt" in result.output.lower()


# -- bench / info ---------------------------------------------------------------------------------
def test_bench_json(cli, bundle, tmp_path):
    out = tmp_path / "bench.json"
    result = cli.invoke(
        main,
        ["bench", "-m", str(bundle.dir), "--batch-size", "1,2", "--iterations", "3", "--warmup-s", "0", "--json", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads(out.read_text())
    assert [r["batch"] for r in report["results"]] == [1, 2]
    assert "median" in report["results"][0]["latency_ms"]
    result = cli.invoke(main, ["bench", "-m", str(bundle.dir), "--batch-size", "0"])
    assert result.exit_code == 2 and "--batch-size" in result.output


def test_info(cli):
    result = cli.invoke(main, ["info", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["backends"]["onnxruntime"]["available"] is True
    assert "CPUExecutionProvider" in info["onnxruntime"]["providers"]
    assert info["cpu"]["logical_cores"] >= 1
    text = cli.invoke(main, ["info"]).stdout
    assert "onnxruntime" in text and "cpu:" in text and "tensorrt" in text


@pytest.mark.skipif(available("tensorrt"), reason="tensorrt is installed here")
def test_info_without_tensorrt_says_why(cli):
    result = cli.invoke(main, ["info", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["tensorrt"] == {"version": None, "reason": "tensorrt Python package not installed"}
    assert info["backends"]["tensorrt"]["available"] is False
    assert info["backends"]["tensorrt"]["reason"].startswith("tensorrt is not installed")


# -- bad input: one `error:` line, the right exit code, results kept --------------------------------
def _one_error_line(result) -> str:
    """The single `error:` line on stderr (and no traceback)."""
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_infer_csv_under_a_file_is_a_usage_error_before_any_work(cli, bundle, images, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), str(images[0]), "--csv", str(blocker / "p.csv")])
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "--csv" in line and "not a folder" in line
    assert "using backend" not in result.stderr  # stopped before loading the model


def test_infer_csv_write_failure_keeps_the_printed_results(cli, bundle, images, tmp_path, monkeypatch):
    import edgecxr.cli.output as cli_runtime

    def full_disk(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(cli_runtime, "atomic_write_bytes", full_disk)
    out = tmp_path / "p.csv"
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), *map(str, images), "--json", "--csv", str(out)])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)  # stdout is still the complete JSON
    assert doc["count"] == len(images) and doc["failed"] == 0
    line = _one_error_line(result)
    assert str(out) in line and "--csv" in line and "No space left" in line


def test_bench_out_under_a_file_is_a_usage_error(cli, bundle, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = cli.invoke(main, ["bench", "-m", str(bundle.dir), "--iterations", "1", "--out", str(blocker / "b.json")])
    assert result.exit_code == 2 and "--out" in _one_error_line(result)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--batch-size", "100000"], "<= 256"),  # a typo must not exhaust memory
        (["--batch-size", "1,x"], "integers"),
        (["--artifact", "onnx_fp32,onnx_int9"], "onnx_int9"),  # a typo must not be skipped silently
        (["--artifact", ","], "none given"),
        (["--artifact", "onnx_fp32", "--backend", "onnxruntime"], "--artifact"),
        (["--artifact", "onnx_fp32", "--precision", "fp16"], "--artifact"),
        (["--backend", "onnxruntime", "--cuda-graph"], "--cuda-graph"),
        (["--backend", "keras", "--threads", "2"], "--threads"),
    ],
)
def test_bench_rejects_bad_and_incompatible_options(cli, bundle, args, needle):
    result = cli.invoke(main, ["bench", "-m", str(bundle.dir), "--iterations", "1", "--warmup-s", "0", *args])
    assert result.exit_code == 2, result.output
    assert needle in _one_error_line(result)


def test_infer_cuda_graph_with_onnxruntime_is_a_usage_error(cli, bundle, images):
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), str(images[0]), "--backend", "onnxruntime", "--cuda-graph"])
    assert result.exit_code == 2 and "--cuda-graph" in _one_error_line(result)


@pytest.mark.skipif(available("tensorrt"), reason="checks the fallback warning on machines without TensorRT")
def test_infer_cuda_graph_says_when_it_is_ignored(cli, bundle, images):
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), str(images[0]), "--cuda-graph"])
    assert result.exit_code == 0, result.output
    assert "--cuda-graph ignored" in result.stderr


def test_infer_precision_that_the_file_does_not_have_is_refused(cli, bundle, images):
    fp16 = bundle.default_path("onnx_fp16")
    result = cli.invoke(main, ["infer", "-m", str(fp16), str(images[0]), "--precision", "fp32"])
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "fp16" in line and "fp32" in line


def test_build_batch_and_max_batch_together_is_a_usage_error(cli, bundle):
    result = cli.invoke(main, ["build", "-m", str(bundle.dir), "--batch-size", "1-8", "--max-batch", "4"])
    line = _one_error_line(result)
    assert result.exit_code == 2 and "not both" in line
    assert line.endswith("(options: --batch-size, --min-batch, --opt-batch, --max-batch)")


def test_build_profile_that_is_not_text(cli, bundle, tmp_path):
    png = tmp_path / "profile.toml"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    result = cli.invoke(main, ["build", "-m", str(bundle.dir), "--profile", str(png)])
    assert result.exit_code == 1 and str(png) in _one_error_line(result)


def test_corrupt_bundle_json_is_one_error_line(cli, bundle, images):
    bundle.path.write_text("[]")
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), str(images[0])])
    assert result.exit_code == 1 and str(bundle.path) in _one_error_line(result)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["infer"], "Missing argument"),
        (["infer", "-m", "x", "y.png", "--batch-size", "0"], "--batch-size"),
        (["nosuchcommand"], "No such command"),
        (["data", "check"], "Missing argument 'MANIFEST'"),
    ],
)
def test_usage_errors_are_one_error_line_with_exit_2(cli, args, needle):
    result = cli.invoke(main, args)
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert needle in line and "--help" in line
    assert "Usage:" not in result.stderr


def test_ctrl_c_exits_130_with_one_line_and_writes_no_csv(cli, bundle, images, tmp_path, monkeypatch):
    from edgecxr.runtime.classifier import Classifier

    def interrupted(self, paths, batch_size=8, **options):
        raise KeyboardInterrupt
        yield  # pragma: no cover - makes this a generator like the real one

    monkeypatch.setattr(Classifier, "predict_iter", interrupted)
    out = tmp_path / "p.csv"
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), str(images[0]), "--csv", str(out)])
    assert result.exit_code == 130
    assert _one_error_line(result) == "error: interrupted"
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_unexpected_os_error_is_one_line_not_a_traceback(cli, bundle, images, monkeypatch):
    import edgecxr.cli.infer as data_io

    def denied(items):
        raise PermissionError(13, "Permission denied", "/scans/locked")

    monkeypatch.setattr(data_io, "expand_inputs", denied)
    result = cli.invoke(main, ["infer", "-m", str(bundle.dir), str(images[0])])
    assert result.exit_code == 1
    assert _one_error_line(result) == "error: /scans/locked: Permission denied"


@pytest.mark.parametrize(
    "command",
    [["data"], ["data", "check"], ["data", "prepare"], ["train"], ["evaluate"], ["export"], ["calibrate"],
     ["verify"], ["build"], ["infer"], ["bench"], ["info"]],
)
def test_every_help_has_an_example(cli, command):
    result = cli.invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout and "edgecxr " in result.stdout.split("Example", 1)[1]


def test_a_bad_top_level_option_is_one_error_line(cli):
    result = cli.invoke(main, ["--bogus"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["error: No such option '--bogus'; see 'main --help'"]  # CliRunner names it main
    assert cli.invoke(main, ["--version"]).exit_code == 0
