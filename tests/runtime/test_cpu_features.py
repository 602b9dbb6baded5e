"""CPU features on aarch64 and the arithmetic a gate verdict holds for (issue 27).

Recorded /proc/cpuinfo of Jetson Orin, Jetson Xavier and a Raspberry Pi 4 (fixtures/cpuinfo/README.md),
AT_HWCAP values recorded under QEMU, and a stubbed CPU class for the artifact choice and the runner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecxr.runtime import sysinfo
from edgecxr.runtime.arithmetic import FP16_ARITHMETIC_ENV, onnx_arithmetic, upcast_fp16, verdict_arithmetic
from edgecxr.runtime.sysinfo import CpuFeatures, read_cpu_features
from tests.runtime import tinymodels

FIXTURES = Path(__file__).parent / "fixtures" / "cpuinfo"
#: AT_HWCAP, AT_HWCAP2 that QEMU 7.2 user-mode gives an aarch64 process (LD_SHOW_AUXV=1 /bin/true in the
#: arm64-check root): cortex-a76 has FP16 arithmetic and dot product like Orin's A78AE, cortex-a72 neither
HWCAP_QEMU_A76 = (0x119FFB, 0x0)
HWCAP_QEMU_A72 = (0x8FB, 0x0)


def cpuinfo(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.mark.parametrize("fixture, cls, int8_fast", [
    ("jetson-agx-orin.txt", "arm-fp16", True),  # Cortex-A78AE: asimdhp + asimddp
    ("jetson-agx-xavier.txt", "arm-fp16", False),  # Carmel: asimdhp, no asimddp
    ("raspberry-pi-4.txt", "arm", False),  # Cortex-A72: neither
])
def test_arm_cpuinfo_features(fixture, cls, int8_fast):
    feats = read_cpu_features("aarch64", cpuinfo=cpuinfo(fixture))
    assert (feats.cpu_class, feats.int8_fast, feats.source) == (cls, int8_fast, "/proc/cpuinfo")


def test_a_feature_counts_only_where_every_core_has_it():
    """big.LITTLE: a thread can run on the core without it."""
    text = cpuinfo("jetson-agx-orin.txt") + "\n" + cpuinfo("raspberry-pi-4.txt")
    assert read_cpu_features("aarch64", cpuinfo=text).cpu_class == "arm"


def test_aarch64_under_qemu_ignores_the_x86_hosts_flags():
    """QEMU 7.2 shows an aarch64 process the host's /proc/cpuinfo: its x86 VNNI is not this CPU's."""
    host = cpuinfo("x86-icelake-server.txt")
    assert read_cpu_features("x86_64", cpuinfo=host).cpu_class == "x86-vnni"
    arm = read_cpu_features("aarch64", cpuinfo=host)
    assert (arm.int8_fast, arm.cpu_class, arm.source) == (False, "arm", "none")


@pytest.mark.parametrize("auxv, cls, int8_fast", [(HWCAP_QEMU_A76, "arm-fp16", True), (HWCAP_QEMU_A72, "arm", False)])
def test_aarch64_reads_the_auxiliary_vector_first(auxv, cls, int8_fast):
    """getauxval needs no /proc (the emulated root has none); it wins over whatever /proc/cpuinfo says."""
    feats = read_cpu_features("aarch64", cpuinfo=cpuinfo("raspberry-pi-4.txt"), auxv=auxv)
    assert (feats.cpu_class, feats.int8_fast, feats.source) == (cls, int8_fast, "getauxval(AT_HWCAP)")


def test_hwcap_bits_name_the_cpuinfo_features():
    """The bit table agrees with the kernel's names: Orin's Features line from its hwcap bits."""
    orin = read_cpu_features("aarch64", cpuinfo=cpuinfo("jetson-agx-orin.txt")).flags
    bits = sum(1 << b for n, b in sysinfo.ARM_HWCAP.items() if n in orin)
    assert sysinfo.hwcap_flags(bits) == orin & set(sysinfo.ARM_HWCAP)
    assert "i8mm" in sysinfo.hwcap_flags(0, 1 << 13) and sysinfo.CpuFeatures("aarch64", frozenset({"i8mm"}), "t").int8_fast


def test_nothing_readable_means_no_fast_path():
    feats = read_cpu_features("aarch64", cpuinfo="", auxv=(0, 0))
    assert (feats.int8_fast, feats.cpu_class, feats.source) == (False, "arm", "none")


# ------------------------------------------------------------------------------------------------
# A stubbed CPU class: artifact choice, recorded arithmetic, the FP16 up-cast
# ------------------------------------------------------------------------------------------------
def stub_cpu(monkeypatch, fixture: str) -> CpuFeatures:
    feats = read_cpu_features("aarch64", cpuinfo=cpuinfo(fixture))
    monkeypatch.setattr("edgecxr.runtime.sysinfo.cpu_features", lambda: feats)
    monkeypatch.setattr("edgecxr.runtime.select.cpu_int8_fast", lambda: feats.int8_fast)
    monkeypatch.setattr("edgecxr.runtime.select.cpu_class", lambda: feats.cpu_class)
    return feats


def gated_bundle(tmp_path, platform: dict | None = None, arithmetic: str | None = None):
    bundle = tinymodels.make_bundle(tmp_path / "b")
    bundle.meta["artifacts"].pop("onnx_fp32")  # like the shipped reference bundles: FP16 + INT8 only
    entry = {"passed": True, "by": "verify", **({"platform": platform} if platform else {}),
             **({"arithmetic": arithmetic} if arithmetic else {})}
    bundle.meta["gate"] = {"onnx_fp16": dict(entry), "onnx_int8": {"passed": True, "by": "verify"}}
    bundle.save()
    return bundle


@pytest.mark.parametrize("fixture, precision", [("jetson-agx-orin.txt", "int8"), ("jetson-agx-xavier.txt", "fp16"),
                                                ("raspberry-pi-4.txt", "fp16")])
def test_auto_picks_int8_where_the_cpu_has_a_dot_product(monkeypatch, tmp_path, fixture, precision):
    from edgecxr.runtime.select import choose_onnx

    stub_cpu(monkeypatch, fixture)
    assert choose_onnx(gated_bundle(tmp_path), None).precision == precision


def test_fp16_verdict_measured_with_fp32_arithmetic_does_not_cover_native_fp16(monkeypatch, tmp_path):
    """Xavier (FP16 arithmetic, no dot product) with native FP16 asked for: the x86 verdict does not hold;
    `auto` passes the FP16 file over and says why, and an explicit --precision fp16 says it is unverified."""
    from edgecxr.runtime.select import choose_onnx

    stub_cpu(monkeypatch, "jetson-agx-xavier.txt")
    bundle = gated_bundle(tmp_path)  # a verdict from before platforms were recorded: measured on x86
    assert choose_onnx(bundle, None).precision == "fp16"  # default: up-cast, the gated arithmetic
    monkeypatch.setenv(FP16_ARITHMETIC_ENV, "native")
    choice = choose_onnx(bundle, None)
    assert choice.precision == "int8"
    assert "fp16 ONNX not verified for this CPU: gated with fp32 arithmetic (x86)" in choice.reason
    assert "not verified for this CPU" in choose_onnx(bundle, "fp16").reason
    # a verdict measured on such a CPU with its FP16 kernels holds there
    native = gated_bundle(tmp_path / "n", platform={"cpu_class": "arm-fp16", "fp16": "native"}, arithmetic="fp16")
    assert choose_onnx(native, None).precision == "fp16"


def test_arithmetic_names(monkeypatch):
    assert onnx_arithmetic("fp16", "x86") == onnx_arithmetic("fp16", "arm") == "fp32"
    assert onnx_arithmetic("fp16", "arm-fp16") == "fp32"  # up-cast at load by default
    assert onnx_arithmetic("int8", "arm-fp16") == "int8-exact"
    monkeypatch.setenv(FP16_ARITHMETIC_ENV, "native")
    assert onnx_arithmetic("fp16", "arm-fp16") == "fp16" and onnx_arithmetic("fp16", "x86-vnni") == "fp32"
    assert verdict_arithmetic({"passed": True}, "fp16") == "fp32"


def test_gate_records_the_platform_and_arithmetic(monkeypatch, tmp_path):
    from edgecxr.stages.gate import report

    stub_cpu(monkeypatch, "jetson-agx-orin.txt")
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)

    class Result:  # the two things record_verdicts reads of a VerifyResult
        reference = "onnx_fp32"

        def summary(self):
            return {"artifacts": {"onnx_fp16": {"passed": True}, "onnx_fp32": {}}, "time": "t", "split": "test",
                    "n": 1, "manifest_sha256": "0", "reference": "onnx_fp32", "gates": {}}

    report.record_verdicts(bundle, Result(), by="verify")
    entry = bundle.gate_verdicts()["onnx_fp16"]
    assert entry["platform"]["cpu_class"] == "arm-fp16" and entry["platform"]["onnxruntime"]
    assert entry["arithmetic"] == "fp32"


def test_fp16_file_runs_with_fp32_arithmetic_on_an_arm_fp16_cpu(monkeypatch, tmp_path):
    """The up-cast model computes in FP32 on the FP16-rounded weights: equal to that computation in float64
    within FP32 rounding, where the FP16 file run as written (x86: FP32 kernels between casts) also rounds
    its input and activations to FP16 (about 1e-4 here; 2-4e-4 on the reference models' examples)."""
    from edgecxr.runtime.onnxrt import OnnxRuntimeRunner

    path = tinymodels.make_onnx(tmp_path / "m.fp16.onnx", fp16=True)
    rng = np.random.default_rng(1)
    batch = rng.uniform(-1, 1, (4, *tinymodels.SPEC.input_shape)).astype(np.float32)
    w, b = tinymodels.weights()
    x = batch.astype(np.float64).reshape(4, -1)
    logits = x @ w.astype(np.float16).astype(np.float64) + b.astype(np.float16).astype(np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    exact = e / e.sum(1, keepdims=True)

    with OnnxRuntimeRunner(path) as native:
        p_native = native.infer(batch)
        assert "arithmetic" not in native.describe()
    stub_cpu(monkeypatch, "jetson-agx-orin.txt")
    with OnnxRuntimeRunner(path) as up:
        p_up = up.infer(batch)
        assert up.describe()["arithmetic"].startswith("fp32: fp16 weights up-cast at load")
    assert np.abs(p_up - exact).max() < 2e-6
    assert np.abs(p_native - exact).max() > 1e-5  # FP16 activations: the difference the up-cast removes


def test_upcast_leaves_no_fp16_tensor(tmp_path):
    import onnx
    from onnx import TensorProto

    model = upcast_fp16(onnx.load(str(tinymodels.make_onnx(tmp_path / "m.onnx", fp16=True))))
    onnx.checker.check_model(model)
    assert all(t.data_type != TensorProto.FLOAT16 for t in model.graph.initializer)
    assert all(a.i != TensorProto.FLOAT16 for n in model.graph.node if n.op_type == "Cast" for a in n.attribute)
