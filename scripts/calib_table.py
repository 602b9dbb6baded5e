#!/usr/bin/env python3
"""Markdown table of calibration variants: BUNDLE/calib-compare/*.json (from scripts/pipeline.sh).

Usage: python scripts/calib_table.py runs/coronet
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(name: str, art: dict, ref: dict, size_mb: float | None) -> str:
    m, a = art["metrics"], art.get("agreement") or {}
    covid = m.get("covid_vs_rest", {}).get("sensitivity")
    ref_acc = ref["metrics"]["accuracy"]
    return (
        f"| {name} | {m['accuracy']:.1%} | {100 * (m['accuracy'] - ref_acc):+.1f} pp | "
        f"{covid:.1%} | {m.get('macro_auc', float('nan')):.3f} | {a.get('top1_agreement', 1.0):.1%} | "
        f"{a.get('max_abs_diff', 0.0):.3f} | {'' if size_mb is None else f'{size_mb:.1f} MB'} | "
        f"{'pass' if art.get('passed') else 'FAIL'} |"
    )


def main(bundle: str) -> None:
    folder = Path(bundle) / "calib-compare"
    print("| INT8 variant | accuracy | vs FP32 | COVID sensitivity | macro AUC | top-1 agreement | max abs Δp | size | gate |")
    print("|---|---|---|---|---|---|---|---|---|")
    ref_printed = False
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        arts = data["artifacts"]
        ref = next(a for a in arts.values() if a.get("reference"))
        if not ref_printed:
            m = ref["metrics"]
            print(f"| FP32 reference ({ref['key']}) | {m['accuracy']:.1%} | | {m['covid_vs_rest']['sensitivity']:.1%} | "
                  f"{m['macro_auc']:.3f} | | | | |")
            ref_printed = True
        onnx = path.with_suffix(".int8.onnx")
        size = onnx.stat().st_size / 1e6 if onnx.is_file() else None
        print(row(path.stem, arts["onnx_int8"], ref, size))


if __name__ == "__main__":
    main(sys.argv[1])
