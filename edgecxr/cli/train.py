"""`edgecxr train coronet|cnn-lstm`: parse options, call `edgecxr.train.train`, print the summary.

Options left unset take the recipe's value (`edgecxr.stages.train.recipes.PAPER_RECIPES` / `SCRATCH_RECIPES`), so
the commands stay short and the defaults live in one place. The recipe is `scratch` when the
initial weights are random and `paper` otherwise, unless `--recipe` says which.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgecxr.cli.options import allow_outside_option
from edgecxr.cli.output import _err
from edgecxr.core.lock import bundle_lock
from edgecxr.models import MODEL_NAMES
from edgecxr.stages.train.augment import POLICIES
from edgecxr.stages.train.recipes import OPTIMIZERS, PRECISIONS, RECIPES, SCHEDULES


@click.command("train")
@click.argument("model", type=click.Choice(MODEL_NAMES))
@click.option("--data", "data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Dataset manifest CSV (splits train/val are used; test and calib are never read), or a pack "
                   "of its train/val images (.npz, `python -m edgecxr.data.packed`; scripts/train_on_gpu.sh).")
@click.option("--out", "out", default=None, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, train.jsonl, then the bundle [$EDGECXR_RUNS/MODEL, "
                   "default ~/.cache/edgecxr/runs/MODEL]. The same command again resumes the run there.")
@click.option("--recipe", type=click.Choice(sorted(RECIPES, reverse=True)), default=None,
              help="Hyper-parameter set [scratch when --weights is none, else paper]. Options below override it.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Maximum epochs [scratch 40; paper: coronet 80, cnn-lstm 200].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Batch size [scratch 32; paper: coronet 10, cnn-lstm 16].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="(Peak) learning rate [scratch: coronet 1e-3, cnn-lstm 3e-4; paper 1e-4].")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None, help="[scratch adamw, paper adam]")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="AdamW decoupled weight decay [0.05].")
@click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
              help="Learning-rate schedule [scratch cosine, paper constant].")
@click.option("--warmup-epochs", type=click.IntRange(min=0), default=None, help="Linear warm-up epochs [scratch 2].")
@click.option("--label-smoothing", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="Label smoothing [scratch 0.1, paper 0].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Training precision [scratch auto: bf16 mixed precision on a GPU or a CPU with bf16 instructions]. "
                   "The saved model is float32 either way.")
@click.option("--input-size", type=click.IntRange(min=16, max=4096), default=None,
              help="Square input side [coronet 150, cnn-lstm 224; --tiny 32].")
@click.option("--weights", default=None, metavar="imagenet|none|reference|PATH",
              help="Initial weights [coronet imagenet (needs internet), cnn-lstm none]. "
                   "reference: go on from the shipped model (its FP16 ONNX, checked against ONNX Runtime; "
                   "CoroNet's BatchNorm frozen). PATH: an edgecxr-exported .onnx file, Xception no-top .h5 "
                   "for CoroNet, or a same-architecture weights file for the CNN-LSTM.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds weights, data order, augmentation, folds.")
@click.option("--patience", type=click.IntRange(min=0), default=None,
              help="Stop after N epochs without a lower val loss; 0 = off [scratch 12; paper: coronet 0, cnn-lstm 20].")
@click.option("--class-weights/--no-class-weights", default=None,
              help="Balanced class weights [scratch on; paper: coronet off, cnn-lstm on].")
@click.option("--augment", type=click.Choice(list(POLICIES)), default=None,
              help="Augmentation policy (edgecxr.augment) [scratch cxr; paper: coronet none, cnn-lstm paper].")
@click.option("--folds", type=click.IntRange(min=0), default=0, show_default=True,
              help="K >= 2: patient-group K-fold cross-validation over train+val instead of one model.")
@click.option("--limit-per-class", type=click.IntRange(min=1), default=None,
              help="Use at most N images per class and split (smoke tests).")
@click.option("--bn-recalibration", type=click.IntRange(min=0), default=200, show_default=True,
              help="Training images used to re-estimate BatchNorm statistics before each validation (0: off).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for the backend's kernels [all cores]; e.g. 1 each for two runs on 2 cores.")
@click.option("--tiny", is_flag=True, help="Test-only miniature of the architecture (32x32, seconds per epoch).")
@click.option("--ema", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0, show_default=True,
              help="Keep an exponential moving average of the weights with this momentum (e.g. 0.998; 0 = off); "
                   "validation, model selection and the saved model use it, the raw weights are scored beside it.")
@click.option("--keep", type=click.Choice(["all", "last", "best"]), default="all", show_default=True,
              help="Checkpoints left in OUT/checkpoints once the bundle is written: all (resume or extend later), "
                   "last (extend later), best (drops last.keras, ~540 MB for CoroNet).")
@click.option("--soft-labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Distil: a soft-label file for every training image (scripts/soft_labels.py; docs/REPRODUCTION.md).")
@click.option("--distill-alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="With --soft-labels: the teachers' weight in the training targets (the rest: the true label).")
@click.option("--mixup", type=click.FloatRange(0, 10), default=0.0, show_default=True,
              help="Mixup: blend each training batch with a shuffled copy of itself, images and targets, "
                   "lambda ~ Beta(A, A) (e.g. 0.2; 0 = off). A regulariser; validation is unchanged.")
@click.option("--resume/--no-resume", default=None,
              help="[default: resume by itself] --resume: continue the run in --out from its last saved epoch; "
                   "--no-resume: refuse a folder that already holds a run.")
@click.option("--json", "as_json", is_flag=True, help="Print the result summary as JSON on stdout.")
@allow_outside_option
def train(model: str, data: str, out: str | None, as_json: bool, **options: object) -> None:
    """Train MODEL on a manifest and write a model bundle (model.keras, bundle.json, history, figures).

    \b
    Runs are resumable: after every epoch the model, optimizer, schedule position and best-so-far are
    checkpointed in the run folder, and the same command line started again continues after the last
    saved epoch (it says so). Only the last and the best checkpoints are kept, and at the end
    --keep says which of them stay (it prints their size).

    \b
    Examples:
      edgecxr train coronet  --data data/manifest.csv --weights none      # -> ~/.cache/edgecxr/runs/coronet
      edgecxr train coronet  --data data/manifest.csv --out runs/coronet --weights none
      edgecxr train cnn-lstm --data data/manifest.csv --out runs/cnn-lstm
      edgecxr train coronet  --data data/manifest.csv --out runs/coronet-paper --recipe paper --weights none
      edgecxr train cnn-lstm --data data/manifest.csv --out runs/cnn-lstm-cv --folds 5
    """
    from edgecxr.stages.train.config import TrainConfig, default_run_dir
    from edgecxr.stages.train.run import train as run_training

    if out is None:
        out = str(default_run_dir(model))

    weights = options.get("weights")
    if options.get("tiny") and weights is not None and str(weights).lower() != "none":
        raise click.UsageError("--tiny models have no pretrained weights; drop --weights or pass --weights none")
    cfg = TrainConfig(model=model, data=data, out=out, **options)  # type: ignore[arg-type]
    verbose = 1  # progress inside each epoch on stderr: a live line on a terminal, else a line per tenth
    Path(out).mkdir(parents=True, exist_ok=True)
    with bundle_lock(out, log=_err):  # a second `train --out` (or an export) on the same folder waits
        summary = run_training(cfg, log=sys.stderr, verbose=verbose)
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
