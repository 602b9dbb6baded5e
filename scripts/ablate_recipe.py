"""Recipe ablation on `val` with a cheap proxy: the tiny-base CoroNet at 96x96 (the demo's model).

Each row is one training run from the same seed that changes one thing against the full
from-scratch recipe (or is the paper recipe). Model selection and every number use `val` only;
`test` is never read. Results: one JSON line per run in OUT (appended, so the script resumes).

    python scripts/ablate_recipe.py ../shared/data/cxr/manifest.csv runs/ablation.jsonl
"""

from __future__ import annotations

import io
import json
import sys
import tempfile
import time
from pathlib import Path

from edgecxr.stages.train.config import TrainConfig
from edgecxr.stages.train.run import train

EPOCHS = 20
BASE = {"model": "coronet", "tiny": True, "input_size": 96, "epochs": EPOCHS, "seed": 0, "bn_recalibration": 200}
ROWS: dict[str, dict] = {
    "paper recipe (Adam 1e-4, no aug, batch 10)": {"recipe": "paper", "patience": 0},
    "scratch recipe (all)": {"recipe": "scratch", "patience": 0},
    "- augmentation": {"recipe": "scratch", "augment": "none", "patience": 0},
    "aug: paper (geometric only)": {"recipe": "scratch", "augment": "paper", "patience": 0},
    "- label smoothing": {"recipe": "scratch", "label_smoothing": 0.0, "patience": 0},
    "- warm-up/cosine (constant lr)": {"recipe": "scratch", "schedule": "constant", "warmup_epochs": 0, "patience": 0},
    "- AdamW (Adam, no decay)": {"recipe": "scratch", "optimizer": "adam", "weight_decay": 0.0, "patience": 0},
    "- class weights": {"recipe": "scratch", "class_weights": False, "patience": 0},
    "lr 3e-4": {"recipe": "scratch", "lr": 3e-4, "patience": 0},
    "+ extended manifest": {"recipe": "scratch", "patience": 0, "data": "extended"},
}


def main(manifest: str, out: str, only: list[str]) -> None:
    done = set()
    if Path(out).is_file():
        done = {json.loads(line)["row"] for line in Path(out).read_text().splitlines() if line.strip()}
    for row, opts in ROWS.items():
        if row in done or (only and not any(o in row for o in only)):
            continue
        opts = dict(opts)
        data = manifest
        if opts.pop("data", None) == "extended":
            data = str(Path(manifest).with_name("manifest-extended.csv"))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            log = io.StringIO()
            summary = train(TrainConfig(data=data, out=tmp + "/run", **BASE, **opts), log=log)
            meta = json.loads(Path(tmp, "run", "bundle.json").read_text())
        val = meta["metrics"]["val"]
        result = {"row": row, "options": opts, "data": Path(data).name, "seconds": round(time.perf_counter() - t0, 1),
                  "best_epoch": summary["best_epoch"], "val_loss_best": summary["best_val_loss"],
                  "val_accuracy": val["accuracy"], "val_macro_auc": val.get("macro_auc"),
                  "val_covid_sensitivity": val["per_class"]["covid"]["recall"]}
        with open(out, "a") as fh:
            fh.write(json.dumps(result) + "\n")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
