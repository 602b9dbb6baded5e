"""What ONNX Runtime's exact int8 sums (`session.x64quantprecision=1`) cost on this CPU: the number
behind runtime/onnxrt.EXACT_INT8 and docs/QUANTIZATION.md.

    python scripts/int8_exact_sums_cost.py edgecxr/reference/coronet/model.int8.onnx

Times batch-1 inference of one ONNX file with the switch off and on, alternating three rounds of
20 runs each (5 warm-up runs per session), and prints the median of each round in ms. Where the CPU
has VNNI the sums are exact either way, so any difference is the switch's cost.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import onnxruntime as ort


def main() -> int:
    path = sys.argv[1]
    rounds: dict[str, list[float]] = {"0": [], "1": []}
    for _ in range(3):
        for flag in rounds:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.add_session_config_entry("session.x64quantprecision", flag)
            session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            inp = session.get_inputs()[0]
            x = np.random.default_rng(0).random((1, *inp.shape[1:]), dtype=np.float32)
            for _ in range(5):
                session.run(None, {inp.name: x})
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                session.run(None, {inp.name: x})
                times.append(time.perf_counter() - t0)
            rounds[flag].append(float(np.median(times)) * 1000)
    for flag, ms in rounds.items():
        print(f"x64quantprecision={flag}: batch-1 median per round " + ", ".join(f"{m:.2f}" for m in ms) + " ms")
    print(f"exact sums cost: {np.median(rounds['1']) / np.median(rounds['0']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
