"""infer."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import click

from edgecxr.cli.options import model_option
from edgecxr.cli.output import _err, _write_output, check_output, printable
from edgecxr.core.artifacts import PRECISIONS
from edgecxr.data.io import expand_inputs
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.select import BACKENDS
from edgecxr.runtime.store import DEFAULT_MODEL


# ------------------------------------------------------------------------------------------------
# infer
# ------------------------------------------------------------------------------------------------
def predictions_csv(preds: list[Any], classes: list[str]) -> str:
    """CSV text: source, label, top1, one probability column per class, timings, error, status, reason.

    The source is the file name exactly as given (the csv module quotes one with a comma, quote
    or newline); `_write_output` writes a name that is not UTF-8 back as its own bytes.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    # csv quotes a field holding a newline but not one holding a lone carriage return (not in the
    # "\n" line terminator), which readers then take for a line break: quote such rows whole.
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    writer.writerow(["source", "label", "top1", *[f"p_{c}" for c in classes], "preprocess_ms", "inference_ms", "error",
                     "status", "reason"])
    for p in preds:
        probs = [f"{p.probabilities[c]:.6f}" if c in p.probabilities else "" for c in classes]
        top1 = "" if p.top1 is None else f"{p.top1:.6f}"
        row = [str(p.source), p.label or "", top1, *probs, f"{p.preprocess_ms:.3f}", f"{p.inference_ms:.3f}", p.error or "",
               p.status, p.reason or ""]
        (quoted if any("\r" in field for field in row) else writer).writerow(row)
    return buf.getvalue()


def predictions_table(preds: list[Any], top_k: int | None = None) -> str:
    """Aligned text table for people: source, label, probability (or the top-k), or the error.

    One line per image whatever its name: newlines, control characters and bytes that are not
    UTF-8 in a file name are escaped (`printable`); --csv and --json keep the exact name.
    """
    rows = []
    for p in preds:
        source = printable(p.source)
        if p.error is not None:
            rows.append((source, "ERROR", printable(p.error)))
        elif p.status != "ok":
            rows.append((source, p.status.upper(), printable(p.reason or "")))
        elif top_k:
            rows.append((source, printable(p.label or ""), "  ".join(f"{printable(c)} {v:.3f}" for c, v in p.top_k(top_k))))
        else:
            rows.append((source, printable(p.label or ""), f"{p.top1:.3f}"))
    header = ("source", "label", f"top-{top_k}" if top_k else "probability")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in [header, *rows])


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@model_option()
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), help="Only this precision of a bundle.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write a CSV file (atomically).")
@click.option("--top-k", type=click.IntRange(1), help="Show the k most likely classes.")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay CUDA graphs per batch size.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: for 16+ files on a terminal).")
@click.option("--allow-rejected", is_flag=True,
              help="Run a model file the accuracy gate rejected (*.rejected.*), with a warning on every run.")
@click.option("--no-input-checks", is_flag=True,
              help="Send every decodable input to the model, even noise, CT or lateral views (see docs/ARCHITECTURE.md).")
def infer(
    inputs: tuple[str, ...],
    model: str | None,
    backend: str,
    precision: str | None,
    batch_size: int,
    as_json: bool,
    csv_path: Path | None,
    top_k: int | None,
    cuda_graph: bool,
    progress: bool | None,
    allow_rejected: bool,
    no_input_checks: bool,
) -> None:
    """Classify X-ray images: files, folders (recursive) and glob patterns; PNG, JPEG and DICOM.

    A file that cannot be read is reported with its reason and the others are still classified;
    an image that is plainly not a frontal chest X-ray (CT/MR DICOM, lateral view, noise, blank,
    colored) is REJECTED with its reason and not classified. The exit code is 1 when any file
    failed or was rejected (0 when every file was classified). The backend used is printed to
    stderr. A missing path, a glob matching nothing or a folder without images stops the run.

    \b
    Examples:
      edgecxr infer scan.png                      (the reference CoroNet)
      edgecxr infer -m cnn-lstm scans/ --json
      edgecxr infer -m runs/coronet scan.dcm
      edgecxr infer -m runs/coronet 'scans/**/*.png' --json > predictions.json
      edgecxr infer -m runs/coronet/model.int8.onnx scans/ --csv predictions.csv --top-k 2
    """
    from tqdm import tqdm

    from edgecxr.runtime.input_checks import DEFAULT_RULES

    if cuda_graph and backend in ("onnxruntime", "keras"):
        raise click.UsageError(f"--cuda-graph is for the tensorrt backend, not {backend}")
    paths = expand_inputs(inputs)
    check_output(csv_path, "--csv", inputs=paths)  # before the model loads: a refusal costs nothing
    options = {"cuda_graph": True} if cuda_graph else {}
    with Classifier.load(model, backend=backend, precision=precision, allow_rejected=allow_rejected,
                         input_rules=None if no_input_checks else DEFAULT_RULES, **options) as clf:
        _err(f"using {clf.describe()}")
        if no_input_checks:
            _err("warning: --no-input-checks: every decodable input is classified, even if it is not a chest X-ray")
        if "warning" in clf.backend_info:
            _err(f"warning: {clf.backend_info['warning']}")
        if cuda_graph and clf.backend_info["backend"] != "tensorrt":
            _err(f"warning: --cuda-graph ignored: it needs TensorRT and {clf.backend_info['backend']} was picked")
        show = progress if progress is not None else (len(paths) >= 16 and sys.stderr.isatty())
        preds = []
        with tqdm(total=len(paths), file=sys.stderr, disable=not show, unit="img") as bar:
            for chunk in clf.predict_iter(paths, batch_size=batch_size):
                preds.extend(chunk)
                bar.update(len(chunk))
        classes, info = clf.classes, dict(clf.backend_info)
    failed = [p for p in preds if p.error is not None]
    rejected = [p for p in preds if p.error is None and p.status != "ok"]
    classified = len(preds) - len(failed) - len(rejected)
    if as_json:
        doc = {
            "model": model or DEFAULT_MODEL,
            "backend": info,
            "classes": classes,
            "count": len(preds),
            "failed": len(failed),
            "rejected": len(rejected),
            "predictions": [p.to_dict(top_k) for p in preds],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(predictions_table(preds, top_k))
    if csv_path is not None:  # after printing, so the results are not lost if the file cannot be written
        _write_output(csv_path, predictions_csv(preds, classes), "--csv")
    _err(f"{classified} of {len(preds)} image(s) classified" + (f", {len(rejected)} rejected" if rejected else "")
         + (f", {len(failed)} failed" if failed else ""))
    if failed or rejected:
        sys.exit(1)
