"""`auto`'s CPU runtime is the one measured faster for that file on that CPU, measured once and cached."""

from __future__ import annotations

import json

import pytest

from edgecxr.runtime import openvino_pick
from edgecxr.runtime.openvino_pick import pick_runtime
from edgecxr.runtime.select import choose_artifact


class FakeTimes:
    """A timing table in place of the microbench; counts how often it was asked."""

    def __init__(self, ms: dict[str, float]):
        self.ms, self.calls = ms, 0

    def __call__(self, path, shape, runtimes, options):
        self.calls += 1
        return {name: self.ms[name] for name in runtimes}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECXR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / openvino_pick.CACHE_NAME


@pytest.mark.parametrize(("ms", "winner"), [
    ({"onnxruntime": 11.7, "openvino": 8.1}, "openvino"),
    ({"onnxruntime": 22.1, "openvino": 31.2}, "onnxruntime"),
    ({"onnxruntime": 5.0, "openvino": 5.0}, "onnxruntime"),  # a tie keeps the reference runtime
])
def test_fastest_runtime_wins(tiny_onnx, cache, ms, winner):
    fake = FakeTimes(ms)
    runtime, why = pick_runtime(tiny_onnx, (32, 32, 3), measure=fake)
    assert runtime == winner and "measured now" in why
    assert fake.calls == 1
    [entry] = json.loads(cache.read_text()).values()
    assert entry["runtime"] == winner and entry["ms"] == ms


def test_verdict_is_cached_per_file_cpu_and_runtime_version(tiny_onnx, cache, monkeypatch):
    fake = FakeTimes({"onnxruntime": 11.7, "openvino": 8.1})
    assert pick_runtime(tiny_onnx, (32, 32, 3), measure=fake)[0] == "openvino"
    fake.ms = {"onnxruntime": 1.0, "openvino": 9.0}  # a second measurement would now pick onnxruntime
    runtime, why = pick_runtime(tiny_onnx, (32, 32, 3), measure=fake)
    assert (runtime, fake.calls) == ("openvino", 1) and "earlier" in why
    # another CPU, another OpenVINO, another file: measured again
    monkeypatch.setattr("edgecxr.runtime.sysinfo.cpu_info", lambda: {"model": "Other CPU"})
    assert pick_runtime(tiny_onnx, (32, 32, 3), measure=fake)[0] == "onnxruntime" and fake.calls == 2
    monkeypatch.setattr("edgecxr.runtime.openvino.openvino_version", lambda: "9999.0")
    pick_runtime(tiny_onnx, (32, 32, 3), measure=fake)
    assert fake.calls == 3
    pick_runtime(tiny_onnx, (32, 32, 3), sha256="0" * 64, measure=fake)
    assert fake.calls == 4 and len(json.loads(cache.read_text())) == 4


def test_a_failed_measurement_falls_back_to_onnxruntime(tiny_onnx, cache):
    def broken(*_):
        raise RuntimeError("compile failed\ndetails")

    runtime, why = pick_runtime(tiny_onnx, (32, 32, 3), measure=broken)
    assert runtime == "onnxruntime" and "compile failed" in why and "details" not in why
    assert not cache.exists()  # nothing cached: the next load tries again


def test_damaged_cache_is_measured_again(tiny_onnx, cache):
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    fake = FakeTimes({"onnxruntime": 3.0, "openvino": 2.0})
    assert pick_runtime(tiny_onnx, (32, 32, 3), measure=fake)[0] == "openvino" and fake.calls == 1


def test_auto_runs_the_gated_file_on_the_measured_winner(tmp_path, cache, monkeypatch):
    pytest.importorskip("openvino")
    from runtime import tinymodels

    tiny_bundle = tinymodels.make_bundle(tmp_path / "b", int8_passed=True)
    monkeypatch.delenv("EDGECXR_CPU_RUNTIME")
    fake = FakeTimes({"onnxruntime": 11.7, "openvino": 8.1})
    monkeypatch.setattr(openvino_pick, "microbench", fake)
    choice = choose_artifact(tiny_bundle, "auto")
    assert (choice.backend, choice.path.name) == ("openvino", "model.int8.onnx") and fake.calls == 1
    assert "openvino fastest" in choice.reason
    fake.ms = {"onnxruntime": 1.0, "openvino": 8.1}
    assert choose_artifact(tiny_bundle, "auto").backend == "openvino" and fake.calls == 1  # cached
    # asking for a runtime by name never measures
    assert choose_artifact(tiny_bundle, "onnxruntime").backend == "onnxruntime" and fake.calls == 1


def test_auto_without_openvino_or_pinned_does_not_measure(tiny_bundle, cache, monkeypatch):
    fake = FakeTimes({"onnxruntime": 11.7, "openvino": 8.1})
    monkeypatch.setattr(openvino_pick, "microbench", fake)
    assert choose_artifact(tiny_bundle, "auto").backend == "onnxruntime"  # pinned by tests/conftest.py
    monkeypatch.delenv("EDGECXR_CPU_RUNTIME")
    monkeypatch.setattr("edgecxr.runtime.openvino.openvino_version", lambda: None)
    assert choose_artifact(tiny_bundle, "auto").backend == "onnxruntime"
    assert fake.calls == 0


def test_auto_refuses_a_tampered_file_before_timing_it(tiny_bundle, cache, monkeypatch):
    pytest.importorskip("openvino")
    from edgecxr.core.errors import BundleError

    monkeypatch.delenv("EDGECXR_CPU_RUNTIME")
    fake = FakeTimes({"onnxruntime": 11.7, "openvino": 8.1})
    monkeypatch.setattr(openvino_pick, "microbench", fake)
    path = tiny_bundle.artifact("onnx_fp32")  # what auto picks (the INT8 is not gated in this bundle)
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(BundleError, match="sha256"):
        choose_artifact(tiny_bundle, "auto")
    assert fake.calls == 0
