"""What an occlusion heat map costs relative to one prediction: the numbers in docs/HEATMAPS.md.

For each model, on the backend `Classifier.load` picks (or --backend), with one real X-ray:

  * predict: one image through `Classifier.predict` (decode + preprocess + model, batch 1);
  * model_1: the model alone on that one preprocessed image (`runner.infer`, batch 1);
  * map_bB:  one occlusion map with batches of B masked copies (`runtime.heatmap.occlusion_map`:
    81 masked copies + the unmasked one = 82 model runs), for each B in --batch-sizes.

The rounds are interleaved (predict, model_1, every map, then again) so that load from other
processes on a shared machine hits all of them alike; medians over --repeats rounds, and the
ratios are taken within this one run. Prints a table, and JSON with --json.

    .venv/bin/python scripts/heatmap_cost.py --model coronet --model cnn-lstm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from edgecxr.core.spec import preprocess
from edgecxr.data.io import load_image
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.heatmap import OCCLUSION, occlusion_map

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "examples" / "images" / "normal" / "kermany_IM-0122-0001.png"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(model: str, image: Path, backend: str, batch_sizes: list[int], repeats: int) -> dict:
    with Classifier.load(model, backend=backend) as clf:
        spec = clf.spec
        tensor = preprocess(load_image(image, (spec.height, spec.width)), spec)
        one = tensor[None]
        windows = len(OCCLUSION.windows(spec.height, spec.width))
        clf.predict([image])  # warm-up: sessions, allocators, first-call costs
        occlusion_map(clf.runner.infer, tensor, None, spec, batch_size=max(batch_sizes))
        times: dict[str, list[float]] = {"predict": [], "model_1": [], **{f"map_b{b}": [] for b in batch_sizes}}
        for _ in range(repeats):
            times["predict"].append(_time(lambda: clf.predict([image], workers=0)))
            times["model_1"].append(_time(lambda: clf.runner.infer(one)))
            for b in batch_sizes:
                times[f"map_b{b}"].append(_time(lambda b=b: occlusion_map(clf.runner.infer, tensor, None, spec,
                                                                             batch_size=b)))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        return {
            "model": model,
            "backend": clf.backend_info["backend"],
            "precision": clf.backend_info["precision"],
            "artifact": Path(clf.backend_info["artifact"]).name,
            "input": spec.id,
            "model_runs_per_map": windows + 1,
            "median_ms": {k: round(v, 2) for k, v in med.items()},
            "map_over_predict": {f"b{b}": round(med[f"map_b{b}"] / med["predict"], 1) for b in batch_sizes},
            "map_over_model_1": {f"b{b}": round(med[f"map_b{b}"] / med["model_1"], 1) for b in batch_sizes},
        }


def format_result(r: dict, sizes: list[int]) -> str:
    ms = r["median_ms"]
    lines = [f"\n{r['model']} ({r['backend']} {r['precision']}, {r['input']}), {r['model_runs_per_map']} model runs per map",
             f"  predict (batch 1, decode+model): {ms['predict']:9.1f} ms",
             f"  model alone (batch 1):           {ms['model_1']:9.1f} ms"]
    for b in sizes:
        lines.append(f"  map, batches of {b:<3}:            {ms[f'map_b{b}']:9.1f} ms  = "
                     f"{r['map_over_predict'][f'b{b}']:5.1f} x predict, {r['map_over_model_1'][f'b{b}']:5.1f} x model alone")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="model name or bundle (repeatable; default coronet)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--image", type=Path, default=IMAGE)
    ap.add_argument("--batch-sizes", default="1,8,32", help="comma-separated masked copies per model call")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians over them)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu_name()}, {os.cpu_count()} CPU(s) visible",
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "command": "scripts/heatmap_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "occlusion": {"patch": OCCLUSION.patch, "stride": OCCLUSION.stride, "fill": OCCLUSION.fill},
        "image": str(args.image.relative_to(REPO) if args.image.is_relative_to(REPO) else args.image),
        "results": [],
    }
    if not args.json:
        print(f"{report['date']}  {report['machine']}  load {report['load_average_before']}", flush=True)
    for model in args.model or ["coronet"]:
        r = measure(model, args.image, args.backend, sizes, args.repeats)
        report["results"].append(r)
        if not args.json:  # each model as soon as it is measured: a slow one does not hide the others
            print(format_result(r, sizes), flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
