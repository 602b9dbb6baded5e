#!/usr/bin/env python3
"""GPU acceptance run (`make gpu-check`): everything this project could not run without a GPU, in one command.

Why: the TensorRT build and runner go through Polygraphy and are contract-tested against the real
bindings on CPU, but nothing has run them. On the first machine with an NVIDIA GPU and TensorRT,
this script, in order, and into one JSON report (gpu-check.json in --out):

  1. records the machine (`edgecxr info`) and which TensorRT line's code path applies;
  2. `edgecxr build --dry-run` for each reference model and precision;
  3. builds FP16 and INT8 engines of both reference models (`edgecxr build`; the CNN-LSTM ships no
     INT8, which is recorded as skipped) with the accuracy gate against the stored FP32 reference
     on the test split of --data (without a manifest the gate is recorded as not run);
  4. times every engine with `edgecxr bench`, plain and with `--cuda-graph`, and with trtexec and
     `polygraphy run` where they are installed, in the same run;
  5. runs the GPU tests (tests/runtime/test_tensorrt.py).

Without a GPU or TensorRT it refuses with one line on stderr and exit status 2, before any work.
Exit status 1 when any step failed, 0 when all passed. Everything happens in --out (engines, the
writable copies of the reference models via EDGECXR_MODELS), nothing in the user's models folder.

Usage: python scripts/gpu_check.py [--out gpu-check-out] [--data MANIFEST] [--profile NAME] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cxr" / "manifest.csv"
MODELS = {"coronet": ("fp16", "int8"), "cnn-lstm": ("fp16", "int8")}
SHAPES = {"coronet": "150x150x3", "cnn-lstm": "224x224x1"}


def refuse_without_gpu() -> dict[str, Any]:
    """The machine's facts, or one line on stderr and exit 2 when TensorRT cannot run here."""
    from edgecxr.runtime.backends import system_info

    info = system_info()
    reason = info["backends"]["tensorrt"]["reason"]
    if reason:
        print(f"gpu-check: skipped, TensorRT cannot run here: {reason}", file=sys.stderr)
        raise SystemExit(2)
    return info


def run(cmd: list[str], env: dict[str, str], log: Path, timeout: float = 3600) -> dict[str, Any]:
    """Run one step; its output goes to `log`, the report keeps the command, status, time and tail."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        rc, out, err = -1, "", f"{type(exc).__name__}: {exc}"
    log.write_text(f"$ {' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}\n", encoding="utf-8")
    return {"command": " ".join(cmd), "rc": rc, "ok": rc == 0, "seconds": round(time.perf_counter() - t0, 1),
            "log": log.name, "stdout": out, "stderr_tail": err.strip().splitlines()[-5:]}


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check-out"), help="Folder for engines, logs and gpu-check.json.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Manifest whose test split gates the engines.")
    parser.add_argument("--profile", help="Build profile for every build (default: none, the machine decides).")
    parser.add_argument("--quick", action="store_true", help="Fewer benchmark iterations (a smoke run).")
    args = parser.parse_args(argv)

    info = refuse_without_gpu()
    from edgecxr.stages.engine import trt_lines

    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "EDGECXR_MODELS": str(out / "models"), "PYTHONUNBUFFERED": "1"}
    edgecxr = [sys.executable, "-c", "import sys; from edgecxr.cli import main; sys.exit(main())"]
    version = info["tensorrt"]["version"]
    try:
        line = trt_lines.line_for(version)
    except ValueError as exc:
        print(f"gpu-check: skipped, {exc}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "format": "edgecxr-gpu-check", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info, "tensorrt_line": trt_lines.describe_path(line, "fp16") | {"version": version},
        "data": str(args.data) if args.data.is_file() else None, "steps": [],
    }
    iters, warm = ("20", "0.5") if args.quick else ("200", "2")
    profile = ["--profile", args.profile] if args.profile else []

    def step(kind: str, name: str, cmd: list[str], **extra: Any) -> dict[str, Any]:
        print(f"gpu-check: {kind} {name} ...", file=sys.stderr, flush=True)
        result = {"kind": kind, "name": name, **extra, **run(cmd, env, out / "logs" / f"{kind}-{name}.log")}
        report["steps"].append(result)
        print(f"gpu-check: {kind} {name}: {'ok' if result['ok'] else 'FAILED (rc ' + str(result['rc']) + ')'}",
              file=sys.stderr, flush=True)
        return result

    for model, precisions in MODELS.items():
        for precision in precisions:
            tag = f"{model}-{precision}"
            if not _ships(model, precision):
                report["steps"].append({"kind": "build", "name": tag, "ok": True, "skipped": f"{model} ships no {precision} ONNX"})
                continue
            step("dry-run", tag, edgecxr + ["build", "-m", model, "--precision", precision, "--dry-run", "--json",
                                            "--trt-version", version] + profile)
            gate = ["--data", str(args.data), "--split", "test"] if args.data.is_file() else ["--no-verify"]
            built = step("build", tag, edgecxr + ["build", "-m", model, "--precision", precision, "--json"] + gate + profile,
                         gate="run" if args.data.is_file() else "not run: no manifest")
            facts = _json(built["stdout"]) or {}
            built["engine"] = facts.get("engine")
            built["gate_passed"] = facts.get("gate_passed")
            engine = facts.get("engine")
            if not engine:
                continue
            for graph in (False, True):
                name = tag + ("-cudagraph" if graph else "")
                res = step("bench", name, edgecxr + ["bench", "-m", engine, "--backend", "tensorrt", "--batch-size", "1,8",
                                                     "--iterations", iters, "--warmup-s", warm, "--json"]
                           + (["--cuda-graph"] if graph else []))
                res["report"] = _json(res.pop("stdout"))
            shape = f"image:1x{SHAPES[model]}"
            if shutil.which("trtexec"):
                step("trtexec", tag, ["trtexec", f"--loadEngine={engine}", f"--shapes={shape}", "--useCudaGraph",
                                      f"--iterations={iters}", "--separateProfileRun"])
            if shutil.which("polygraphy"):
                step("polygraphy", tag, ["polygraphy", "run", engine, "--model-type", "engine", "--trt",
                                         "--input-shapes", f"image:[1,{SHAPES[model].replace('x', ',')}]"])
    step("pytest", "gpu-tests", [sys.executable, "-m", "pytest", str(REPO / "tests" / "runtime" / "test_tensorrt.py"),
                                 "-q", "-p", "no:cacheprovider"])
    for s in report["steps"]:
        s.pop("stdout", None)
    failed = [f"{s['kind']} {s['name']}" for s in report["steps"] if not s.get("ok")]
    report["passed"], report["failed"] = not failed, failed
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"gpu-check: {'PASS' if not failed else 'FAIL: ' + ', '.join(failed)}; report {out / 'gpu-check.json'}")
    return 0 if not failed else 1


def _ships(model: str, precision: str) -> bool:
    """Whether the reference model ships an ONNX of that precision (a run on an older checkout may lack one)."""
    from edgecxr.core.artifacts import onnx_key
    from edgecxr.core.bundle import Bundle
    from edgecxr.runtime import store

    return Bundle.load(store.resolve(model)).artifact(onnx_key(precision), must_exist=False) is not None


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
