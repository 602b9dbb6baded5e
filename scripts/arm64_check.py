"""`make arm64-check`: the wheels on an emulated aarch64 CPU like Jetson Orin's, compared with x86 (issue 27).

    python scripts/arm64_check.py [--wheels dist] [--images 4] [--cpu cortex-a76] [--models coronet] [--precisions fp16,int8]

What it does, as root on a Debian/Ubuntu x86 machine (minutes under emulation, not part of `make test`):

1. makes or reuses an arm64 Debian root (`debootstrap --arch=arm64 --variant=minbase bookworm`, with
   python3 and python3-venv) under ~/.cache/edgecxr/arm64-root, run through QEMU user-mode emulation
   (qemu-user-static, its binfmt entry registered with the F flag so it works inside the chroot);
2. installs the wheels of `--wheels` (`make dist`: edgecxr and the model wheels) into a venv there, with
   their aarch64 dependency wheels from the index (binary only; the host's CA bundle is copied in);
3. runs `edgecxr infer --json` for each reference model and precision on a handful of examples/images,
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

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EDGECXR_ARM64_CACHE", Path.home() / ".cache" / "edgecxr"))
ROOT = CACHE / "arm64-root"
VENV = "/opt/edgecxr"  #: inside the root
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
PRECISIONS = ("fp16", "int8")


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


def parse(out: str) -> dict[str, dict]:
    doc = json.loads(out)
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


def tolerance(model: str, precision: str) -> float:
    """The gated file's own max |Δp| against its reference: how far the gate let this precision move."""
    meta = json.loads((REPO / "edgecxr" / "reference" / model / "bundle.json").read_text())
    entry = (meta.get("gate") or {}).get(f"onnx_{precision}") or {}
    return float(entry.get("max_abs_diff") or 1e-4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheels", type=Path, default=REPO / "dist", help="folder with the wheels (`make dist`)")
    ap.add_argument("--images", type=int, default=4, help="how many examples/images (spread over the classes)")
    ap.add_argument("--cpu", default="cortex-a76", help="QEMU_CPU: a core like Orin's Cortex-A78AE")
    ap.add_argument("--models", default="coronet", help="comma-separated; cnn-lstm FP16 takes long under emulation")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--out", type=Path, default=CACHE / "arm64-check" / "arm64-check.json")
    args = ap.parse_args(argv)
    start = time.monotonic()
    if os.geteuid() != 0:
        fail("needs root (debootstrap, chroot, mounts)")
    for tool in ("qemu-aarch64-static", "debootstrap", "unshare", "chroot"):
        if not shutil.which(tool):
            fail(f"{tool} not found: apt-get install -y qemu-user-static debootstrap")
    wheels = sorted(args.wheels.glob("*.whl"))
    if not any(w.name.startswith("edgecxr-") for w in wheels):
        fail(f"no edgecxr wheel in {args.wheels} (run `make dist`)")
    host_edgecxr = REPO / ".venv" / "bin" / "edgecxr"
    if not host_edgecxr.exists():
        fail(f"{host_edgecxr} missing (run `make setup`)")
    files = sorted(p for p in (REPO / "examples" / "images").rglob("*.png"))
    step = max(1, len(files) // max(1, args.images))
    images = files[::step][: args.images]

    ensure_binfmt()
    ensure_root()
    t_root = time.monotonic()
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

    rows, timings = [], {}
    for model in args.models.split(","):
        for prec in args.precisions.split(","):
            host = subprocess.run(infer_cmd(str(host_edgecxr), model, prec, [str(p) for p in images]),
                                  text=True, capture_output=True, cwd=REPO, env={**os.environ, "EDGECXR_CPU_RUNTIME": "onnxruntime"})
            t0 = time.monotonic()
            arm = chroot(" ".join(_q(a) for a in infer_cmd(f"{VENV}/bin/edgecxr", model, prec,
                                                            [f"/tmp/images/{p.name}" for p in images])), env, capture=True)
            timings[f"{model}/{prec}"] = round(time.monotonic() - t0, 1)
            if host.returncode not in (0, 1) or arm.returncode not in (0, 1):
                err = (arm.stderr or host.stderr).strip().splitlines() or ["?"]
                rows.append({"model": model, "precision": prec, "ok": False, "error": err[-1]})
                log(f"{model} {prec}: failed: {err[-1]}")
                continue
            row = {"model": model, "precision": prec, **compare(parse(host.stdout), parse(arm.stdout), tolerance(model, prec))}
            rows.append(row)
            log(f"{model} {prec}: labels {row['labels']}/{row['n']}, statuses {row['statuses']}/{row['n']}, "
                f"max|Δp| {row['max_dp']:.2e} (tol {row['tol']:.2e}), max|Δood| {row['max_dood']:.3f}, "
                f"{timings[f'{model}/{prec}']} s" + (f", arithmetic: {row['arm_arithmetic']}" if row["arm_arithmetic"] else ""))
    total = time.monotonic() - start
    ok = all(r["ok"] for r in rows)
    report = {"cpu": args.cpu, "arm": arm_info, "images": [p.name for p in images], "rows": rows,
              "seconds": {"root": round(t_root - start, 1), "install": round(t_inst - t_root, 1), "infer": timings,
                          "total": round(total, 1)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    parts = [f"{r['model']} {r['precision']} " + ("ERROR" if "error" in r else
             f"{r['labels']}/{r['n']} labels {r['statuses']}/{r['n']} statuses |Δp|<={r['max_dp']:.1e}") for r in rows]
    print(f"arm64-check ({args.cpu}, onnxruntime {arm_info['onnxruntime']}, auto: "
          f"{', '.join(f'{m} {p}' for m, p in arm_info['auto'].items())}): {'; '.join(parts)}; "
          f"{'PASS' if ok else 'FAIL'} in {total / 60:.1f} min ({args.out})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
