"""`edgecxr export triton`: a Triton Inference Server model repository (library: stages/export/triton.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgecxr.cli.output import _err
from edgecxr.core.artifacts import PRECISIONS


@click.command("triton")
@click.option("-m", "--model", "models", multiple=True, metavar="NAME|PATH",
              help="Model name or bundle directory; repeat for several  [default: coronet]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Model repository folder (created; other models in it are kept).")
@click.option("--max-batch-size", type=click.IntRange(1, 256), default=8, show_default=True,
              help="Largest batch Triton forms (TensorRT: at most the engine profile's).")
@click.option("--max-queue-delay-us", type=click.IntRange(0), default=2000, show_default=True,
              help="Dynamic batching: how long a request may wait for a batch to fill (microseconds).")
@click.option("--cpu-instances", type=click.IntRange(1, 64), default=1, show_default=True,
              help="ONNX Runtime model instances (KIND_CPU).")
@click.option("--preprocess-instances", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Python-backend instances decoding files.")
@click.option("--precision", type=click.Choice(PRECISIONS),
              help="ONNX precision instead of the gated choice (INT8 if it passed, else FP32, else FP16); still only a gated file.")
@click.option("--engines/--no-engines", default=True, show_default=True,
              help="Also export the bundle's TensorRT engines as NAME_trt (they run only on the GPU and TensorRT that built them).")
@click.option("--flavour", type=click.Choice(["onnxruntime", "python"]), default="onnxruntime", show_default=True,
              help="How NAME runs the ONNX: Triton's onnxruntime backend, or the Python backend with ONNX Runtime "
                   "inside (a Triton without the onnxruntime backend, e.g. the nvidia-pytriton wheel's).")
@click.option("--replace", is_flag=True, help="Replace model folders of the same names already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print what was exported as JSON.")
def triton(models: tuple[str, ...], out: Path, max_batch_size: int, max_queue_delay_us: int, cpu_instances: int,
           preprocess_instances: int, precision: str | None, engines: bool, flavour: str, replace: bool,
           as_json: bool) -> None:
    """Write a Triton model repository: ONNX Runtime (and TensorRT) models, Python preprocessing, ensembles.

    \b
    Per model NAME:  NAME (onnxruntime, CPU, tensor in)   NAME_trt (TensorRT plan, GPU; with an engine)
                     NAME_preprocess (Python: file bytes in)   NAME_image, NAME_trt_image (ensembles)
    Every config.pbtxt is parsed with Triton's ModelConfig protobuf and checked against the model
    files before anything is moved into --out (needs: pip install 'edgecxr[triton]').
    See docs/SERVING.md "Triton" for running it on Triton Inference Server and measuring it with perf_analyzer.

    \b
    Examples:
      edgecxr export triton --out triton-repo
      edgecxr export triton -m coronet -m cnn-lstm --out triton-repo --max-batch-size 16
      edgecxr export triton --flavour python --out triton-repo   (CPU-only Triton without onnxruntime)
    """
    from edgecxr.stages.export.triton import TritonOptions, export_triton

    options = TritonOptions(max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us,
                            cpu_instances=cpu_instances, preprocess_instances=preprocess_instances,
                            precision=precision, engines=engines, flavour=flavour)
    entries = export_triton(list(models) or ["coronet"], out, options, replace=replace,
                            log=None if as_json else _err)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for name, entry in entries.items():
        click.echo(f"{name}: {', '.join(entry['models'])}")
    click.echo(f"wrote {out} (run: tritonserver --model-repository {out})")
