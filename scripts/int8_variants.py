"""Score hand-named float sets of an INT8 model on val, by the surgery the fallback search uses.

    python scripts/int8_variants.py runs/int8/cnn-lstm

Calibrates the bundle's FP32 ONNX once (MinMax on `calib`, as `calibrate` does), then prints the
top-1 agreement with FP32 on `val` of: the LSTM's input in float, the first quantized node plus
the LSTM's input, and every quantized node in float. Used for the CNN-LSTM rows of
docs/QUANTIZATION.md (there on the candidate of the `quantize_reference.py` run itself).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx

from edgecxr.core.bundle import Bundle
from edgecxr.data.dataset import load_split
from edgecxr.stages.export.int8 import quantize_qdq
from edgecxr.stages.export.sensitivity import Scorer, hybrid, quantized_nodes
from edgecxr.stages.gate.config import Gates

MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr" / "manifest.csv"


def main(bundle_dir: str) -> None:
    bundle = Bundle.load(bundle_dir)
    fp32_path = bundle.artifact("onnx_fp32")
    _, calib, _ = load_split(bundle, MANIFEST, "calib", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        qdq_path = Path(tmp) / "q.onnx"
        quantize_qdq(fp32_path, qdq_path, calib, progress=False)
        qdq = onnx.load(str(qdq_path))
    fp32 = onnx.load(str(fp32_path))
    _, x, y = load_split(bundle, MANIFEST, "val", progress=False)
    scorer = Scorer(fp32, x, y, bundle.classes, Gates())
    weighted = [n.name for n in quantized_nodes(qdq)]
    every = [n.name for n in quantized_nodes(qdq, weighted_only=False)]
    lstm = [n.name for n in qdq.graph.node if n.op_type == "LSTM"]
    print(f"{len(weighted)} weighted quantized nodes, {len(every)} quantized nodes in all")
    for name, floated in (("fully quantized", []), ("LSTM input in float", lstm),
                          ("first node + LSTM input in float", weighted[:1] + lstm), ("every node in float", every)):
        res = scorer.score(hybrid(qdq, fp32, floated) if floated else qdq)
        print(f"{name}: top-1 agreement {res.agreement['top1_agreement']:.2%}, gate {'passes' if res.passed else 'fails'}")


if __name__ == "__main__":
    main(sys.argv[1])
