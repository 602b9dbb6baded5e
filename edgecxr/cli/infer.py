"""infer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgecxr.cli.options import FIX_ORIENTATION_HELP, input_rules, model_option
from edgecxr.cli.output import _err, _write_output, check_output, check_stdout
from edgecxr.core.artifacts import PRECISIONS
from edgecxr.data.io import expand_inputs
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.results import audit_footer, counts, predictions_csv, predictions_table, results_document
from edgecxr.runtime.select import BACKENDS


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@model_option()
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), help="Only this precision of a bundle.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Threads decoding ahead of the model  [default: one per CPU, at most 8; 0 or 1: one file after the other]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write a CSV file (atomically).")
@click.option("--top-k", type=click.IntRange(1), help="Show the k most likely classes.")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay CUDA graphs per batch size.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: for 16+ files on a terminal).")
@click.option("--allow-rejected", is_flag=True,
              help="Run a model file the accuracy gate rejected (*.rejected.*), with a warning on every run.")
@click.option("--no-input-checks", is_flag=True,
              help="Send every decodable input to the model, even noise, CT or lateral views (see docs/ARCHITECTURE.md).")
@click.option("--fix-orientation", is_flag=True, help=FIX_ORIENTATION_HELP)
@click.option("--heatmap", "heatmap_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write an occlusion heat map overlay per classified input to this folder (NAME.heatmap.png; "
                   "82 model runs per image).")
@click.option("--heatmap-class", help="Class the heat maps explain  [default: each input's predicted class]")
@click.option("--dicom-sr", "dicom_sr", type=click.Path(file_okay=False, path_type=Path),
              help="Write a DICOM Structured Report per DICOM input to this folder (UID.sr.dcm; docs/DICOM.md).")
@click.option("--dicom-sc", "dicom_sc", type=click.Path(file_okay=False, path_type=Path),
              help="Write the heat map of each classified DICOM input as a DICOM Secondary Capture to this folder "
                   "(UID.sc.dcm; docs/HEATMAPS.md).")
def infer(
    inputs: tuple[str, ...],
    model: str | None,
    backend: str,
    precision: str | None,
    batch_size: int,
    workers: int | None,
    as_json: bool,
    csv_path: Path | None,
    top_k: int | None,
    cuda_graph: bool,
    progress: bool | None,
    allow_rejected: bool,
    no_input_checks: bool,
    fix_orientation: bool,
    heatmap_dir: Path | None,
    heatmap_class: str | None,
    dicom_sr: Path | None,
    dicom_sc: Path | None,
) -> None:
    """Classify X-ray images: files, folders (recursive) and glob patterns; PNG, JPEG and DICOM.

    A file that cannot be read is reported with its reason and the others are still classified;
    an image that is plainly not a frontal chest X-ray (CT/MR DICOM, lateral view, noise, blank,
    colored) is REJECTED with its reason and not classified; one the model finds unlike its
    training data is ABSTAINED (label kept for inspection only). The exit code is 1 when any file
    failed (status "failed" and the reason: unreadable, not an image, a FIFO or device, a folder that
    cannot be read), was rejected or abstained (0 when every file was classified). Every output ends with
    its audit trail: model, artifact sha256, precision, backend, preprocessing, temperature, OOD
    threshold and edgecxr version; JSON and CSV add each input's sha256, DICOM UIDs and time. The backend used is printed to
    stderr. A missing path, a glob matching nothing or a folder without images stops the run.

    \b
    Examples:
      edgecxr infer scan.png                      (the reference CoroNet)
      edgecxr infer -m cnn-lstm scans/ --json
      edgecxr infer -m runs/coronet scan.dcm
      edgecxr infer -m runs/coronet 'scans/**/*.png' --json > predictions.json
      edgecxr infer -m runs/coronet/model.int8.onnx scans/ --csv predictions.csv --top-k 2
      edgecxr infer scans/ --heatmap heatmaps/    (where the model looked: docs/HEATMAPS.md)
      edgecxr infer scans/ --dicom-sr reports/    (DICOM SR per DICOM input: docs/DICOM.md)
    """
    from tqdm import tqdm

    from edgecxr.cli.dicom_output import check_dicom_sr_dir, write_dicom_srs
    from edgecxr.cli.heatmap_output import check_heatmap_class, check_heatmap_dir, write_heatmaps
    from edgecxr.cli.heatmap_output import summary as heatmap_summary

    if cuda_graph and backend in ("onnxruntime", "keras"):
        raise click.UsageError(f"--cuda-graph is for the tensorrt backend, not {backend}")
    if any(not item for item in inputs):  # Path("") is ".": it would classify the whole current folder
        raise click.BadParameter("an empty path ('') is not an input; give a file, a folder ('.' for this one) "
                                 "or a pattern", param_hint="INPUTS")
    check_stdout()  # the results go to stdout: a closed one would lose them and still exit 0
    paths = expand_inputs(inputs)
    check_output(csv_path, "--csv", inputs=paths)  # before the model loads: a refusal costs nothing
    check_heatmap_dir(heatmap_dir, paths, inputs)
    check_heatmap_dir(dicom_sc, paths, inputs, option="--dicom-sc")
    maps = heatmap_dir is not None or dicom_sc is not None
    check_dicom_sr_dir(dicom_sr, paths, inputs)
    rules = input_rules(no_input_checks, fix_orientation)
    options = {"cuda_graph": True} if cuda_graph else {}
    with Classifier.load(model, backend=backend, precision=precision, allow_rejected=allow_rejected,
                         input_rules=rules, **options) as clf:
        _err(f"using {clf.describe()}")
        check_heatmap_class(heatmap_class, clf.classes, wanted=maps)
        if no_input_checks:
            _err("warning: --no-input-checks: every decodable input is classified, even if it is not a chest X-ray")
        if "warning" in clf.backend_info:
            _err(f"warning: {clf.backend_info['warning']}")
        if cuda_graph and clf.backend_info["backend"] != "tensorrt":
            _err(f"warning: --cuda-graph ignored: it needs TensorRT and {clf.backend_info['backend']} was picked")
        show = progress if progress is not None else (len(paths) >= 16 and sys.stderr.isatty())
        preds = []
        with tqdm(total=len(paths), file=sys.stderr, disable=not show, unit="img") as bar:
            for chunk in clf.predict_iter(paths, batch_size=batch_size, workers=workers):
                preds.extend(chunk)
                bar.update(len(chunk))
        heatmaps, heatmaps_failed = write_heatmaps(
            clf, preds, paths, heatmap_dir, heatmap_class, batch_size, show, dicom_sc) if maps else ({}, 0)
        classes, info, audit = clf.classes, dict(clf.backend_info), clf.audit
    n = counts(preds)
    if as_json:
        doc = results_document(preds, audit, classes, backend=info, top_k=top_k)
        click.echo(json.dumps({**doc, "heatmaps": heatmaps} if maps else doc, indent=2))
    else:
        click.echo(predictions_table(preds, top_k))
        click.echo(audit_footer(audit))
    if csv_path is not None:  # after printing, so the results are not lost if the file cannot be written
        _write_output(csv_path, predictions_csv(preds, classes, audit), "--csv")
    _err(f"{n['classified']} of {n['count']} image(s) classified"
         + "".join(f", {n[k]} {k}" for k in ("rejected", "abstained", "failed") if n[k]))
    turned = sum(bool(p.orientation and "turned upright" in p.orientation) for p in preds)
    if turned:
        _err(f"{turned} film(s) turned upright before classification (--fix-orientation; each result's `orientation` says how)")
    if maps:
        _err(heatmap_summary(heatmaps, heatmaps_failed, heatmap_dir, dicom_sc))
    srs_failed = 0 if dicom_sr is None else write_dicom_srs(dicom_sr, preds, audit, classes)[1]
    if n["classified"] != n["count"] or heatmaps_failed or srs_failed:
        sys.exit(1)
