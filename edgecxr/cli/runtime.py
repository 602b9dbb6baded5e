"""`edgecxr build | infer | bench | info`: thin Click wrappers over engine.py, Classifier, bench.py, sysinfo.

Nothing here imports TensorFlow or TensorRT; the library functions import what the chosen backend
needs. Library errors propagate to the group, which prints one line and exits with their code.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from edgecxr.errors import EdgeCXRError
from edgecxr.fileutil import atomic_write_text
from edgecxr.registry import DEFAULT_MODEL


def _err(msg: str) -> None:
    click.echo(msg, err=True)


def _check_output(path: Path | None, option: str) -> None:
    """Fail before the work, not after it, when an output file cannot be created where asked."""
    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # atomic_write creates missing folders below the first existing one
    if not folder.is_dir():
        raise click.BadParameter(f"{path}: {folder} is a file, not a folder", param_hint=option)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{path}: no permission to write in {folder}", param_hint=option)


def _write_output(path: Path, text: str, option: str) -> None:
    """Atomically write an output file; an OS failure becomes one `error:` line (exit 1)."""
    from edgecxr.cli import os_error_message

    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise EdgeCXRError(f"{path}: could not write the {option} file: {os_error_message(exc)}") from None


# ------------------------------------------------------------------------------------------------
# build
# ------------------------------------------------------------------------------------------------
@click.command()
@click.argument("bundle", required=False, default=None)
@click.option("--precision", type=click.Choice(["fp16", "int8"]), help="Engine precision (default: the profile's, else fp16).")
@click.option("--profile", help="Build profile: a TOML path or a shipped profile name: rtx-ampere, gtx16xx-turing, jetson-orin.")
@click.option("--batch", help="Batch range: N, MIN-MAX or MIN-OPT-MAX (e.g. 1-8).")
@click.option("--min-batch", type=click.IntRange(1), help="Smallest batch the engine accepts.")
@click.option("--opt-batch", type=click.IntRange(1), help="Batch TensorRT tunes kernels for.")
@click.option("--max-batch", type=click.IntRange(1), help="Largest batch the engine accepts.")
@click.option("--workspace-mb", type=click.IntRange(16), help="Builder workspace memory limit.")
@click.option("--timing-cache", help="Timing cache file ('' to disable); {gpu} and {trt} are expanded.")
@click.option("--dla-core", type=int, help="Build for this DLA core (Jetson); -1 for the GPU.")
@click.option("--no-verify", is_flag=True, help="Skip the accuracy gate on the new engine.")
@click.option("--data", "manifest", type=click.Path(dir_okay=False, path_type=Path), help="Manifest for the gate (default: the bundle's).")
@click.option("--split", default="test", show_default=True, help="Split the gate runs on.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Engine path (default: BUNDLE/engines/<model>-<precision>-<gpu>-trt<ver>.engine).")
def build(
    bundle: str | None,
    precision: str | None,
    profile: str | None,
    batch: str | None,
    min_batch: int | None,
    opt_batch: int | None,
    max_batch: int | None,
    workspace_mb: int | None,
    timing_cache: str | None,
    dla_core: int | None,
    no_verify: bool,
    manifest: Path | None,
    split: str,
    out: Path | None,
) -> None:
    """Build a TensorRT engine for this GPU from BUNDLE's FP16 or INT8 ONNX (default: the reference coronet).

    BUNDLE is a model name (see `edgecxr models`) or a bundle directory. For a reference model the
    engine goes into a writable copy in the models folder, which `--model NAME` then uses.
    Needs TensorRT and an NVIDIA GPU (exit code 2 without them). Writes the engine and its
    .engine.json sidecar (TensorRT version, GPU, precision, hashes, profile), records it in
    bundle.json and runs the accuracy gate on it (exit 3 if it fails) unless --no-verify.

    \b
    Examples:
      edgecxr build --precision int8
      edgecxr build runs/coronet --precision int8 --profile rtx-ampere --batch 1-8
    """
    from edgecxr import registry
    from edgecxr.engine import build_engine, current_platform, load_profile, resolve_profile

    if batch is not None and any(v is not None for v in (min_batch, opt_batch, max_batch)):
        raise click.UsageError("give either --batch or --min-batch/--opt-batch/--max-batch, not both")
    _check_output(out, "--out")

    base = load_profile(profile) if profile else None
    if base is not None and base.description:
        _err(f"profile {base.name}: {base.description}")
    settings = resolve_profile(
        base,
        precision=precision,
        batch=batch,
        min_batch=min_batch,
        opt_batch=opt_batch,
        max_batch=max_batch,
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
        dla_core=dla_core,
    )
    path = registry.resolve(bundle)
    if registry.is_reference(path):
        current_platform()  # no TensorRT or GPU: refuse (exit 2) before copying anything
        from edgecxr.bundle import Bundle
        from edgecxr.engine import ONNX_ARTIFACT

        if Bundle.load(path).artifact(ONNX_ARTIFACT[settings.precision], must_exist=False) is None:
            raise EdgeCXRError(f"the reference model {path.name} ships no {settings.precision} ONNX that passed the "
                               "accuracy gate; see `edgecxr models` for its precisions")
        path = registry.writable(path)
        _err(f"building into {path} (a writable copy of the reference model {path.name})")
    result = build_engine(path, settings, out=out, verify=not no_verify, manifest=manifest, split=split, log=_err)
    click.echo(str(result.engine))


# ------------------------------------------------------------------------------------------------
# infer
# ------------------------------------------------------------------------------------------------
def predictions_csv(preds: list[Any], classes: list[str]) -> str:
    """CSV text: source, label, top1, one probability column per class, timings, error."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["source", "label", "top1", *[f"p_{c}" for c in classes], "preprocess_ms", "inference_ms", "error"])
    for p in preds:
        probs = [f"{p.probabilities[c]:.6f}" if c in p.probabilities else "" for c in classes]
        top1 = "" if p.top1 is None else f"{p.top1:.6f}"
        writer.writerow(
            [p.source, p.label or "", top1, *probs, f"{p.preprocess_ms:.3f}", f"{p.inference_ms:.3f}", p.error or ""]
        )
    return buf.getvalue()


