"""Folder throughput of `edgecxr infer`: decode only, inference only, sequential and pipelined, in one run.

Issue 15 item 3 asks that pipelined folder throughput come within 80% of
min(inference throughput, decode throughput x cores). All five figures come from one process on the
same files, so their ratios hold even on a busy machine where the absolute numbers do not:

  decode      `inputs.prepare` (sha256, header checks, decode, preprocess, input checks) one file
              after the other on one thread: images/s per core;
  decode xW   the same on W threads (shows what the decoders' process-wide stderr capture costs);
  inference   the model alone on tensors already in memory, batch after batch;
  serial      `Classifier.predict(folder, workers=0)`: today's sequential path;
  pipelined   `Classifier.predict(folder, workers=W)`.

Make the test folder first (re-encoded copies of the full-size originals; nothing is committed):

    .venv/bin/python scripts/bench_pipeline.py --make 500 --folder /tmp/edgecxr-bench-jpegs
    .venv/bin/python scripts/bench_pipeline.py --folder /tmp/edgecxr-bench-jpegs -m coronet --json

`--memory N` instead: pipelined predict_iter over N inputs (the folder's files, cycled through
symlinks in a temporary folder), printing the process's resident memory every N/10 inputs: the
bounded prefetch must keep it flat (only the N Predictions themselves grow).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from edgecxr.data.io import expand_inputs
from edgecxr.runtime.classifier import Classifier
from edgecxr.runtime.inputs import prepare
from edgecxr.runtime.pipeline import available_cpus, default_workers, prepared_batches

ORIGINALS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-originals" / "files"


def make_jpegs(n: int, folder: Path, source: Path = ORIGINALS, quality: int = 95) -> list[Path]:
    """`n` JPEGs in `folder`, cycling over the source images (PNG/JPEG), each re-encoded at full size.

    The originals hold 11 JPEGs and 2 PNGs from 437x144 to 4280x3520; every file gets a different
    name (and the few bytes of a JPEG comment differ) so no two inputs share a sha256.
    """
    sources = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not sources:
        raise SystemExit(f"error: no PNG/JPEG files in {source}")
    folder.mkdir(parents=True, exist_ok=True)
    decoded = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sources]
    out = []
    for i in range(n):
        k = i % len(sources)
        ok, data = cv2.imencode(".jpg", decoded[k], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise SystemExit(f"error: cannot encode {sources[k]}")
        # a COM segment after SOI makes each copy's bytes (and so its sha256) unique
        comment = f"edgecxr bench copy {i}".encode()
        body = data.tobytes()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        path = folder / f"{i:05d}_{sources[k].stem}.jpg"
        path.write_bytes(body[:2] + segment + body[2:])
        out.append(path)
    return out


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def measure(model: str | None, folder: Path, batch_size: int, workers: int, backend: str = "auto",
            precision: str | None = None, threads: int | None = None, rounds: int = 5) -> dict:
    """The five throughputs (images/s) on the files of `folder`, and the ratios the issue asks for."""
    paths = expand_inputs([folder])
    n = len(paths)
    cpus = available_cpus()
    options = {"threads": threads} if threads else {}
    phases = ("decode_per_core", "decode_threads", "inference", "serial", "pipelined")
    seconds = dict.fromkeys(phases, 0.0)
    serial: list = []
    piped: list = []
    inferred = 0
    with Classifier.load(model, backend=backend, precision=precision, **options) as clf:
        spec, rules = clf.spec, clf.input_rules
        clf.predict(paths[: 2 * batch_size], batch_size=batch_size, workers=0)  # warm-up (ORT, caches)
        # The five phases take turns on slices of the folder (rounds), so a change in the machine's
        # load during the run falls on all of them alike, not on whichever phase ran at that time.
        step = -(-n // rounds)
        for lo in range(0, n, step):
            part = paths[lo : lo + step]
            t0 = time.perf_counter()
            tensors = [prepare(p, lo + i, spec, rules)[1] for i, p in enumerate(part)]
            seconds["decode_per_core"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            for _ in prepared_batches(part, spec, rules, batch_size, workers):
                pass
            seconds["decode_threads"] += time.perf_counter() - t0

            good = [t for t in tensors if t is not None] or [np.zeros(spec.input_shape, np.float32)]
            batch = np.stack([good[i % len(good)] for i in range(batch_size)])
            t0 = time.perf_counter()
            for _ in range(0, len(part), batch_size):
                clf.runner.infer(batch)
                inferred += batch_size
            seconds["inference"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            serial += clf.predict(part, batch_size=batch_size, workers=0)
            seconds["serial"] += time.perf_counter() - t0

            t0 = time.perf_counter()
            piped += clf.predict(part, batch_size=batch_size, workers=workers)
            seconds["pipelined"] += time.perf_counter() - t0
        info = dict(clf.backend_info)
    same = [(a.source, a.label, a.error, a.status) for a in serial] == [(b.source, b.label, b.error, b.status) for b in piped]
    rates = {k: _rate(inferred if k == "inference" else n, seconds[k]) for k in phases}
    target = min(rates["inference"], rates["decode_per_core"] * cpus)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpu": _cpu_name(), "cpus": cpus, "os_cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m": os.getloadavg()[0], "opencv": cv2.__version__},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "model": {"artifact": info.get("artifact"), "precision": info.get("precision"), "backend": info.get("backend"),
                  "threads": info.get("threads")},
        "images": n,
        "classified": sum(1 for p in piped if p.ok),
        "batch_size": batch_size,
        "workers": workers,
        "rounds": rounds,
        "images_per_s": {k: round(v, 2) for k, v in rates.items()},
        "target_images_per_s": round(target, 2),
        "ratios": {
            "pipelined_vs_target": round(rates["pipelined"] / target, 3),
            "pipelined_vs_serial": round(rates["pipelined"] / rates["serial"], 3),
            "decode_threads_vs_one": round(rates["decode_threads"] / rates["decode_per_core"], 3),
            "decode_share_of_serial": round((1 / rates["decode_per_core"]) / (1 / rates["serial"]), 3),
        },
        "same_predictions": same,
    }


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_run(model: str | None, folder: Path, n: int, batch_size: int, workers: int) -> list[tuple[int, float]]:
    """(inputs done, RSS MiB) every n/10 inputs of a pipelined run over n symlinked inputs."""
    import tempfile

    files = expand_inputs([folder])
    samples: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp, Classifier.load(model) as clf:
        links = []
        for i in range(n):
            link = Path(tmp) / f"{i:06d}{files[i % len(files)].suffix}"
            link.symlink_to(files[i % len(files)].resolve())
            links.append(link)
        done, step = 0, max(1, n // 10)
        samples.append((0, rss_mb()))
        for chunk in clf.predict_iter(links, batch_size=batch_size, workers=workers):
            done += len(chunk)
            if done // step != (done - len(chunk)) // step:
                samples.append((done, rss_mb()))
    return samples


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def report(r: dict) -> str:
    rate, ratio = r["images_per_s"], r["ratios"]
    lines = [
        f"{r['images']} images, {r['model']['precision']} {r['model']['backend']} ({r['model']['artifact']}), "
        f"batch {r['batch_size']}, {r['workers']} workers, {r['machine']['cpus']} CPUs (load {r['machine']['load_average_1m']:.1f})",
        f"  decode, 1 thread        {rate['decode_per_core']:8.1f} img/s",
        f"  decode, {r['workers']} threads       {rate['decode_threads']:8.1f} img/s  (x{ratio['decode_threads_vs_one']:.2f})",
        f"  inference only          {rate['inference']:8.1f} img/s",
        f"  serial infer            {rate['serial']:8.1f} img/s",
        f"  pipelined infer         {rate['pipelined']:8.1f} img/s  (x{ratio['pipelined_vs_serial']:.2f} serial)",
        f"  target min(inference, decode x {r['machine']['cpus']}) {r['target_images_per_s']:.1f} img/s: "
        f"pipelined reaches {ratio['pipelined_vs_target']:.0%} (goal 80%)",
        f"  same predictions serial vs pipelined: {r['same_predictions']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folder", type=Path, required=True, help="Folder of images to classify.")
    ap.add_argument("--make", type=int, metavar="N", help="First write N re-encoded JPEGs of the originals into --folder.")
    ap.add_argument("--source", type=Path, default=ORIGINALS, help="Images --make re-encodes  [default: %(default)s]")
    ap.add_argument("-m", "--model", default=None, help="Model name or bundle  [default: coronet]")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--precision", default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads  [default: its own]")
    ap.add_argument("--workers", type=int, default=None, help="Decode threads  [default: one per CPU, at most 8]")
    ap.add_argument("--json", action="store_true", help="Print the JSON record instead of the table.")
    ap.add_argument("--rounds", type=int, default=5, help="Phases take turns on this many slices  [default: 5]")
    ap.add_argument("--memory", type=int, metavar="N", help="Instead: RSS over a pipelined run of N inputs.")
    args = ap.parse_args(argv)
    if args.make:
        if args.folder.exists() and any(args.folder.iterdir()):
            print(f"error: {args.folder} is not empty; --make writes into an empty or new folder", file=sys.stderr)
            return 2
        make_jpegs(args.make, args.folder, args.source)
        print(f"wrote {args.make} JPEGs to {args.folder}", file=sys.stderr)
    workers = args.workers if args.workers is not None else max(2, default_workers())
    if args.memory:
        samples = memory_run(args.model, args.folder, args.memory, args.batch_size, workers)
        for done, mb in samples:
            print(f"{done:7d} inputs  RSS {mb:7.1f} MiB")
        print(f"growth after the first {samples[1][0]} inputs: {samples[-1][1] - samples[1][1]:+.1f} MiB "
              f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
        return 0
    r = measure(args.model, args.folder, args.batch_size, workers, args.backend, args.precision, args.threads, args.rounds)
    print(json.dumps(r, indent=2) if args.json else report(r))
    return 0 if r["same_predictions"] else 1


if __name__ == "__main__":
    sys.exit(main())
