"""`make triton-check`: NVIDIA's real Triton server on `edgecxr export triton`'s repository answers like `edgecxr infer`.

    python scripts/triton_check.py --triton-venv ~/.cache/edgecxr/triton-check/venv

The venv (made by `make triton-check`) holds the `nvidia-pytriton` wheel, whose `tritonserver`
(CPU-only here, with the Python backend) is started directly, plus what the Python-backend models
import (numpy, onnxruntime, opencv-python-headless). The backend's stub embeds Python isolated
(PYTHONPATH is ignored): it finds the venv as its prefix because the venv's bin/ comes first on the
server's PATH (as pytriton arranges), with the venv's base libpython first on LD_LIBRARY_PATH. This
script runs in edgecxr's own venv (edgecxr, tritonclient from the dev extra):

1. exports MODEL with `--flavour python` (the gated ONNX through ONNX Runtime in the Python
   backend) and with the default onnxruntime flavour, each into its own repository;
2. starts `tritonserver` on 127.0.0.1 over the python-flavour repository and classifies every
   example image through tritonclient over HTTP and gRPC: the encoded file into MODEL_image (the
   server decodes and preprocesses it) and, with Triton's classification extension (class_count),
   edgecxr's preprocessed tensor into MODEL;
3. compares every answer with `edgecxr infer --backend onnxruntime --precision P` (P the exported
   precision; the server's outputs through the bundle's temperature and OOD score as infer's are):
   same label and status, max |dp| <= TOL, |d OOD score| <= OOD_TOL;
4. starts the server over the onnxruntime-flavour repository and requires every model to load
   except those needing the onnxruntime backend, which must fail with "unable to find backend
   library" (configs accepted by the real parser; the backend is not in the wheel).

Prints one summary line naming the Triton server version; exit 0 only when everything matched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
#: largest |dp| between the server's (temperature-scaled) probabilities and edgecxr infer's. Both run
#: the same model file (the exported precision's) through ONNX Runtime with the same session options
#: (make triton-check installs infer's onnxruntime version into the Triton venv), so nothing but
#: float summation order and infer's 6-decimal JSON separates them: measured <= 5e-7 for INT8.
TOL = 1e-4
#: largest |d| between the OOD score from the server's features and infer's (which rounds to 4 decimals)
OOD_TOL = 1e-3


class CheckError(RuntimeError):
    """The check could not run to the comparison (server, model or edgecxr failed): one line."""


def server_files(venv: Path) -> dict[str, Path]:
    """tritonserver, its libraries, the Python backend and the stub for the venv's Python, from the wheel."""
    if not (venv / "bin" / "python").exists():
        raise CheckError(f"no Python venv at {venv}; run `make triton-check` (it creates it and installs nvidia-pytriton)")
    py = subprocess.run([str(venv / "bin" / "python"), "-c",
                         "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}');"
                         "print(sysconfig.get_paths()['purelib']);"
                         "print(sysconfig.get_config_var('LIBDIR') or '-'); print(sysconfig.get_config_var('INSTSONAME') or '-')"],
                        capture_output=True, text=True, check=True)
    version, site, libdir, soname = py.stdout.split()
    root = Path(site) / "pytriton" / "tritonserver"
    files = {"server": root / "bin" / "tritonserver", "libs": Path(site) / "nvidia_pytriton.libs",
             "python_backend": root / "backends" / "python",
             "stub": root / "python_backend_stubs" / version / "triton_python_backend_stub", "bin": venv / "bin"}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise CheckError(f"{venv} has no nvidia-pytriton server ({missing[0]} missing); run `make triton-check` "
                         "(it installs nvidia-pytriton)")
    # the stub links libpython3.X.so.1.0 by name: the venv's own, where its Python has one, so that the
    # interpreter and the standard library it finds (the venv's base) are the same build
    files["libpython"] = Path(libdir) if (Path(libdir) / soname).is_file() else None
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One tritonserver process over one repository, on free 127.0.0.1 ports; stopped on exit."""

    def __init__(self, files: dict[str, Path], repo: Path, work: Path, exit_on_error: bool = True):
        backends = work / "backends"
        if not (backends / "python").is_dir():  # the backend folder with the stub beside libtriton_python.so
            shutil.copytree(files["python_backend"], backends / "python")
            shutil.copy2(files["stub"], backends / "python" / "triton_python_backend_stub")
        self.repo = repo
        self.http, self.grpc = free_port(), free_port()
        self.log = work / f"tritonserver-{repo.name}.log"
        # The stub embeds Python isolated (PYTHONPATH and PYTHONHOME are ignored) and, having no program
        # name, finds its prefix from the first `python3` on PATH: the venv's, whose pyvenv.cfg puts the
        # venv's site-packages (numpy, onnxruntime, cv2) on sys.path, as pytriton itself arranges.
        libs = [str(files["libs"]), str(files["libpython"] or ""), os.environ.get("LD_LIBRARY_PATH", "")]
        env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, libs)),
                   PATH=os.pathsep.join([str(files["bin"]), os.environ.get("PATH", "")]))
        env.pop("PYTHONHOME", None)
        cmd = [str(files["server"]), "--model-repository", str(repo), "--backend-directory", str(backends),
               "--http-address", "127.0.0.1", "--http-port", str(self.http),
               "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc), "--allow-metrics", "false",
               "--exit-on-error", str(exit_on_error).lower(), "--strict-readiness", "false"]
        self.clients: dict[str, Any] = {}
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)

    def client(self, protocol: str = "http") -> Any:
        """A tritonclient client for this server, closed by stop() (an open keep-alive connection would
        hold the server's shutdown for its 30 s exit timeout)."""
        import tritonclient.grpc as grpc
        import tritonclient.http as http

        module, port = (http, self.http) if protocol == "http" else (grpc, self.grpc)
        if protocol not in self.clients:
            self.clients[protocol] = module.InferenceServerClient(f"127.0.0.1:{port}")
        return self.clients[protocol]

    def wait_live(self, timeout: float) -> None:
        client = self.client()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise CheckError(f"tritonserver exited ({self.proc.returncode}): {self.failure()}")
            try:
                if client.is_server_live():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        raise CheckError(f"tritonserver not live after {timeout:.0f} s: {self.failure()}")

    def failure(self) -> str:
        """The server log's first model-load error (its first line), else its last line, and where the log is."""
        lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        first = next((ln for ln in lines if "failed to load" in ln), lines[-1] if lines else "(empty log)")
        return f"{first.split(chr(92) + 'n')[0][:400]} (log: {self.log})"

    def stop(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def edgecxr(*args: str, ok: tuple[int, ...] = (0,)) -> str:
    res = subprocess.run([sys.executable, "-m", "edgecxr", *args], capture_output=True, text=True)
    if res.returncode not in ok or not res.stdout.strip():
        raise CheckError(f"edgecxr {' '.join(args[:2])} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return res.stdout


def wait_ready(client: Any, models: list[str], timeout: float, server: Server) -> None:
    end = time.monotonic() + timeout
    while not all(client.is_model_ready(m) for m in models):
        if time.monotonic() > end or server.proc.poll() is not None:
            raise CheckError(f"models {models} not ready after {timeout:.0f} s: {server.failure()}")
        time.sleep(0.5)


def ask(module: Any, client: Any, model: str, name: str, array: np.ndarray, dtype: str, outputs: list[str],
        class_count: int = 0) -> list[np.ndarray]:
    """The named outputs of one request (class_count: Triton's classification extension on each)."""
    inp = module.InferInput(name, list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    wanted = [module.InferRequestedOutput(o, class_count=class_count) if class_count else module.InferRequestedOutput(o)
              for o in outputs]
    result = client.infer(model, [inp], outputs=wanted)
    return [result.as_numpy(o) for o in outputs]


def classify_all(server: Server, model: str, images: list[Path], bundle: Any, timeout: float) -> dict[str, Any]:
    """{protocol: {"files": raw probs (N, C), "features": (N, D) or None, "labels": top-1 label via
    class_count}} for each of HTTP and gRPC."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    from edgecxr.core.spec import preprocess
    from edgecxr.data.io import load_image
    from edgecxr.runtime.base import FEATURES
    from edgecxr.stages.export.triton import FILE_INPUT
    from edgecxr.stages.export.triton_config import onnx_io

    tensor_in, outputs, _ = onnx_io(server.repo / model / "1" / "model.onnx")
    probs_name = outputs[0].name
    names = [probs_name] + [o.name for o in outputs[1:] if o.name == FEATURES]  # what the OOD score needs
    spec = bundle.spec
    tensors = [preprocess(load_image(p, (spec.height, spec.width)), spec)[None].astype(np.float32) for p in images]
    answers: dict[str, Any] = {}
    for proto, module in (("http", http), ("grpc", grpc)):
        client = server.client(proto)
        wait_ready(client, [model, f"{model}_image"], timeout, server)
        files = [ask(module, client, f"{model}_image", FILE_INPUT, np.array([[p.read_bytes()]], dtype=object),
                     "BYTES", names) for p in images]
        labels = []
        for t in tensors:
            top = ask(module, client, model, tensor_in[0].name, t, "FP32", [probs_name], class_count=1)[0]
            entry = top.reshape(-1)[0]
            labels.append((entry.decode() if isinstance(entry, bytes) else str(entry)).split(":", 2)[2])
        answers[proto] = {"files": np.stack([f[0][0] for f in files]).astype(np.float64), "labels": labels,
                          "features": np.stack([f[1][0] for f in files]) if len(names) > 1 else None}
    return answers


def repository_states(server: Server) -> dict[str, tuple[str, str]]:
    client = server.client()
    return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in client.get_model_repository_index()}


def main(argv: list[str] | None = None) -> int:
    """Exit 0: every answer matched; 1: a mismatch, or the check could not run (one line why); 2: usage."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triton-venv", type=Path, required=True)
    ap.add_argument("--model", default="coronet")
    ap.add_argument("--images", type=Path, nargs="*", help="default: examples/images/*/*.png")
    ap.add_argument("--work", type=Path, help="keep repositories and server logs here (default: a temp folder)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds for the server and models to come up")
    args = ap.parse_args(argv)
    from tritonclient.utils import InferenceServerException

    from edgecxr.core.errors import EdgeCXRError

    try:
        return check(args)
    except (CheckError, EdgeCXRError, InferenceServerException) as exc:  # one line, no traceback
        print(f"triton-check: FAILED: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1


def check(args: argparse.Namespace) -> int:
    from edgecxr.core.bundle import Bundle
    from edgecxr.runtime import store
    from edgecxr.runtime.base import FEATURES, PROBABILITIES
    from edgecxr.runtime.confidence import Confidence

    t0 = time.monotonic()
    files = server_files(args.triton_venv.expanduser())
    images = args.images or sorted((REPO_ROOT / "examples" / "images").glob("*/*.png"))
    bundle = Bundle.load(store.resolve(args.model))
    work = args.work or Path(tempfile.mkdtemp(prefix="edgecxr-triton-check-"))
    work.mkdir(parents=True, exist_ok=True)
    repos = {flavour: work / f"repo-{flavour}" for flavour in ("python", "onnxruntime")}
    for flavour, repo in repos.items():
        shutil.rmtree(repo, ignore_errors=True)
        edgecxr("export", "triton", "-m", args.model, "--flavour", flavour, "--no-engines", "--out", str(repo))
    name = bundle.model
    exported = json.loads((repos["python"] / "edgecxr-triton.json").read_text())["models"][name]["onnx"]
    doc = json.loads(edgecxr("infer", "-m", args.model, "--backend", "onnxruntime", "--precision",
                             exported["precision"], "--no-input-checks", "--json", *map(str, images),
                             ok=(0, 1)))  # 1: an input abstained (out of distribution); it still has a label
    want = {Path(p["source"]).name: p for p in doc["predictions"]}
    classes = doc["classes"]
    confidence = Confidence.from_bundle(bundle)  # what infer does after the model: temperature, OOD score

    problems: list[str] = []
    server = Server(files, repos["python"], work)
    try:
        server.wait_live(args.timeout)
        version = server.client().get_server_metadata()["version"]
        answers = classify_all(server, name, images, bundle, args.timeout)
    finally:
        server.stop()
    worst_dp = worst_dood = 0.0
    for proto, got in answers.items():
        outputs = {PROBABILITIES: got["files"]} | ({FEATURES: got["features"]} if got["features"] is not None else {})
        scaled, scores, threshold = confidence.apply(outputs, exported["precision"])
        for i, path in enumerate(images):
            ref = want[path.name]
            ref_p = np.array([ref["probabilities"][c] for c in classes])
            label = classes[int(scaled[i].argmax())]  # the calibrated argmax, as infer reports it
            dp = float(np.abs(scaled[i] - ref_p).max())
            worst_dp = max(worst_dp, dp)
            if label != ref["label"] or dp > TOL:
                problems.append(f"{proto} {path.name}: file -> {label} (max|dp| {dp:.1e}), infer -> {ref['label']}")
            score = None if scores is None else float(scores[i])
            status = "abstained" if score is not None and threshold is not None and not score <= threshold else "ok"
            if ref.get("ood_score") is not None or score is not None:
                dood = abs(score - ref["ood_score"]) if score is not None and ref.get("ood_score") is not None else np.inf
                worst_dood = max(worst_dood, dood)
                if not dood <= OOD_TOL:
                    problems.append(f"{proto} {path.name}: OOD score {score}, infer {ref.get('ood_score')}")
            if status != ref["status"]:
                problems.append(f"{proto} {path.name}: status {status} (OOD score {score}), infer -> {ref['status']}")
            if got["labels"][i] != ref["label"]:
                problems.append(f"{proto} {path.name}: class_count=1 -> {got['labels'][i]}, infer -> {ref['label']}")

    served = len(problems)
    ort_server = Server(files, repos["onnxruntime"], work, exit_on_error=False)
    try:
        ort_server.wait_live(args.timeout)
        end = time.monotonic() + args.timeout
        states = repository_states(ort_server)
        # the server answers only after its start-up loads are over; an ensemble whose member failed
        # is never attempted (state ""), so only LOADING is worth waiting for
        while any(s == "LOADING" for s, _ in states.values()) and time.monotonic() < end:
            time.sleep(0.5)
            states = repository_states(ort_server)
    finally:
        ort_server.stop()
    for model, (state, reason) in sorted(states.items()):
        needs_ort = model in (name, f"{name}_image")
        if not needs_ort and state != "READY":
            problems.append(f"onnxruntime-flavour {model}: {state} ({reason})")
        if model == name and "unable to find backend library" not in reason:
            problems.append(f"onnxruntime-flavour {model}: expected 'unable to find backend library', got {state} ({reason})")
    if name not in states:
        problems.append(f"onnxruntime-flavour repository: {name} not listed by the server")

    for p in problems:
        print(f"MISMATCH {p}", file=sys.stderr)
    verdict = "all match" if not served else f"{served} MISMATCHES"
    loaded = ("as expected" if len(problems) == served else f"{len(problems) - served} PROBLEMS")
    print(f"triton-check: Triton server {version}: {len(images)} images x HTTP+gRPC (file ensemble and class_count) vs "
          f"edgecxr infer ({exported['precision']} ONNX, python flavour): {verdict} (label, status; max |dp| "
          f"{worst_dp:.1e}, max |d OOD| {worst_dood:.1e}); onnxruntime flavour: {len(states)} models, {name} "
          f"stops at 'unable to find backend library' {loaded} [{time.monotonic() - t0:.0f} s]")
    if problems:
        print(f"triton-check: repositories and server logs kept in {work}", file=sys.stderr)
    if args.work is None and not problems:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
