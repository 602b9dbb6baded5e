"""Test-time augmentation, measured on `val` only: does averaging a few fixed views of a film help the shipped model?

Issue 23 allows TTA only with its latency cost shipped too: N views cost N inferences per film. This
script answers the first question cheaply (inference only, seconds): the shipped model's FP16 ONNX
file on every `val` image, as is and under fixed small zooms, shifts and rotations (black fill, in
the model's own input units, like training's augmentation), each view alone and averaged in sets.
`test` is never read. Accuracy is the model's own argmax of the averaged probabilities.

    .venv/bin/python scripts/tta_val.py --out docs/results/tta-val.json
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgecxr.core.bundle import Bundle
from edgecxr.core.spec import PreprocessSpec
from edgecxr.data.manifest import read_manifest, select
from edgecxr.data.packed import load_training_arrays
from edgecxr.models import get as get_model
from edgecxr.runtime.onnxrt import session_options
from edgecxr.runtime.store import REFERENCE_DIR
from edgecxr.stages.train.augment import warp

#: view name -> (shift x, shift y as a fraction of the side, zoom, rotation degrees)
VIEWS = {"as is": (0, 0, 1.0, 0), "zoom 0.92": (0, 0, 0.92, 0), "zoom 1.08": (0, 0, 1.08, 0),
         "shift x +4%": (0.04, 0, 1.0, 0), "shift x -4%": (-0.04, 0, 1.0, 0),
         "rotate +5": (0, 0, 1.0, 5), "rotate -5": (0, 0, 1.0, -5)}
SETS = {"3 zooms": ["as is", "zoom 0.92", "zoom 1.08"], "3 shifts": ["as is", "shift x +4%", "shift x -4%"],
        "all 7": list(VIEWS)}


def view(x: np.ndarray, fill: float, dx: float, dy: float, zoom: float, rot: float) -> np.ndarray:
    """Every image of `x` (NxHxWxC) under one fixed view: training's own warp (black fill in every channel)."""
    h, w = x.shape[1:3]
    return np.stack([warp(im, rot, zoom, dx * w, dy * h, fill) for im in x])


def measure(name: str, manifest: Path) -> dict:
    import onnxruntime as ort

    bundle = Bundle.load(REFERENCE_DIR / name)
    spec = PreprocessSpec.from_dict(bundle.meta["preprocess"])
    classes = get_model(name).classes
    x, y = load_training_arrays(manifest, select(read_manifest(manifest), "val"), spec, classes)
    sess = ort.InferenceSession(str(bundle.artifact("onnx_fp16")), session_options(), providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name

    def probs(a: np.ndarray) -> np.ndarray:
        return np.concatenate([sess.run(None, {feed: a[i:i + 16].astype(np.float32)})[0] for i in range(0, len(a), 16)])

    p = {k: probs(view(x, spec.offset, *v)) for k, v in VIEWS.items()}
    covid = classes.index("covid")

    def score(q: np.ndarray) -> dict:
        pred = q.argmax(1)
        return {"accuracy": round(float((pred == y).mean()), 4),
                "covid_sensitivity": round(float((pred[y == covid] == covid).mean()), 4)}

    return {"model": name, "artifact": "onnx_fp16", "val_images": int(len(y)),
            "views": {k: score(q) for k, q in p.items()},
            "sets": {k: {"views": len(v), **score(np.mean([p[n] for n in v], axis=0))} for k, v in SETS.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/cxr/manifest.csv"))
    ap.add_argument("--models", nargs="+", default=["coronet", "cnn-lstm"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    result = {"measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "split": "val",
              "models": [measure(m, args.data) for m in args.models]}
    for m in result["models"]:
        base = m["views"]["as is"]["accuracy"]
        print(f"{m['model']}: as is {base:.1%}; " + "; ".join(
            f"{k} ({v['views']} views) {v['accuracy']:.1%} ({100 * (v['accuracy'] - base):+.1f} pp)" for k, v in m["sets"].items()))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
