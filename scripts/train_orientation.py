"""Train the orientation gate and write it where the package ships it (edgecxr/reference/orientation/).

    .venv/bin/python scripts/train_orientation.py --data ../shared/data/cxr/manifest-extended.csv

Trains on `train`, chooses the epoch and the threshold on `val`, reports `test` in gate.json
(edgecxr/stages/orientation/train.py says what is chosen where). A few minutes on 2 CPU cores;
the decoded films are cached under ~/.cache/edgecxr/orientation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command()
@click.option("--data", "manifest", type=click.Path(exists=True, dir_okay=False), required=True,
              help="manifest CSV with train / val / test splits of upright frontal films")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="folder for gate.onnx and gate.json (default: the shipped edgecxr/reference/orientation)")
@click.option("--size", type=click.IntRange(32, 128), default=64, show_default=True, help="gate input side (px)")
@click.option("--epochs", type=click.IntRange(1), default=12, show_default=True)
@click.option("--steps", type=click.IntRange(1), default=200, show_default=True, help="batches of 128 per epoch")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=2, show_default=True, help="TensorFlow CPU threads")
def main(manifest: str, out_dir: str | None, size: int, epochs: int, steps: int, seed: int, threads: int) -> None:
    from edgecxr.runtime.orientation import GATE_DIR
    from edgecxr.stages.orientation.train import REPORT_KINDS, run

    meta = run(manifest, Path(out_dir) if out_dir else GATE_DIR, size=size, epochs=epochs, steps=steps,
               seed=seed, threads=threads)
    summary = {split: {"upright_not_answered": meta[split]["upright_not_answered"],
                       **{REPORT_KINDS[k]: v for k, v in meta[split]["caught"].items()},
                       "any non-upright": meta[split]["caught_all_non_upright"]} for split in ("val", "test")}
    json.dump({"threshold": meta["threshold"], "mirror_invariant": meta["mirror_invariant"],
               "left_right_val_accuracy": meta["left_right_val_accuracy"], "bytes": meta["bytes"], **summary},
              sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
