"""Which arithmetic an ONNX file gets on this CPU, and the FP16 up-cast that keeps it the gated one.

A gate verdict is measured with one runtime on one CPU. For FP32 and INT8 files ONNX Runtime's CPU
arithmetic is the same on every CPU class this project meets: FP32 is FP32, and INT8 sums are exact
32-bit sums (VNNI, Arm dotprod, or the exact-sums switch of `onnxrt.session_options` on x86 without
VNNI). FP16 is not: on x86, and on Arm without FP16 arithmetic (Cortex-A72, Raspberry Pi 4), ONNX
Runtime has no FP16 kernels and computes in FP32 between casts; on Arm with FP16 arithmetic
(`asimdhp`: Carmel, Cortex-A76/A78AE, Jetson Orin's CPU) onnxruntime >= 1.2x runs FP16 kernels, and
CoroNet FP16's top-1 probabilities moved by up to 0.044 from x86 (issue 27, onnxruntime 1.32, QEMU).

So the verdict records the arithmetic it was measured with (`onnx_arithmetic`), and on a CPU with
FP16 arithmetic the runtime loads an FP16 file up-cast to FP32 (`upcast_fp16`: FP16 weights become
FP32, FP16 casts become FP32 casts): the arithmetic the x86 verdict measured, on the same FP16-rounded
weights. $EDGECXR_FP16_ARITHMETIC=native runs it with FP16 arithmetic instead (faster on the device);
then `auto` treats an FP16 verdict measured with FP32 arithmetic as not covering this CPU
(docs/ARCHITECTURE.md "Which arithmetic a gate verdict holds for").
"""

from __future__ import annotations

import os
from typing import Any

#: "native" runs an FP16 file with the CPU's FP16 arithmetic where it has one; anything else (default
#: "fp32") up-casts it at load, as gated on x86
FP16_ARITHMETIC_ENV = "EDGECXR_FP16_ARITHMETIC"
#: arithmetic names a verdict records
FP32, FP16_NATIVE, INT8_EXACT = "fp32", "fp16", "int8-exact"


def native_fp16_requested() -> bool:
    return os.environ.get(FP16_ARITHMETIC_ENV, "").strip().lower() == "native"


def upcasts_fp16(cpu_class: str | None = None) -> bool:
    """Whether an FP16 ONNX file is up-cast to FP32 at load on this CPU (class `cpu_class`, default this one)."""
    if cpu_class is None:
        from edgecxr.runtime.sysinfo import cpu_class as here

        cpu_class = here()
    return cpu_class == "arm-fp16" and not native_fp16_requested()


def onnx_arithmetic(precision: str, cpu_class: str | None = None) -> str:
    """The arithmetic ONNX Runtime's CPU kernels give a `precision` file on CPU class `cpu_class` (default
    this CPU) under this process's FP16 policy: fp32, fp16 (native FP16 kernels) or int8-exact."""
    if cpu_class is None:
        from edgecxr.runtime.sysinfo import cpu_class as here

        cpu_class = here()
    if precision == "int8":
        return INT8_EXACT
    if precision == "fp16" and cpu_class == "arm-fp16" and not upcasts_fp16(cpu_class):
        return FP16_NATIVE
    return FP32


def verdict_arithmetic(entry: dict[str, Any], precision: str) -> str:
    """The arithmetic a gate verdict was measured with: its recorded one, else (a verdict from before it
    was recorded, all measured on x86) what its CPU class gives, x86 when unrecorded."""
    recorded = entry.get("arithmetic")
    if isinstance(recorded, str) and recorded:
        return recorded
    platform = entry.get("platform") if isinstance(entry.get("platform"), dict) else {}
    cls = platform.get("cpu_class") or "x86"
    if precision == "int8":
        return INT8_EXACT
    return FP16_NATIVE if precision == "fp16" and cls == "arm-fp16" and platform.get("fp16") == "native" else FP32


def gate_platform() -> dict[str, Any]:
    """What a gate verdict records about where it was measured (Bundle.record_gate's run fields)."""
    import platform as _platform

    from edgecxr.runtime.sysinfo import cpu_features, onnxruntime_info

    feats = cpu_features()
    return {"onnxruntime": onnxruntime_info().get("version"), "machine": _platform.machine(),
            "cpu_class": feats.cpu_class, "fp16": "native" if native_fp16_requested() else "fp32"}


def upcast_fp16(model: Any) -> Any:
    """`model` (an onnx ModelProto, changed in place and returned) with every FP16 tensor made FP32.

    FP16 initializers and Constant values become FP32 (exactly: every FP16 value is an FP32 value),
    Cast-to-FP16 nodes cast to FP32, and FP16 graph inputs, outputs and value_info become FP32, in
    the main graph and in subgraphs. What is left computes in FP32 on the FP16 file's weights, as
    ONNX Runtime does on a CPU without FP16 kernels (it inserts the casts there itself).
    """
    import numpy as np
    from onnx import AttributeProto, TensorProto, numpy_helper

    def tensor(t: Any) -> None:  # in place: copying the proto of a 68 MB model costs seconds
        if t.data_type != TensorProto.FLOAT16:
            return
        raw = np.frombuffer(t.raw_data, dtype="<f2") if t.raw_data else numpy_helper.to_array(t)
        values = raw.astype(np.float32)
        t.ClearField("int32_data")
        t.data_type = TensorProto.FLOAT
        t.raw_data = values.astype("<f4").tobytes()

    def value_infos(g: Any) -> None:
        for vi in (*g.input, *g.output, *g.value_info):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tt.elem_type == TensorProto.FLOAT16:
                tt.elem_type = TensorProto.FLOAT

    def graph(g: Any) -> None:
        for t in g.initializer:
            tensor(t)
        value_infos(g)
        for node in g.node:
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                    attr.i = TensorProto.FLOAT
                elif attr.type == AttributeProto.TENSOR:
                    tensor(attr.t)
                elif attr.type == AttributeProto.GRAPH:
                    graph(attr.g)
                elif attr.type == AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        graph(sub)

    graph(model.graph)
    return model


def has_fp16(model: Any) -> bool:
    """Whether `model` holds FP16 weights (an FP16 export, not a Q/DQ INT8 or FP32 file)."""
    from onnx import TensorProto

    return any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
