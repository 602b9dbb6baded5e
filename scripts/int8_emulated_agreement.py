"""Agreement with FP32 on `val` of a Q/DQ model run with its Q/DQ as float ops (no integer kernels).

    python scripts/int8_emulated_agreement.py QDQ.onnx FP32.onnx [--data MANIFEST] [--bundle DIR]

ONNX Runtime with full optimisation (how edgecxr scores and runs INT8) fuses Q/DQ pairs into its
integer kernels; with ORT_DISABLE_ALL it runs QuantizeLinear/DequantizeLinear as written, in
float: the exact INT8 rounding and clipping the Q/DQ graph specifies, without the CPU kernels'
own arithmetic. A large gap between the two says the loss is the kernels', not INT8's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from edgecxr.core.bundle import Bundle
from edgecxr.data.dataset import load_split
from edgecxr.stages.export.sensitivity import _predict
from edgecxr.stages.metrics import agreement

REPO = Path(__file__).resolve().parents[1]


def _emulated(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + 16]})[0] for i in range(0, len(x), 16)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qdq")
    ap.add_argument("fp32")
    ap.add_argument("--bundle", default=str(REPO / "edgecxr" / "reference" / "cnn-lstm"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cxr" / "manifest.csv"))
    args = ap.parse_args()
    _, x, _ = load_split(Bundle.load(args.bundle), args.data, "val", progress=False)
    ref = _predict(onnx.load(args.fp32), x)
    q = onnx.load(args.qdq)
    t0 = time.perf_counter()
    print(f"integer kernels (ORT_ENABLE_ALL): agreement {agreement(ref, _predict(q, x))['top1_agreement']:.2%}")
    print(f"Q/DQ as float ops (ORT_DISABLE_ALL): agreement {agreement(ref, _emulated(q, x))['top1_agreement']:.2%}"
          f" ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
