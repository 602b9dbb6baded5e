"""bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgecxr.cli.options import _split_list, model_option
from edgecxr.cli.output import _err, _write_output, check_output
from edgecxr.core.artifacts import PRECISIONS
from edgecxr.runtime.select import BACKENDS


# ------------------------------------------------------------------------------------------------
# bench
# ------------------------------------------------------------------------------------------------
@click.command()
@model_option()
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), help="Only this precision of a bundle.")
@click.option("--batch-size", "batch", default="1,8", show_default=True, metavar="N[,N...]", help="Batch sizes to sweep, comma-separated.")
@click.option("--iterations", type=click.IntRange(1), default=200, show_default=True)
@click.option("--warmup-s", type=click.FloatRange(0), default=2.0, show_default=True, help="Warm-up time per batch size.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Real image: batches use it, and end-to-end latency (decode+preprocess+infer) is measured.")
@click.option("--artifact", "compare", metavar="KEY[,KEY...]",
              help="Compare these artifacts of the bundle (keras, onnx_fp32, onnx_fp16, onnx_int8, engine), each on its "
                   "own backend; the first is the reference of the ratios. Not with --backend/--precision.")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay CUDA graphs.")
@click.option("--threads", type=click.IntRange(1), help="ONNX Runtime intra-op / OpenVINO inference threads.")
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
      edgecxr bench -m runs/coronet --batch-size 1,8 --image scan.png
      edgecxr bench -m runs/coronet --artifact onnx_fp32,onnx_int8,engine --json --out bench.json
    """
    from edgecxr.runtime.bench import format_report, parse_batch_sizes, run_bench

    try:
        sizes = parse_batch_sizes(batch)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--batch-size") from None
    items = _split_list(compare) if compare is not None else None  # run_bench refuses unknown names
    if cuda_graph and backend in ("onnxruntime", "openvino", "keras"):
        raise click.UsageError(f"--cuda-graph is for the tensorrt backend, not {backend}")
    if threads and backend in ("tensorrt", "keras"):
        raise click.UsageError(f"--threads sets ONNX Runtime / OpenVINO threads; it does nothing on the {backend} backend")
    check_output(out, "--out", inputs=[image] if image else [])
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
    for w in report.get("warnings", []):  # on stderr: stdout holds only the report (or its JSON)
        _err(f"warning: {w}")
    if as_json:
        click.echo(text)
    else:
        click.echo(format_report(report))
    if out is not None:  # after printing, so the measurements are not lost if the file cannot be written
        _write_output(out, text + "\n", "--out")
