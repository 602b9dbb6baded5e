"""`edgecxr build | infer | bench | info`: thin Click wrappers over engine.py, Classifier, bench.py, sysinfo.

Nothing here imports TensorFlow or TensorRT; the library functions import what the chosen backend
needs. Library errors propagate to the group, which prints one line and exits with their code.
"""

from __future__ import annotations

import json
from typing import Any

import click

from edgecxr.runtime.backends import system_info


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

    data = system_info()
    click.echo(json.dumps(data, indent=2) if as_json else format_info(data))
