"""qat."""

from __future__ import annotations

from pathlib import Path

import click

from edgecxr.cli.options import _MANIFEST, _gates, _load_bundle, _split_list, bundle_for, model_option
from edgecxr.cli.output import _err
from edgecxr.cli.stagelog import StageLog
from edgecxr.core.lock import bundle_lock


@click.command("qat")
@model_option("Bundle with a trained Keras model (model.keras), e.g. from `edgecxr train`")
@click.option("--data", "manifest", required=True, type=_MANIFEST, help="Manifest CSV with train, calib, val and test splits.")
@click.option("--epochs", type=click.IntRange(min=1), default=2, show_default=True, help="Fine-tuning epochs on train.")
@click.option("--lr", "learning_rate", type=click.FloatRange(0, min_open=True), default=1e-6, show_default=True,
              help="Adam learning rate (small: the weights only need to settle on the int8 grid).")
@click.option("--target", type=click.Choice(["teacher", "labels"]), default="teacher", show_default=True,
              help="teacher: match the trained model's probabilities (distillation); labels: the training labels.")
@click.option("--augment", type=click.Choice(["none", "paper", "cxr"]), default=None,
              help="Augmentation while fine-tuning  [default: the bundle's training recipe]")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True,
              help="Calibration of the activation ranges of each epoch's model.")
@click.option("--keep-float", default="", help="Nodes to leave in float, as for `edgecxr calibrate` (e.g. those --fallback auto chose).")
@click.option("--gates", "gates_file", type=_MANIFEST, default=None, help="TOML file of gate thresholds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--verbose", "-v", is_flag=True, help="Every step of each epoch's calibration, not one status line.")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration record (with the per-epoch QAT scores) as JSON.")
def qat(model: str | None, manifest: Path, epochs: int, learning_rate: float, target: str, augment: str | None,
        batch_size: int, method: str, keep_float: str, gates_file: Path | None, seed: int, quiet: bool,
        verbose: bool, as_json: bool) -> None:
    """Quantization-aware fine-tuning: INT8 weights that learned the int8 grid, published through the gate.

    \b
    Fine-tunes the bundle's Keras model for a few epochs on `train` with fake-quantized weights
    (int8 per channel) and activations (int8 on the inputs of weighted layers), exports each epoch
    to ONNX, calibrates it on `calib` into the same TensorRT Q/DQ file `edgecxr calibrate` writes,
    and scores it on `val` against the trained model (epoch 0 = plain calibration). The best
    passing epoch is published as model.int8.onnx only after the gate on `test` (run once, against
    the trained model) passes; exit 3 otherwise. The fine-tuned weights stay in BUNDLE/qat/.
    Minutes for a small model, about an epoch of training time per epoch for a full one.

    \b
    Example:
      edgecxr qat -m runs/coronet --data ../shared/data/cxr/manifest.csv --epochs 2
    """
    from edgecxr.stages.export.qat import needs_keras, qat_bundle, summary_lines

    path = bundle_for(model, writes=True, before_copy=lambda ref: needs_keras(_load_bundle(ref)))
    log = StageLog(verbose=verbose)
    with bundle_lock(path, log=_err):
        section = qat_bundle(_load_bundle(path), manifest, epochs=epochs, learning_rate=learning_rate, target=target,
                             augment=augment, batch_size=batch_size, method=method, keep_float=_split_list(keep_float),
                             gates=_gates(gates_file), seed=seed, progress=not quiet, log=None if as_json else log)
    log.close()
    if as_json:
        import json

        click.echo(json.dumps(section, indent=2, sort_keys=True, default=str))
        return
    for line in summary_lines(section):
        click.echo(line)
    gate = section["gate"]["artifacts"]["onnx_int8"]
    click.echo(f"wrote {path / 'model.int8.onnx'}: gate on {section['gate']['split']} (n={section['gate']['n']}) passed; "
               f"accuracy {gate['accuracy']:.2%}, top-1 agreement {gate['top1_agreement']:.2%}")
