"""`make arm64-check`: the wheels on an emulated aarch64 CPU like Jetson Orin's, compared with x86 (issue 27).

    python scripts/arm64_check.py [--wheels dist] [--images 4] [--cpu cortex-a76] [--models coronet,cnn-lstm]
                                  [--precisions fp16,int8] [--slow]
    python scripts/arm64_check.py --split val --manifest DATA/manifest.csv [--limit N] [--emulate coronet/int8]
                                  [--x86-splits test] [--x86-edgecxr VENV/bin/edgecxr] [--out runs/arm64/drift-val.json]
    python scripts/arm64_check.py --summarize runs/arm64/*.json

What it does, as root on a Debian/Ubuntu x86 machine (minutes under emulation, not part of `make test`):

1. makes or reuses an arm64 Debian root (`debootstrap --arch=arm64 --variant=minbase bookworm`, with
   python3 and python3-venv) under ~/.cache/edgecxr/arm64-root, run through QEMU user-mode emulation
   (qemu-user-static, its binfmt entry registered with the F flag so it works inside the chroot);
2. installs the wheels of `--wheels` (`make dist`: edgecxr and the model wheels) into a venv there, with
   their aarch64 dependency wheels from the index (binary only; the host's CA bundle is copied in);
3. runs `edgecxr infer --json` for each reference model and precision on a handful of examples/images
   (CNN-LSTM FP16 only with --slow: minutes per image under emulation),
   inside a private mount namespace with /sys bound read-only (onnxruntime's cpuinfo reads
   /sys/devices/system/cpu; without it 1.23 aborts) and no /proc (QEMU 7.2 shows ARM code the x86 host's
   /proc/cpuinfo, on which onnxruntime 1.32 can crash; edgecxr reads AT_HWCAP instead), QEMU_CPU set to
   a core like Orin's (cortex-a76: FP16 arithmetic and dot product, as the Cortex-A78AE);
4. runs the same commands with this checkout's venv on x86, and compares: labels and statuses must be
   equal, and max |Δp| must stay within the tolerance for that precision: the gated file's own max |Δp|
   against its reference (bundle.json "gate"), i.e. moving to this CPU may not move an answer by more
   than quantization itself was allowed to. Also reports what `auto` picks on the emulated CPU and the
   largest OOD-score drift.

One summary line at the end; exit 0 when everything matches, 1 when something differs, 2 when the
machine cannot run the check (not root, no qemu-user-static / debootstrap, no wheels).

`--split` measures instead of checking (issue 27 item 4): the films of one split of a manifest, on
x86 and emulated, each film's OOD score and probabilities written to a JSON, and a report of the
score drift (max / p99 / p95 / p50 |Δscore|, |Δp|, verdicts that flip), each film's x86 margin to its
precision's threshold (how many lie within the measured drift of it), and FP16 vs INT8 margins on
x86. Emulation costs about 10 s per film for CoroNet INT8 and a minute or more for FP16 (FP32
arithmetic after the up-cast), so `--limit` and `--emulate` choose what to emulate; x86 always runs
the whole split. `--summarize` merges such files. Exit 0 when every run finished.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgecxr.runtime.timing import percentile

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGECXR_ARM64_CACHE", Path.home() / ".cache" / "edgecxr"))
ROOT = CACHE / "arm64-root"
VENV = "/opt/edgecxr"  #: inside the root
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
PRECISIONS = ("fp16", "int8")
#: model/precision pairs too slow to emulate in the default check (docs/BENCHMARKS.md "aarch64 under
#: emulation": CNN-LSTM FP16, up-cast to FP32 at load, takes minutes per film under QEMU); --slow runs them
SLOW = frozenset({("cnn-lstm", "fp16")})


def log(msg: str) -> None:
    print(f"[arm64-check] {msg}", file=sys.stderr, flush=True)


def fail(msg: str, code: int = 2) -> None:
    print(f"arm64-check: {msg}", file=sys.stderr)
    raise SystemExit(code)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)  # type: ignore[call-overload]


def ensure_binfmt() -> None:
    """QEMU's aarch64 entry in binfmt_misc (F flag: the interpreter is opened now, so it works in a chroot)."""
    if not BINFMT.joinpath("status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=False)
    entry = BINFMT / "qemu-aarch64"
    if entry.exists():
        if "flags: " in entry.read_text() and "F" not in entry.read_text().split("flags: ", 1)[1].split()[0]:
            fail(f"{entry} is registered without the F flag (needed inside the chroot); re-register it from {QEMU_CONF}")
        return
    if not QEMU_CONF.is_file():
        fail(f"{QEMU_CONF} missing: apt-get install -y qemu-user-static")
    try:
        BINFMT.joinpath("register").write_text(QEMU_CONF.read_text().strip() + "\n")
    except OSError as exc:
        fail(f"cannot register QEMU's aarch64 binfmt entry ({exc}); run as root on a machine that allows binfmt_misc")


def ensure_root() -> None:
    """The arm64 root with python3 + venv, made once (debootstrap, about 10 minutes here) and reused."""
    if (ROOT / ".edgecxr-root-ready").is_file():
        return
    partial = ROOT.with_name(ROOT.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"debootstrap arm64 bookworm into {partial} (once; reused afterwards)")
    run(["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
         "bookworm", str(partial), os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")],
        stdout=subprocess.DEVNULL)
    (partial / ".edgecxr-root-ready").write_text("debootstrap --arch=arm64 --variant=minbase bookworm\n")
    shutil.rmtree(ROOT, ignore_errors=True)
    partial.rename(ROOT)


def chroot(script: str, env: dict[str, str], capture: bool = False) -> subprocess.CompletedProcess:
    """`script` (sh) inside the root: private mounts, /sys read-only, /dev bound, no /proc."""
    mounts = (f"mount --bind /sys {ROOT}/sys && mount -o remount,bind,ro {ROOT}/sys && "
              f"mount --bind /dev {ROOT}/dev && ")
    inner = " ".join(f"{k}={_q(v)}" for k, v in env.items())
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           mounts + f"exec chroot {ROOT} /usr/bin/env -i {inner} /bin/sh -c {_q(script)}"]
    return subprocess.run(cmd, check=False, text=True, capture_output=capture)


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def install(wheels: list[Path], cpu: str) -> None:
    """A venv in the root with the wheels and their aarch64 dependencies (binary wheels only)."""
    (ROOT / "etc" / "ssl" / "certs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", ROOT / "etc/ssl/certs/ca-certificates.crt")
    shutil.copyfile("/etc/resolv.conf", ROOT / "etc/resolv.conf")
    dest = ROOT / "tmp" / "wheels"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for w in wheels:
        shutil.copy2(w, dest / w.name)
    names = " ".join(f"/tmp/wheels/{w.name}" for w in wheels)
    script = (f"test -x {VENV}/bin/python || python3 -m venv {VENV}; "
              f"{VENV}/bin/pip install -q --disable-pip-version-check --only-binary :all: "
              f"--cert /etc/ssl/certs/ca-certificates.crt {names} && "
              f"{VENV}/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall {names}")
    res = chroot(script, {"PATH": "/usr/bin:/bin", "HOME": "/root", "QEMU_CPU": cpu})
    if res.returncode:
        fail(f"pip install in the arm64 root failed (exit {res.returncode})", 1)


def infer_cmd(edgecxr: str, model: str, precision: str, images: list[str]) -> list[str]:
    return [edgecxr, "infer", "-m", model, "--precision", precision, "--backend", "onnxruntime", "--json", *images]


def parse_doc(doc: dict) -> dict[str, dict]:
    """Predictions of one `infer --json` document by file name, plus its backend record."""
    return {Path(p["source"]).name: p for p in doc["predictions"]} | {"__backend__": doc.get("backend", {})}


def compare(x86: dict, arm: dict, tol: float) -> dict:
    names = [n for n in x86 if n != "__backend__"]
    dp = max((abs(x86[n]["probabilities"][c] - arm[n]["probabilities"][c])
              for n in names if x86[n].get("probabilities") and arm.get(n, {}).get("probabilities")
              for c in x86[n]["probabilities"]), default=float("nan"))
    dood = max((abs(x86[n]["ood_score"] - arm[n]["ood_score"]) for n in names
                if x86[n].get("ood_score") is not None and arm.get(n, {}).get("ood_score") is not None), default=0.0)
    labels = sum(x86[n]["label"] == arm.get(n, {}).get("label") for n in names)
    statuses = sum(x86[n]["status"] == arm.get(n, {}).get("status") for n in names)
    ok = labels == statuses == len(names) and dp <= tol
    return {"n": len(names), "labels": labels, "statuses": statuses, "max_dp": dp, "tol": tol, "max_dood": dood,
            "ok": ok, "arm_arithmetic": arm["__backend__"].get("arithmetic")}


def entry(pred: dict) -> dict:
    """What the drift file keeps of one prediction: the score, the answer and its probabilities."""
    return {"score": pred.get("ood_score"), "label": pred.get("label"), "status": pred.get("status"),
            "probabilities": pred.get("probabilities") or {}}


def stats(values: list[float]) -> dict[str, float]:
    """max / p99 / p95 / p50 / mean of absolute differences (empty: {})."""
    if not values:
        return {}
    return {"n": len(values), "max": max(values), "p99": percentile(values, 99), "p95": percentile(values, 95),
            "p50": percentile(values, 50), "mean": sum(values) / len(values)}


def drift(images: dict[str, dict]) -> dict:
    """x86 vs aarch64 over the images run on both: |Δscore|, per-image max |Δp|, and what flipped.

    A flip is an image abstained on one CPU and not on the other: the runtime's own verdict (the JSON
    rounds the score to 4 decimals, too coarse to recompute it at the threshold).
    """
    both = {n: r for n, r in images.items() if r.get("arm")}
    dscore = [abs(r["arm"]["score"] - r["x86"]["score"]) for r in both.values()
              if r["x86"]["score"] is not None and r["arm"]["score"] is not None]
    signed = [r["arm"]["score"] - r["x86"]["score"] for r in both.values()
              if r["x86"]["score"] is not None and r["arm"]["score"] is not None]
    dp = [max((abs(p - r["arm"]["probabilities"].get(c, float("nan"))) for c, p in r["x86"]["probabilities"].items()),
              default=float("nan")) for r in both.values() if r["x86"]["probabilities"]]
    flips = sorted(n for n, r in both.items()
                   if (r["x86"]["status"] == "abstained") != (r["arm"]["status"] == "abstained"))
    return {"n": len(both), "score": stats(dscore), "p": stats(dp),
            "score_mean_signed": sum(signed) / len(signed) if signed else None,
            "labels_equal": sum(r["x86"]["label"] == r["arm"]["label"] for r in both.values()),
            "statuses_equal": sum(r["x86"]["status"] == r["arm"]["status"] for r in both.values()),
            "verdict_flips": flips}


def margins(images: dict[str, dict], threshold: float, band: float | None, nearest: int = 5) -> dict:
    """x86 score minus threshold per image: how many abstain, and how many lie within `band` of it.

    `band` is the cross-CPU drift measured for this model and precision: an image within it can get
    the other verdict on the other CPU.
    """
    m = {n: r["x86"]["score"] - threshold for n, r in images.items() if r["x86"]["score"] is not None}
    close = sorted(m, key=lambda n: abs(m[n]))
    return {"n": len(m), "threshold": threshold,
            "abstained": sum(r["x86"]["status"] == "abstained" for r in images.values()),
            "min_abs_margin": abs(m[close[0]]) if close else None, "band": band,
            "within_band": None if band is None else sum(abs(v) <= band for v in m.values()),
            "nearest": [[n, round(m[n], 4)] for n in close[:nearest]]}


def cross_precision(a: dict[str, dict], ta: float, b: dict[str, dict], tb: float) -> dict:
    """Two precisions of one model on the same images (x86): their margins (score - own threshold)
    differ by how much, and on how many images the abstention verdict differs. Raw scores are not
    compared: each precision has its own threshold."""
    common = [n for n in a if n in b and a[n]["x86"]["score"] is not None and b[n]["x86"]["score"] is not None]
    dm = [abs((a[n]["x86"]["score"] - ta) - (b[n]["x86"]["score"] - tb)) for n in common]
    disagree = sorted(n for n in common if (a[n]["x86"]["status"] == "abstained") != (b[n]["x86"]["status"] == "abstained"))
    labels = sum(a[n]["x86"]["label"] == b[n]["x86"]["label"] for n in common)
    return {"n": len(common), "margin_diff": stats(dm), "verdict_disagree": disagree, "labels_equal": labels}


def summarize(results: list[dict]) -> dict:
    """The drift report from the per-image results of one or more runs (`--split`, `--summarize`).

    Drift is measured per model and precision on the images emulated; the band for the margins of a
    split is the largest drift measured for that model and precision (on any split).
    """
    out: dict[str, list] = {"drift": [], "margins": [], "cross_precision": []}
    band: dict[tuple[str, str], float] = {}
    for r in results:
        d = drift(r["images"])
        if d["n"]:
            out["drift"].append({"model": r["model"], "precision": r["precision"], "split": r["split"],
                                 "threshold": r["threshold"], **d})
            key = (r["model"], r["precision"])
            band[key] = max(band.get(key, 0.0), d["score"].get("max", 0.0))
    for r in results:
        if r["threshold"] is not None:
            out["margins"].append({"model": r["model"], "precision": r["precision"], "split": r["split"],
                                   **margins(r["images"], r["threshold"], band.get((r["model"], r["precision"])))})
    by = {(r["model"], r["split"], r["precision"]): r for r in results if r["threshold"] is not None}
    for (model, split, prec), r in sorted(by.items()):
        for other in PRECISIONS[PRECISIONS.index(prec) + 1:] if prec in PRECISIONS else ():
            o = by.get((model, split, other))
            if o:
                out["cross_precision"].append({"model": model, "split": split, "precisions": [prec, other],
                                               **cross_precision(r["images"], r["threshold"], o["images"], o["threshold"])})
    return out


def merge(results: list[dict]) -> list[dict]:
    """Results of several runs, one per model/precision/split: images joined, an emulated entry of an
    image kept over one that ran on x86 only. Two runs of one precision must agree on its threshold."""
    out: dict[tuple[str, str, str], dict] = {}
    for r in results:
        key = (r["model"], r["precision"], r["split"])
        if key not in out:
            out[key] = {**r, "images": dict(r["images"])}
            continue
        have = out[key]
        if have["threshold"] != r["threshold"]:
            raise ValueError(f"{'/'.join(key)}: thresholds differ between runs ({have['threshold']} vs {r['threshold']})")
        for name, rec in r["images"].items():
            if name not in have["images"] or ("arm" in rec and "arm" not in have["images"][name]):
                have["images"][name] = rec
        have["emulated"] = sum("arm" in rec for rec in have["images"].values())
    return list(out.values())


def summary_lines(summary: dict) -> list[str]:
    """The report as text lines (markdown tables), what `--split` and `--summarize` print."""
    lines = [r"| model | precision | split | films emulated | max \|Δscore\| | p99 | p95 | p50 | mean Δscore (arm-x86) "
             r"| max \|Δp\| | p99 \|Δp\| | labels | statuses | verdict flips |", "|" + "---|" * 14]
    for d in summary["drift"]:
        lines.append(f"| {d['model']} | {d['precision']} | {d['split']} | {d['n']} | {d['score']['max']:.3f} | "
                     f"{d['score']['p99']:.3f} | {d['score']['p95']:.3f} | {d['score']['p50']:.3f} | "
                     f"{d['score_mean_signed']:+.3f} | {d['p']['max']:.1e} | {d['p']['p99']:.1e} | "
                     f"{d['labels_equal']}/{d['n']} | {d['statuses_equal']}/{d['n']} | "
                     f"{', '.join(d['verdict_flips']) or 'none'} |")
    lines += ["", r"| model | precision | split | films (x86) | threshold | abstained | min \|margin\| "
              r"| band (max \|Δscore\|) | within band | nearest (film: score - threshold) |", "|" + "---|" * 10]
    for m in summary["margins"]:
        near = "; ".join(f"{n}: {v:+.3f}" for n, v in m["nearest"][:3])
        band = "-" if m["band"] is None else f"{m['band']:.3f}"
        within = "-" if m["within_band"] is None else str(m["within_band"])
        lines.append(f"| {m['model']} | {m['precision']} | {m['split']} | {m['n']} | {m['threshold']:.3f} | "
                     f"{m['abstained']} | {m['min_abs_margin']:.3f} | {band} | {within} | {near} |")
    lines += ["", r"| model | split | precisions | films | max \|Δmargin\| | p95 | p50 | labels equal | verdicts differ |",
              "|" + "---|" * 9]
    for c in summary["cross_precision"]:
        lines.append(f"| {c['model']} | {c['split']} | {' vs '.join(c['precisions'])} | {c['n']} | "
                     f"{c['margin_diff']['max']:.3f} | {c['margin_diff']['p95']:.3f} | {c['margin_diff']['p50']:.3f} | "
                     f"{c['labels_equal']}/{c['n']} | {', '.join(c['verdict_disagree']) or 'none'} |")
    return lines


def split_films(manifest: Path, split: str, limit: int = 0) -> list[Path]:
    """The films of one split of a manifest (paths relative to its folder); `limit` spreads that many
    evenly over the split (0: all). Names must be unique: results are keyed by file name."""
    with manifest.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split") == split]
    films = [manifest.parent / r["relative_path"] for r in rows]
    if limit and limit < len(films):
        films = [films[i * len(films) // limit] for i in range(limit)]
    names = [f.name for f in films]
    if len(set(names)) != len(names):
        raise ValueError(f"{manifest}: file names repeat within split {split!r}")
    return films


def tolerance(model: str, precision: str) -> float:
    """The gated file's own max |Δp| against its reference: how far the gate let this precision move."""
    meta = json.loads((REPO / "edgecxr" / "reference" / model / "bundle.json").read_text())
    entry = (meta.get("gate") or {}).get(f"onnx_{precision}") or {}
    return float(entry.get("max_abs_diff") or 1e-4)


def infer_both(model: str, prec: str, images: list[Path], host_edgecxr: Path, env: dict[str, str],
               arm: bool = True) -> tuple[dict, dict | None, float]:
    """`edgecxr infer --json` on x86 and (unless `arm` is false) in the root; (x86, arm, emulated seconds).

    Raises RuntimeError with the last stderr line when either side fails."""
    host = subprocess.run(infer_cmd(str(host_edgecxr), model, prec, [str(p) for p in images]),
                          text=True, capture_output=True, cwd=REPO, env={**os.environ, "EDGECXR_CPU_RUNTIME": "onnxruntime"})
    if host.returncode not in (0, 1):
        raise RuntimeError("x86: " + ((host.stderr.strip().splitlines() or ["?"])[-1]))
    if not arm:
        return json.loads(host.stdout), None, 0.0
    t0 = time.monotonic()
    res = chroot(" ".join(_q(a) for a in infer_cmd(f"{VENV}/bin/edgecxr", model, prec,
                                                    [f"/tmp/images/{p.name}" for p in images])), env, capture=True)
    took = time.monotonic() - t0
    if res.returncode not in (0, 1):
        raise RuntimeError("aarch64: " + ((res.stderr.strip().splitlines() or ["?"])[-1]))
    return json.loads(host.stdout), json.loads(res.stdout), took


def split_result(model: str, prec: str, split: str, x86_doc: dict, arm_doc: dict | None, truth: dict[str, str]) -> dict:
    """One model/precision/split of the drift file: per image, the x86 entry and (if emulated) the arm one."""
    arm = {Path(p["source"]).name: entry(p) for p in (arm_doc or {}).get("predictions", [])}
    images = {}
    for p in x86_doc["predictions"]:
        name = Path(p["source"]).name
        images[name] = {"truth": truth.get(name), "x86": entry(p), **({"arm": arm[name]} if name in arm else {})}
    return {"model": model, "precision": prec, "split": split, "threshold": x86_doc["audit"].get("ood_threshold"),
            "emulated": len(arm), "images": images}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, default=REPO / "dist", help="folder with the wheels (`make dist`)")
    ap.add_argument("--images", type=int, default=4, help="how many examples/images (spread over the classes)")
    ap.add_argument("--cpu", default="cortex-a76", help="QEMU_CPU: a core like Orin's Cortex-A78AE")
    ap.add_argument("--models", default="coronet,cnn-lstm", help="comma-separated")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON written (default: ~/.cache/edgecxr/arm64-check/arm64-check.json; with --split "
                         "runs/arm64/drift-SPLIT.json)")
    ap.add_argument("--split", help="measure the OOD-score drift on this split of --manifest instead of the examples")
    ap.add_argument("--manifest", type=Path, help="manifest.csv of --split (paths relative to its folder)")
    ap.add_argument("--limit", type=int, default=0,
                    help="with --split: emulate only this many films, spread over the split (x86 runs all); 0: all")
    ap.add_argument("--emulate", default="all",
                    help="with --split: the MODEL/PRECISION pairs to emulate, comma-separated (the others run on "
                         "x86 only, for margins); 'all' (default) or 'none'")
    ap.add_argument("--x86-splits", default="", help="with --split: also run these splits on x86 only, for margins")
    ap.add_argument("--x86-edgecxr", type=Path, default=REPO / ".venv" / "bin" / "edgecxr",
                    help="the x86 side's edgecxr (default: this checkout's venv; a venv with the same wheels "
                         "pins it while the checkout changes)")
    ap.add_argument("--slow", action="store_true",
                    help="also emulate " + ", ".join("/".join(p) for p in sorted(SLOW)) + " (minutes per image)")
    ap.add_argument("--no-install", action="store_true", help="reuse the wheels already installed in the root")
    ap.add_argument("--summarize", type=Path, nargs="+", metavar="JSON",
                    help="print the drift report of earlier --split runs (merged) and exit; no emulation")
    args = ap.parse_args(argv)
    if args.summarize:
        return summarize_files(args.summarize)
    if args.split and not args.manifest:
        fail("--split needs --manifest")
    start = time.monotonic()
    if os.geteuid() != 0:
        fail("needs root (debootstrap, chroot, mounts)")
    for tool in ("qemu-aarch64-static", "debootstrap", "unshare", "chroot"):
        if not shutil.which(tool):
            fail(f"{tool} not found: apt-get install -y qemu-user-static debootstrap")
    wheels = sorted(args.wheels.glob("*.whl"))
    if not args.no_install and not any(w.name.startswith("edgecxr-") for w in wheels):
        fail(f"no edgecxr wheel in {args.wheels} (run `make dist`)")
    host_edgecxr = args.x86_edgecxr
    if not host_edgecxr.exists():
        fail(f"{host_edgecxr} missing (run `make setup`)")
    truth: dict[str, str] = {}
    x86_only: dict[str, list[Path]] = {}
    if args.split:
        try:
            all_films = split_films(args.manifest, args.split)
            images = split_films(args.manifest, args.split, args.limit)
            x86_only = {s: split_films(args.manifest, s) for s in filter(None, args.x86_splits.split(","))}
            with args.manifest.open(newline="") as fh:
                truth = {Path(r["relative_path"]).name: r["label"] for r in csv.DictReader(fh)}
        except (OSError, KeyError, ValueError) as exc:
            fail(f"cannot read {args.manifest}: {exc}")
        if not images:
            fail(f"no films of split {args.split!r} in {args.manifest}")
    else:
        files = sorted(p for p in (REPO / "examples" / "images").rglob("*.png"))
        step = max(1, len(files) // max(1, args.images))
        images = files[::step][: args.images]
    out = args.out or (REPO / "runs" / "arm64" / f"drift-{args.split}.json" if args.split
                       else CACHE / "arm64-check" / "arm64-check.json")

    ensure_binfmt()
    ensure_root()
    t_root = time.monotonic()
    if not args.no_install:
        log(f"installing {len(wheels)} wheel(s) and their aarch64 dependencies")
        install(wheels, args.cpu)
    t_inst = time.monotonic()
    imgdir = ROOT / "tmp" / "images"
    shutil.rmtree(imgdir, ignore_errors=True)
    imgdir.mkdir(parents=True)
    for p in images:
        shutil.copy2(p, imgdir / p.name)
    env = {"PATH": f"{VENV}/bin:/usr/bin:/bin", "HOME": "/root", "QEMU_CPU": args.cpu, "EDGECXR_CPU_RUNTIME": "onnxruntime"}
    probe = chroot(f"{VENV}/bin/python -c " + _q(
        "import json, onnxruntime; from edgecxr.runtime import sysinfo; from edgecxr.runtime.select import choose_artifact; "
        "from edgecxr.runtime.store import resolve; from edgecxr.core.bundle import Bundle; f = sysinfo.cpu_features(); "
        "print(json.dumps({'cpu_class': f.cpu_class, 'int8_fast': f.int8_fast, 'source': f.source, "
        "'onnxruntime': onnxruntime.__version__, 'auto': {m: choose_artifact(Bundle.load(resolve(m))).precision for m in "
        f"{args.models.split(',')!r}" "}}))"), env, capture=True)
    if probe.returncode:
        fail(f"the runtime does not start in the arm64 root: {(probe.stderr.strip().splitlines() or ['?'])[-1]}", 1)
    arm_info = json.loads(probe.stdout.strip().splitlines()[-1])
    log(f"emulated {args.cpu}: {arm_info}")
    if args.split:
        return run_split(args, images, all_films, x86_only, truth, host_edgecxr, env, arm_info, out, start)

    rows, timings = [], {}
    for model in args.models.split(","):
        for prec in args.precisions.split(","):
            if (model, prec) in SLOW and not args.slow:
                log(f"{model} {prec}: skipped (minutes per image under emulation; --slow runs it)")
                continue
            try:
                host, arm, took = infer_both(model, prec, images, host_edgecxr, env)
            except RuntimeError as exc:
                rows.append({"model": model, "precision": prec, "ok": False, "error": str(exc)})
                log(f"{model} {prec}: failed: {exc}")
                continue
            timings[f"{model}/{prec}"] = round(took, 1)
            row = {"model": model, "precision": prec,
                   **compare(parse_doc(host), parse_doc(arm), tolerance(model, prec))}
            rows.append(row)
            log(f"{model} {prec}: labels {row['labels']}/{row['n']}, statuses {row['statuses']}/{row['n']}, "
                f"max|Δp| {row['max_dp']:.2e} (tol {row['tol']:.2e}), max|Δood| {row['max_dood']:.3f}, "
                f"{timings[f'{model}/{prec}']} s" + (f", arithmetic: {row['arm_arithmetic']}" if row["arm_arithmetic"] else ""))
    total = time.monotonic() - start
    ok = all(r["ok"] for r in rows)
    report = {"cpu": args.cpu, "arm": arm_info, "images": [p.name for p in images], "rows": rows,
              "seconds": {"root": round(t_root - start, 1), "install": round(t_inst - t_root, 1), "infer": timings,
                          "total": round(total, 1)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    parts = [f"{r['model']} {r['precision']} " + ("ERROR" if "error" in r else
             f"{r['labels']}/{r['n']} labels {r['statuses']}/{r['n']} statuses |Δp|<={r['max_dp']:.1e}") for r in rows]
    print(f"arm64-check ({args.cpu}, onnxruntime {arm_info['onnxruntime']}, auto: "
          f"{', '.join(f'{m} {p}' for m, p in arm_info['auto'].items())}): {'; '.join(parts)}; "
          f"{'PASS' if ok else 'FAIL'} in {total / 60:.1f} min ({out})")
    return 0 if ok else 1


def run_split(args: argparse.Namespace, images: list[Path], all_films: list[Path], x86_only: dict[str, list[Path]],
              truth: dict[str, str], host_edgecxr: Path, env: dict[str, str], arm_info: dict, out: Path,
              start: float) -> int:
    """`--split`: per image, score and probabilities on x86 (all films) and aarch64 (`images`), written
    to `out`; prints the drift report. A measurement: exit 0 when every run finished, 1 otherwise."""
    results, timings, errors = [], {}, []
    emulated = {p.name for p in images}
    rest = [p for p in all_films if p.name not in emulated]
    for model in args.models.split(","):
        for prec in args.precisions.split(","):
            emulate = ((args.emulate == "all" or f"{model}/{prec}" in args.emulate.split(","))
                       and (args.slow or (model, prec) not in SLOW))
            try:
                if not emulate:
                    host, _, _ = infer_both(model, prec, all_films, host_edgecxr, env, arm=False)
                    results.append(split_result(model, prec, args.split, host, None, truth))
                    for split, films in x86_only.items():
                        doc, _, _ = infer_both(model, prec, films, host_edgecxr, env, arm=False)
                        results.append(split_result(model, prec, split, doc, None, truth))
                    log(f"{model} {prec}: x86 only")
                    continue
                host, arm, took = infer_both(model, prec, images, host_edgecxr, env)
                if rest:
                    more, _, _ = infer_both(model, prec, rest, host_edgecxr, env, arm=False)
                    host["predictions"] += more["predictions"]
                results.append(split_result(model, prec, args.split, host, arm, truth))
                per = sum((p.get("preprocess_ms") or 0) + (p.get("inference_ms") or 0) for p in arm["predictions"])
                timings[f"{model}/{prec}"] = {"seconds": round(took, 1), "films": len(images),
                                              "ms_per_film_in_run": round(per / max(1, len(images)))}
                log(f"{model} {prec}: {len(images)} film(s) emulated in {took:.0f} s "
                    f"({per / max(1, len(images)) / 1000:.1f} s per film preprocessing + inference)")
                for split, films in x86_only.items():
                    doc, _, _ = infer_both(model, prec, films, host_edgecxr, env, arm=False)
                    results.append(split_result(model, prec, split, doc, None, truth))
            except RuntimeError as exc:
                errors.append(f"{model} {prec}: {exc}")
                log(f"{model} {prec}: failed: {exc}")
    total = time.monotonic() - start
    summary = summarize(results)
    doc = {"kind": "arm64-drift", "cpu": args.cpu, "arm": arm_info, "x86": {"onnxruntime": _host_ort(host_edgecxr), "edgecxr": str(host_edgecxr)},
           "manifest": str(args.manifest), "split": args.split, "limit": args.limit, "errors": errors,
           "seconds": {"infer": timings, "total": round(total, 1)}, "summary": summary, "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(summary_lines(summary)))
    print(f"arm64-check drift on {args.split} ({args.cpu}, onnxruntime {arm_info['onnxruntime']}): "
          f"{len(results)} run(s), {len(errors)} failed, {total / 60:.1f} min ({out})")
    return 1 if errors else 0


def summarize_files(paths: list[Path]) -> int:
    """`--summarize`: the drift report of earlier `--split` runs, merged (e.g. INT8 on all of val and
    FP16 on a part of it)."""
    results = []
    for p in paths:
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            fail(f"cannot read {p}: {exc}")
        if doc.get("kind") != "arm64-drift":
            fail(f"{p} is not a drift file of `arm64_check.py --split`")
        results += doc["results"]
    try:
        results = merge(results)
    except ValueError as exc:
        fail(str(exc))
    print("\n".join(summary_lines(summarize(results))))
    return 0


def _host_ort(edgecxr: Path) -> str | None:
    """onnxruntime's version in the x86 side's environment."""
    res = subprocess.run([str(edgecxr.parent / "python"), "-c", "import onnxruntime; print(onnxruntime.__version__)"],
                         text=True, capture_output=True)
    return res.stdout.strip() or None

if __name__ == "__main__":
    sys.exit(main())
