"""Benchmark statistics and the JSON report, on the tiny real ONNX model with few iterations."""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pytest
from runtime import tinymodels

from edgecxr.core.errors import BundleError
from edgecxr.runtime.bench import (
    compare_table,
    format_report,
    parse_batch_sizes,
    percentile,
    run_bench,
    stability_warnings,
    summarize,
    synthetic_batch,
)

LAT_KEYS = {"min", "max", "mean", "median", "p90", "p95", "p99", "std", "coefficient_of_variance_pct"}
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def _keys(value):
    """Every dict key at any depth of a JSON-like value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


def assert_snake_case(report):
    bad = sorted({k for k in _keys(json.loads(json.dumps(report))) if not SNAKE.match(k)})
    assert not bad, f"JSON keys not in snake_case: {bad}"


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy_linear(q):
    rng = np.random.default_rng(q)
    for n in (1, 2, 7, 200):
        values = rng.exponential(3.0, n).tolist()
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q, method="linear")), rel=1e-12)


def test_percentile_by_hand_and_errors():
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10, 20], 90) == pytest.approx(19.0)
    assert percentile([5], 99) == 5
    assert percentile([3, 1, 2], 0) == 1 and percentile([3, 1, 2], 100) == 3
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1], 101)


def test_summarize_and_stability():
    stats = summarize([1.0, 1.0, 1.0, 1.0])
    assert set(stats) == LAT_KEYS
    assert stats["coefficient_of_variance_pct"] == 0 and stats["median"] == 1
    assert stability_warnings("latency", stats) == []
    noisy = summarize([1.0, 1.2, 0.8, 1.0])
    assert noisy["coefficient_of_variance_pct"] == pytest.approx(100 * np.std([1, 1.2, 0.8, 1]) / 1.0, rel=1e-3)
    (warning,) = stability_warnings("latency", noisy)
    assert "coefficient of variation" in warning and "2.5%" in warning
    assert summarize([]) == {}


def test_parse_batch_sizes():
    assert parse_batch_sizes("1,8") == [1, 8]
    assert parse_batch_sizes(" 4 ") == [4]
    for bad in ("0", "a", "", "1,-2"):
        with pytest.raises(ValueError):
            parse_batch_sizes(bad)
    assert parse_batch_sizes("256") == [256]
    with pytest.raises(ValueError, match="<= 256"):
        parse_batch_sizes("1,100000")  # a typo once ran out of memory instead of failing fast


def test_synthetic_batch_is_in_range_and_deterministic():
    x = synthetic_batch(tinymodels.SPEC, 3)
    assert x.shape == (3, 32, 32, 3) and x.dtype == np.float32
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(x, synthetic_batch(tinymodels.SPEC, 3))


@pytest.fixture()
def tiny_onnx(tmp_path):
    return tinymodels.make_onnx(tmp_path / "tiny.onnx")


@pytest.fixture()
def real_image():
    found = tinymodels.real_images(1)
    if not found:
        pytest.skip("no real X-ray: neither examples/images nor ../shared/data/cxr")
    return found[0]


def test_bench_report_structure(tiny_onnx, real_image):
    image = real_image
    report = run_bench(tiny_onnx, batch_sizes=[1, 3], iterations=5, warmup_s=0.0, image=image, log=lambda m: None)
    assert_snake_case(report)
    assert report["backend"]["backend"] == "onnxruntime"
    assert [r["batch"] for r in report["results"]] == [1, 3]
    for r in report["results"]:
        assert r["iterations"] == 5 and r["warmup_iterations"] >= 1
        assert set(r["latency_ms"]) == LAT_KEYS and set(r["compute_ms"]) == LAT_KEYS
        lat = r["latency_ms"]
        assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["throughput_images_per_s"] == pytest.approx(r["throughput_qps"] * r["batch"], rel=1e-2)
        assert "h2d_ms" not in r  # ONNX Runtime on CPU has no copies to time
        assert isinstance(r["warnings"], list)
    e2e = report["end_to_end"]
    assert e2e["iterations"] == 5 and e2e["image_size"][0] > 32
    for key in ("decode_ms", "preprocess_ms", "infer_ms", "end_to_end_ms"):
        assert set(e2e[key]) == LAT_KEYS
    assert e2e["end_to_end_ms"]["median"] >= e2e["decode_ms"]["median"]
    assert "batch   3" in format_report(report)


def test_compare_mode_on_a_bundle(tmp_path):
    logging.disable(logging.WARNING)
    bundle = tinymodels.make_bundle(tmp_path / "b")
    logging.disable(logging.NOTSET)
    report = run_bench(
        bundle.dir, batch_sizes=[2], iterations=3, warmup_s=0.0, compare=["onnx_fp32", "onnx_int8", "keras", "engine"],
        log=lambda m: None,
    )
    names = [e["name"] for e in report["entries"]]
    assert names == ["onnx_fp32", "onnx_int8", "keras", "engine"]
    skipped = {e["name"]: e["skipped"] for e in report["entries"] if "skipped" in e}
    assert "keras" in skipped and "keras" in skipped["keras"]  # the tiny bundle has no Keras model
    assert "engine" in skipped
    rows = report["comparison"]
    assert [r["name"] for r in rows] == ["onnx_fp32", "onnx_int8"]
    assert rows[0]["speedup"] == 1.0 and rows[0]["latency_ratio"] == 1.0
    assert rows[1]["reference"] == "onnx_fp32" and rows[1]["speedup"] > 0
    assert_snake_case(report)
    text = format_report(report)
    assert "ratios against onnx_fp32" in text and "keras: skipped" in text
    with pytest.raises(BundleError, match="bundle directory"):
        run_bench(bundle.default_path("onnx_fp32"), compare=["onnx_fp32"], iterations=1, warmup_s=0, log=lambda m: None)


def test_transfer_split_keys_are_snake_case_and_shown():
    """A backend that times copies (TensorRT's h2d/compute/d2h) reports them under snake_case keys."""
    from edgecxr.runtime.bench import bench_runner

    class Timed:
        def infer(self, batch):
            return batch

        def timings(self):
            return {"h2d_ms": 0.1, "compute_ms": 1.0, "d2h_ms": 0.05}

    r = bench_runner(Timed(), np.zeros((2, 4), np.float32), iterations=3, warmup_s=0.0)
    assert {"h2d_ms", "compute_ms", "d2h_ms"} <= set(r) and set(r["h2d_ms"]) == LAT_KEYS
    report = {"backend": {"backend": "tensorrt"}, "results": [r]}
    assert_snake_case(report)
    assert "median split ms: h2d 0.100, compute 1.000, d2h 0.050" in format_report(report)


def test_compare_table_ratios_by_hand():
    def entry(name, medians):
        return {"name": name, "results": [
            {"batch": b, "latency_ms": {"median": m}, "throughput_images_per_s": b * 1000 / m} for b, m in medians.items()
        ]}

    rows = compare_table([entry("ref", {1: 2.0, 8: 10.0}), {"name": "x", "skipped": "no"}, entry("fast", {1: 1.0, 8: 4.0, 16: 7.0})])
    by = {(r["name"], r["batch"]): r for r in rows}
    assert by[("fast", 1)]["speedup"] == 2.0 and by[("fast", 1)]["latency_ratio"] == 0.5
    assert by[("fast", 8)]["speedup"] == 2.5
    assert "speedup" not in by[("fast", 16)]  # no reference at that batch size
    assert compare_table([{"name": "x", "skipped": "no"}]) == []


def test_bench_warnings_go_to_stderr_and_say_coefficient_of_variation(monkeypatch):
    """stdout holds the report (or its JSON) alone, so `bench --json > out.json` stays parseable;
    an unstable measurement is a warning on stderr, named with the right statistical term."""
    from click.testing import CliRunner

    import edgecxr.runtime.bench as bench
    from edgecxr.cli import main

    noisy = bench.summarize([1.0, 3.0, 1.0, 3.0])
    (warning,) = bench.stability_warnings("latency at batch 1", noisy)
    assert "coefficient of variation" in warning
    report = {"model": "m", "backend": {"backend": "onnxruntime", "precision": "fp32", "artifact": "m.onnx"},
              "results": [], "warnings": [warning]}
    monkeypatch.setattr(bench, "run_bench", lambda *a, **k: report)
    for args in ([], ["--json"]):
        res = CliRunner().invoke(main, ["bench", *args])
        assert res.exit_code == 0, res.output
        assert f"warning: {warning}" in res.stderr and "warning:" not in res.stdout
    assert json.loads(CliRunner().invoke(main, ["bench", "--json"]).stdout)["warnings"] == [warning]