def predictions_table(preds: list[Any], top_k: int | None = None) -> str:
    """Aligned text table for people: file, label, probability (or the top-k), or the error."""
    rows = []
    for p in preds:
        if not p.ok:
            rows.append((str(p.source), "ERROR", p.error or ""))
        elif top_k:
            rows.append((str(p.source), p.label or "", "  ".join(f"{c} {v:.3f}" for c, v in p.top_k(top_k))))
        else:
            rows.append((str(p.source), p.label or "", f"{p.top1:.3f}"))
    header = ("file", "label", f"top-{top_k}" if top_k else "probability")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}" for r in [header, *rows])


@click.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", "-m", default=None,
              help="Model name (see `edgecxr models`), bundle directory, .engine or .onnx file  [default: coronet]")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime", "keras"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), help="Restrict a bundle to this precision.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write a CSV file (atomically).")
@click.option("--top-k", type=click.IntRange(1), help="Show the k most likely classes.")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay CUDA graphs per batch size.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: for 16+ files on a terminal).")
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
) -> None:
    """Classify X-ray images: files, folders (recursive) and glob patterns; PNG, JPEG and DICOM.

    A file that cannot be read is reported with its reason and the others are still classified;
    the exit code is then 1 (0 when every file was classified). The backend used is printed to
    stderr. A missing path, a glob matching nothing or a folder without images stops the run.

    \b
    Examples:
      edgecxr infer scan.png                      (the reference CoroNet)
      edgecxr infer --model cnn-lstm scans/ --json
      edgecxr infer --model runs/coronet scan.dcm
      edgecxr infer --model runs/coronet 'scans/**/*.png' --json > predictions.json
      edgecxr infer --model runs/coronet/model.int8.onnx scans/ --csv predictions.csv --top-k 2
    """
    from tqdm import tqdm

    from edgecxr.data.io import expand_inputs
    from edgecxr.runtime.classifier import Classifier

    if cuda_graph and backend in ("onnxruntime", "keras"):
        raise click.UsageError(f"--cuda-graph is for the tensorrt backend, not {backend}")
    _check_output(csv_path, "--csv")
    paths = expand_inputs(inputs)
    options = {"cuda_graph": True} if cuda_graph else {}
    with Classifier.load(model, backend=backend, precision=precision, **options) as clf:
        _err(f"using {clf.describe()}")
        if cuda_graph and clf.backend_info["backend"] != "tensorrt":
            _err(f"warning: --cuda-graph ignored: it needs TensorRT and {clf.backend_info['backend']} was picked")
        show = progress if progress is not None else (len(paths) >= 16 and sys.stderr.isatty())
        preds = []
        with tqdm(total=len(paths), file=sys.stderr, disable=not show, unit="img") as bar:
            for chunk in clf.predict_iter(paths, batch_size=batch_size):
                preds.extend(chunk)
                bar.update(len(chunk))
        classes, info = clf.classes, dict(clf.backend_info)
    failed = [p for p in preds if not p.ok]
    if as_json:
        doc = {
            "model": model or DEFAULT_MODEL,
            "backend": info,
            "classes": classes,
            "count": len(preds),
            "failed": len(failed),
            "predictions": [p.to_dict(top_k) for p in preds],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(predictions_table(preds, top_k))
    if csv_path is not None:  # after printing, so the results are not lost if the file cannot be written
        _write_output(csv_path, predictions_csv(preds, classes), "--csv")
    _err(f"{len(preds) - len(failed)} of {len(preds)} image(s) classified" + (f", {len(failed)} failed" if failed else ""))
    if failed:
        sys.exit(1)


# ------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------
@click.command()
@click.option("--model", "-m", default=None,
              help="Model name (see `edgecxr models`), bundle directory, .engine or .onnx file  [default: coronet]")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime", "keras"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]))
@click.option("--batch", "batch", default="1,8", show_default=True, help="Comma-separated batch sizes.")
@click.option("--iterations", type=click.IntRange(1), default=200, show_default=True)
@click.option("--warmup-s", type=click.FloatRange(0), default=2.0, show_default=True, help="Warm-up time per batch size.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Real image: batches use it, and end-to-end latency (decode+preprocess+infer) is measured.")
@click.option("--compare", help="Bundle artifacts to compare, first is the reference (e.g. keras,onnx_fp32,onnx_int8,engine).")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay CUDA graphs.")
@click.option("--threads", type=click.IntRange(1), help="ONNX Runtime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the JSON report to this file.")
def bench(
    model: str | None,
    backend: str,
    precision: str | None,
    batch: str,
    iterations: int,
    warmup_s: float,
    image: Path | None,
    compare: str | None,
    cuda_graph: bool,
    threads: int | None,
    as_json: bool,
    out: Path | None,
) -> None:
    """Measure latency and throughput like trtexec: warm-up by time, then iterations.

    Reports min/median/mean/p90/p95/p99 latency and throughput per batch size, the H2D / compute /
    D2H split where the backend can time it, and warns when the coefficient of variation exceeds 2.5%.

    \b
    Examples:
      edgecxr bench --model runs/coronet --batch 1,8 --image scan.png
      edgecxr bench --model runs/coronet --compare onnx_fp32,onnx_int8,engine --json --out bench.json
    """
    from edgecxr.bench import COMPARE_NAMES, format_report, parse_batch_sizes, run_bench

    try:
        sizes = parse_batch_sizes(batch)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--batch") from None
    items = [c.strip() for c in compare.split(",") if c.strip()] if compare is not None else None
    if items is not None:
        unknown = [c for c in items if c not in COMPARE_NAMES]
        if unknown or not items:
            raise click.BadParameter(
                f"unknown item(s) {unknown or [compare]}; choose from {', '.join(COMPARE_NAMES)}", param_hint="--compare"
            )
        if backend != "auto" or precision is not None:
            raise click.UsageError("--compare picks backend and precision per item; drop --backend/--precision")
    if cuda_graph and backend in ("onnxruntime", "keras"):
        raise click.UsageError(f"--cuda-graph is for the tensorrt backend, not {backend}")
    if threads and backend in ("tensorrt", "keras"):
        raise click.UsageError(f"--threads sets ONNX Runtime threads; it does nothing on the {backend} backend")
    _check_output(out, "--out")
    options: dict[str, Any] = {}
    if cuda_graph:
        options["cuda_graph"] = True
    if threads:
        options["threads"] = threads
    report = run_bench(
        model,
        backend=backend,
        precision=precision,
        batch_sizes=sizes,
        iterations=iterations,
        warmup_s=warmup_s,
        image=image,
        compare=items,
        options=options,
        log=_err,
    )
    text = json.dumps(report, indent=2)
    if as_json:
        click.echo(text)
    else:
        click.echo(format_report(report))
    if out is not None:  # after printing, so the measurements are not lost if the file cannot be written
        _write_output(out, text + "\n", "--out")


# ------------------------------------------------------------------------------------------------
# info
# ------------------------------------------------------------------------------------------------
def format_info(info: dict[str, Any]) -> str:
    lines = [f"edgecxr {info['edgecxr']} on Python {info['python']} ({info['platform']})", "backends:"]
    for name, b in info["backends"].items():
        lines.append(f"  {name:<12} {'available' if b['available'] else 'unavailable: ' + str(b['reason'])}")
    ort = info["onnxruntime"]
    lines.append(f"onnxruntime: {ort.get('version')} providers {ort.get('providers')}")
    trt = info["tensorrt"]
    lines.append(f"tensorrt: {trt['version'] or 'not available (' + str(trt['reason']) + ')'}")
    lines.append(f"cuda binding: {info['cuda_binding'] or 'none (pip install edgecxr[gpu])'}")
    gpu = info.get("gpu")
    if gpu and "name" in gpu:
        extra = ", ".join(f"{k} {gpu[k]}" for k in ("cuda_runtime", "cuda_driver", "driver") if gpu.get(k))
        lines.append(f"gpu: {gpu['name']} (compute capability {gpu.get('compute_capability')})" + (f", {extra}" if extra else ""))
    else:
        lines.append(f"gpu: none ({info.get('gpu_reason') or (gpu or {}).get('error')})")
    cpu = info["cpu"]
    lines.append(f"cpu: {cpu['model']} ({cpu['usable_cores']} usable of {cpu['logical_cores']} logical cores)")
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info(as_json: bool) -> None:
    """Installed backends (with why not), ONNX Runtime providers, TensorRT version, GPU and CPU.

    \b
    Example:  edgecxr info --json
    """
    from edgecxr.runtime.sysinfo import system_info

    data = system_info()
    click.echo(json.dumps(data, indent=2) if as_json else format_info(data))
