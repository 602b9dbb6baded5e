#!/usr/bin/env python3
"""Markdown tables from `edgecxr bench --artifact ... --out FILE` JSON (for docs/BENCHMARKS.md).

Usage: python scripts/bench_table.py runs/coronet/bench.json
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    d = json.load(open(path))
    print(f"`{path}` ({d.get('timestamp', '')}):\n")
    print("| artifact | batch | median ms | p90 ms | p99 ms | CV | images/s | speedup vs " + d["comparison"][0]["reference"] + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ratios = {(c["name"], c["batch"]): c for c in d["comparison"]}
    for e in d["entries"]:
        for r in e.get("results", []):
            lat = r["latency_ms"]
            c = ratios[(e["name"], r["batch"])]
            print(f"| {e['name']} | {r['batch']} | {lat['median']:.1f} | {lat['p90']:.1f} | "
                  f"{lat['p99']:.1f} | {lat['coefficient_of_variance_pct']:.1f}% | "
                  f"{r['throughput_images_per_s']:.1f} | {c['speedup']:.2f}x |")
    print()
    print("| artifact | decode | decoded at | decode ms | preprocess ms | inference ms | end to end ms | preprocess share | decode+preprocess share |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for e in d["entries"]:
        for key in ("end_to_end", "end_to_end_full_decode"):
            x = e.get(key)
            if not x:
                continue
            dec, pre, inf, tot = (x[k]["median"] for k in ("decode_ms", "preprocess_ms", "infer_ms", "end_to_end_ms"))
            print(f"| {e['name']} | {x['decode']} | {x['decoded_size'][0]}x{x['decoded_size'][1]} | {dec:.1f} | {pre:.1f} | "
                  f"{inf:.1f} | {tot:.1f} | {pre / tot:.0%} | {(dec + pre) / tot:.0%} |")


if __name__ == "__main__":
    main(sys.argv[1])
