"""`edgecxr confidence`: fit the probability calibrator and out-of-distribution abstention for a bundle.

Thin (STYLE.md 1): parses options, takes the bundle lock, calls
`edgecxr.stages.confidence.run.fit_confidence`, prints the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecxr.cli.options import _MANIFEST, allow_outside_option, bundle_for, model_option
from edgecxr.cli.output import _err
from edgecxr.core.lock import bundle_lock


@click.command("confidence")
@model_option("Bundle to fit (a shipped model is copied to the models folder first)")
@click.option("--data", "manifest", required=True, type=_MANIFEST,
              help="Manifest CSV whose val (+ calib) split fits the calibrator, and whose val split sets the OOD "
                   "threshold.")
@click.option("--train-data", "train_manifest", type=_MANIFEST, default=None,
              help="Manifest whose train split the OOD statistics come from  [default: --data]; use the one the "
                   "model was trained on (bundle.json dataset.manifest).")
@click.option("--per-kind", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Generated images per kind in the built-in OOD set.")
@click.option("--calibrator", type=click.Choice(["auto", "temperature", "vector", "dirichlet", "none"]), default="auto",
              show_default=True, help="Probability calibrator; auto: the kind with the lowest 5-fold cross-validated "
                                      "ECE on val + calib (none if nothing beats the raw probabilities).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@allow_outside_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def confidence(model: str | None, manifest: Path, train_manifest: Path | None, per_kind: int, calibrator: str,
               batch_size: int, as_json: bool, quiet: bool) -> None:
    """Fit calibrated probabilities and OOD abstention, on train and val only (never test).

    \b
    1. adds a 'features' output (the penultimate layer) to every ONNX artifact lacking it, so that
       ONNX Runtime and TensorRT engines built from it return the features with the probabilities;
    2. fits the probability calibrator on val + calib (NLL): none, temperature, vector or
       Dirichlet scaling, chosen by cross-validated ECE unless --calibrator names one; the label
       is the calibrated argmax (a vector or Dirichlet fit can move it);
    3. fits the OOD score on train features, picks Mahalanobis / energy / max-softmax by AUROC of
       val against a built-in OOD set (CT/MR/US/NM DICOMs, noise, blanks, text, photos, inverted
       and rotated X-rays), and sets its threshold per precision at the split-conformal rank of
       val (at least 99% of val passes).
    Records everything in bundle.json "confidence" and confidence.npz; `infer` then reports
    calibrated probabilities and ABSTAINS on images unlike the training data.

    \b
    Example:
      edgecxr confidence -m runs/coronet --data ../shared/data/cxr/manifest.csv \\
          --train-data ../shared/data/cxr/manifest-extended.csv
    """
    from edgecxr.stages.confidence.run import fit_confidence

    path = bundle_for(model, writes=True)
    with bundle_lock(path, log=_err):
        report = fit_confidence(path, manifest, train_manifest, batch_size=batch_size, per_kind=per_kind,
                                progress=not quiet, calibrator=calibrator)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=float))
        return
    click.echo(format_report(report))


def format_report(report: dict) -> str:
    sec = report["section"]
    t, ood = sec["calibrator"], sec["ood"]
    cv = ", ".join(f"{k} {row['cv_ece']:.3f}" for k, row in t["cv"]["table"].items())
    lines = [
        f"bundle: {report['bundle']}",
        f"calibrator CV ECE ({' + '.join(t['fitted_on'])}, {t['n']} images): {cv}  -> {t['kind']}"
        + ("" if t["kind"] == t["cv"]["choice"] else " (--calibrator)"),
        f"{t['kind']} on the pool: ECE {t['ece_before']:.3f} -> {t['ece_after']:.3f}, "
        f"NLL {t['nll_before']:.3f} -> {t['nll_after']:.3f} (label: the raw argmax)",
        "OOD score AUROC, val vs the OOD set: " + ", ".join(f"{k} {v:.3f}" for k, v in ood["auroc_val_vs_ood"].items())
        + f"  -> {ood['method']}",
        "thresholds (~99% of val passes): " + ", ".join(f"{k} {v:.4g}" for k, v in ood["thresholds"].items())
        + "  | val pass rate: " + ", ".join(f"{k} {v:.1%}" for k, v in report["val_pass_rate"].items()),
        "",
        f"{'kind':<10} {'n':>3}  {'AUROC':>6}  {'abstained':>9}  {'rejected':>8}  {'caught':>6}",
    ]
    for kind, row in report["per_kind"].items():
        lines.append(f"{kind:<10} {row['n']:>3}  {row['auroc']:>6.3f}  {row['abstained']:>9.0%}  "
                     f"{row['rejected_by_input_checks']:>8.0%}  {row['caught']:>6.0%}")
    return "\n".join(lines)
