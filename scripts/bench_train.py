"""Training throughput (images/s) of the paper-sized models on this machine, per Keras backend and precision.

One configuration, under the backend KERAS_BACKEND names (TensorFlow when unset):

    python scripts/bench_train.py coronet 150 32          # model, input side, batch size
    python scripts/bench_train.py cnn-lstm 128 32 --precision mixed_bfloat16
    python scripts/bench_train.py coronet 150 32 --jit-compile
    KERAS_BACKEND=torch python scripts/bench_train.py coronet 150 16 --threads 1

The matrix (issue 23 item 2): every model x backend x precision, interleaved, each in its own process
(a Keras backend is fixed at import), each backend with the Python that has it installed:

    python scripts/bench_train.py --matrix coronet:150:16 cnn-lstm:128:16 \\
        --backends tensorflow jax torch --python jax=VENV/bin/python --python torch=VENV/bin/python \\
        --repeats 2 --threads 1

Why interleaved: the machine is shared (training runs, other work). Run one backend's configurations
after another's and a change in load becomes a difference between backends; alternating them, with
the repeats as outer loop, spreads the load over all of them, and min / median over the repeats says
how much it moved. The load average is printed with each run.

What is timed: `model.train_on_batch` on random data, one batch at a time, after two warm-up batches
(so graph tracing, XLA compilation and allocator warm-up are not counted); img/s = batch / median
step time. The data pipeline is not part of it (training caches decoded arrays once, see
edgecxr.stages.train). Layout: Keras's default, channels-last (NHWC), under every backend; nothing
here transposes. `--threads N` limits the backend's kernel threads (no pinning: on a shared machine the
scheduler places them), the setting of the long runs (`--threads 1`, two runs sharing two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = ("float32", "mixed_bfloat16")
RESULT = "RESULT "  # prefix of the one JSON line a child prints for the matrix driver


def limit_threads(threads: int, backend: str) -> None:
    """Tell the backend its thread count before it is imported (XLA and TensorFlow read
    their thread counts at start-up; PyTorch is told after import, in `run_one`)."""
    if backend == "tensorflow":
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
        os.environ["TF_NUM_INTEROP_THREADS"] = str(threads)
    elif backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        if threads == 1:
            flags += " --xla_cpu_multi_thread_eigen=false"
        os.environ["XLA_FLAGS"] = f"{flags} intra_op_parallelism_threads={threads}".strip()


def run_one(model_name: str, size: int, batch: int, precision: str, batches: int, jit_compile: bool,
            threads: int | None) -> dict:
    """Time `batches` training steps of one configuration under this process's Keras backend."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if threads:
        limit_threads(threads, backend)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from edgecxr.models import build_model

    if threads and backend == "torch":
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)
    load = os.getloadavg()[0]
    keras.config.set_dtype_policy(precision)
    keras.utils.set_random_seed(0)
    model = build_model(model_name, weights=None, input_size=size)
    channels = 3 if model_name == "coronet" else 1
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, channels), dtype=np.float32)
    y = keras.utils.to_categorical(np.arange(batch) % 3, model.output_shape[-1])
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy", jit_compile=jit_compile)
    t0 = time.perf_counter()
    for _ in range(2):  # tracing / compilation, then one more so allocators and caches settle
        model.train_on_batch(x, y)
    warmup = time.perf_counter() - t0
    steps = []
    for _ in range(batches):
        t0 = time.perf_counter()
        loss = model.train_on_batch(x, y)
        steps.append(time.perf_counter() - t0)
    loss = float(np.asarray(loss if not isinstance(loss, list) else loss[0]))
    median = statistics.median(steps)
    return {"model": model_name, "size": size, "batch": batch, "backend": keras.backend.backend(),
            "precision": precision, "jit_compile": jit_compile, "threads": threads, "keras": keras.__version__,
            "images_per_second": batch / median, "step_seconds": steps, "warmup_seconds": warmup,
            "load_start": load, "load_end": os.getloadavg()[0], "finite_loss": bool(np.isfinite(loss))}


def describe(r: dict) -> str:
    xla = " xla" if r.get("jit_compile") else ""
    threads = f", {r['threads']} thread(s)" if r.get("threads") else ""
    return (f"{r['model']} {r['size']}px batch {r['batch']} {r['backend']} {r['precision']}{xla}{threads}: "
            f"train {r['images_per_second']:.2f} img/s (median of {len(r['step_seconds'])} steps; "
            f"warm-up {r['warmup_seconds']:.0f}s; load {r['load_start']:.1f}->{r['load_end']:.1f})")


def parse_config(text: str) -> tuple[str, int, int]:
    """`model:size:batch`, e.g. coronet:150:16."""
    try:
        name, size, batch = text.split(":")
        if name not in ("coronet", "cnn-lstm"):
            raise ValueError
        return name, int(size), int(batch)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MODEL:SIZE:BATCH with MODEL coronet or cnn-lstm, got {text!r}") from None


def parse_python(items: list[str]) -> dict[str, str]:
    """`--python BACKEND=PATH` pairs; a backend not named runs with this script's Python."""
    found = {}
    for item in items:
        backend, sep, path = item.partition("=")
        if not sep or backend not in BACKENDS or not path:
            raise argparse.ArgumentTypeError(f"--python takes BACKEND=PATH with BACKEND one of {BACKENDS}, got {item!r}")
        found[backend] = os.path.expanduser(path)
    return found


def plan(configs: list[tuple[str, int, int]], backends: list[str], precisions: list[str], repeats: int,
         repeats_for: dict[str, int] | None = None, skip: set[tuple[str, str]] | frozenset = frozenset()) -> list[tuple]:
    """The run order: repeats outermost, then configuration and precision, backends alternating innermost,
    so each backend's runs are spread over the whole session and its neighbours are other backends.

    `repeats_for` gives a backend fewer (or more) repeats than `repeats` (JAX's XLA compiles the train
    step for minutes on a loaded 2-core CPU); `skip` drops (backend, precision) pairs."""
    repeats_for = repeats_for or {}
    most = max([repeats, *repeats_for.values()])
    return [(rep, cfg, prec, backend) for rep in range(most) for cfg in configs for prec in precisions
            for backend in backends if rep < repeats_for.get(backend, repeats) and (backend, prec) not in skip]


def parse_pairs(items: list[str], sep: str, what: str) -> list[tuple[str, str]]:
    """BACKEND<sep>VALUE pairs of --repeats-for / --skip."""
    pairs = []
    for item in items:
        backend, found, value = item.partition(sep)
        if not found or backend not in BACKENDS or not value:
            raise argparse.ArgumentTypeError(f"{what} takes BACKEND{sep}VALUE with BACKEND one of {BACKENDS}, got {item!r}")
        pairs.append((backend, value))
    return pairs


def summarise(results: list[dict]) -> list[dict]:
    """One row per configuration: min / median / max img/s over the repeats, and the load they ran under."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["model"], r["size"], r["batch"], r["precision"], r["backend"]), []).append(r)
    rows = []
    for (model, size, batch, precision, backend), runs in groups.items():
        rates = [r["images_per_second"] for r in runs]
        rows.append({"model": model, "size": size, "batch": batch, "precision": precision, "backend": backend,
                     "runs": len(runs), "min": min(rates), "median": statistics.median(rates), "max": max(rates),
                     "load": statistics.mean(r["load_start"] for r in runs)})
    return rows


def matrix(args: argparse.Namespace) -> int:
    pythons = parse_python(args.python)
    script = Path(__file__).resolve()
    results, failed = [], []
    repeats_for = {b: int(n) for b, n in parse_pairs(args.repeats_for, "=", "--repeats-for")}
    skip = set(parse_pairs(args.skip, ":", "--skip"))
    order = plan(args.matrix, args.backends, args.precisions, args.repeats, repeats_for, skip)
    print(f"# {len(order)} runs, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f} at start, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    for rep, (name, size, batch), prec, backend in order:
        cmd = [pythons.get(backend, sys.executable), str(script), name, str(size), str(batch), "--precision", prec,
               "--batches", str(args.batches), "--json"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=os.pathsep.join(
            p for p in (str(script.parents[1]), os.environ.get("PYTHONPATH", "")) if p))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=False)
        lines = [line[len(RESULT):] for line in proc.stdout.splitlines() if line.startswith(RESULT)]
        if proc.returncode or not lines:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            print(f"[{rep + 1}] {name} {size}px batch {batch} {backend} {prec}: FAILED ({tail})", flush=True)
            failed.append((name, backend, prec))
            continue
        r = json.loads(lines[-1])
        results.append(r)
        print(f"[{rep + 1}] {describe(r)}", flush=True)
    rows = summarise(results)
    print("\n| model | input | batch | backend | precision | img/s min | img/s median | img/s max | runs | load avg |")
    print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|")
    for row in sorted(rows, key=lambda r: (r["model"], r["size"], r["precision"], -r["median"])):
        print(f"| {row['model']} | {row['size']} | {row['batch']} | {row['backend']} | {row['precision']} | "
              f"{row['min']:.2f} | {row['median']:.2f} | {row['max']:.2f} | {row['runs']} | {row['load']:.1f} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"runs": results, "summary": rows, "failed": failed}, indent=1))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", choices=["coronet", "cnn-lstm"])
    ap.add_argument("size", nargs="?", type=int)
    ap.add_argument("batch", nargs="?", type=int)
    ap.add_argument("--precision", default="float32", choices=PRECISIONS)
    ap.add_argument("--batches", type=int, default=4, help="timed training steps after the warm-up (default 4)")
    ap.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    ap.add_argument("--threads", type=int, help="backend kernel threads (the long runs use 1)")
    ap.add_argument("--json", action="store_true", help="also print the result as one JSON line (for --matrix)")
    ap.add_argument("--matrix", nargs="+", type=parse_config, metavar="MODEL:SIZE:BATCH",
                    help="run every configuration x --backends x --precisions, each in its own process")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--python", action="append", default=[], metavar="BACKEND=PATH",
                    help="the Python that has BACKEND installed (default: this one)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--repeats-for", action="append", default=[], metavar="BACKEND=N",
                    help="another number of repeats for one backend")
    ap.add_argument("--skip", action="append", default=[], metavar="BACKEND:PRECISION",
                    help="leave out one backend's precision")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run before it counts as failed")
    ap.add_argument("--json-out", help="write every run and the summary to this JSON file")
    args = ap.parse_args(argv)
    try:
        if args.matrix:
            return matrix(args)
        if args.model is None or args.size is None or args.batch is None:
            ap.error("give MODEL SIZE BATCH, or --matrix")
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    r = run_one(args.model, args.size, args.batch, args.precision, args.batches, args.jit_compile, args.threads)
    print(describe(r), flush=True)
    if args.json:
        print(RESULT + json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
