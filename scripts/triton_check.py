"""`make triton-check`: NVIDIA's real Triton server on `edgecxr export triton`'s repository answers like `edgecxr infer`.

    python scripts/triton_check.py --triton-venv ~/.cache/edgecxr/triton-check/venv

The venv (made by `make triton-check`) holds the `nvidia-pytriton` wheel, whose `tritonserver`
(CPU-only here, with the Python backend) is started directly, plus what the Python-backend models
import (numpy, onnxruntime, opencv-python-headless). This script runs in edgecxr's own venv
(edgecxr, tritonclient from the dev extra):

1. exports MODEL with `--flavour python` (the gated ONNX through ONNX Runtime in the Python
   backend) and with the default onnxruntime flavour, each into its own repository;
2. starts `tritonserver` on 127.0.0.1 over the python-flavour repository and classifies every
   example image through tritonclient over HTTP and gRPC: the encoded file into MODEL_image (the
   server decodes and preprocesses it) and, with Triton's classification extension (class_count),
   edgecxr's preprocessed tensor into MODEL;
3. compares every answer with `edgecxr infer --backend onnxruntime --precision P` (P the exported
   precision; the server's probabilities temperature-scaled as infer's are): same label, max |dp| <= TOL;
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
#: largest |dp| between the server's (temperature-scaled) probabilities and edgecxr infer's
TOL = 2e-3


def server_files(venv: Path) -> dict[str, Path]:
    """tritonserver, its libraries, the Python backend and the stub for the venv's Python, from the wheel."""
    py = subprocess.run([str(venv / "bin" / "python"), "-c",
                         "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}');"
                         "print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True)
    version, site = py.stdout.split()
    root = Path(site) / "pytriton" / "tritonserver"
    files = {"server": root / "bin" / "tritonserver", "libs": Path(site) / "nvidia_pytriton.libs",
             "python_backend": root / "backends" / "python",
             "stub": root / "python_backend_stubs" / version / "triton_python_backend_stub", "site": Path(site)}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise SystemExit(f"triton-check: {', '.join(missing)} missing; run `make triton-check` (it installs nvidia-pytriton)")
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
        env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(files["libs"]),
                                                                              os.environ.get("LD_LIBRARY_PATH")])),
                   PYTHONPATH=str(files["site"]))  # the stub imports numpy/onnxruntime/cv2 from the venv
        cmd = [str(files["server"]), "--model-repository", str(repo), "--backend-directory", str(backends),
               "--http-address", "127.0.0.1", "--http-port", str(self.http),
               "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc), "--allow-metrics", "false",
               "--exit-on-error", str(exit_on_error).lower(), "--strict-readiness", "false"]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)

    def wait_live(self, timeout: float) -> None:
        import tritonclient.http as http

        client = http.InferenceServerClient(f"127.0.0.1:{self.http}")
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({self.proc.returncode}); last log line: {self.last_line()}")
            try:
                if client.is_server_live():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.5)
        raise RuntimeError(f"tritonserver not live after {timeout:.0f} s; last log line: {self.last_line()}")

    def last_line(self) -> str:
        lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else "(empty log)"

    def stop(self) -> None:
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
        raise RuntimeError(f"edgecxr {' '.join(args[:2])} failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return res.stdout


def wait_ready(client: Any, models: list[str], timeout: float, server: Server) -> None:
    end = time.monotonic() + timeout
    while not all(client.is_model_ready(m) for m in models):
        if time.monotonic() > end or server.proc.poll() is not None:
            raise RuntimeError(f"models {models} not ready after {timeout:.0f} s; last log line: {server.last_line()}")
        time.sleep(0.5)


def ask(module: Any, client: Any, model: str, name: str, array: np.ndarray, dtype: str, output: str,
        class_count: int = 0) -> np.ndarray:
    inp = module.InferInput(name, list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    out = module.InferRequestedOutput(output, class_count=class_count) if class_count else module.InferRequestedOutput(output)
    return client.infer(model, [inp], outputs=[out]).as_numpy(output)


def classify_all(server: Server, model: str, images: list[Path], bundle: Any, timeout: float) -> dict[str, Any]:
    """{protocol: {"files": probs (N, C), "labels": top-1 label via class_count}} for each of HTTP and gRPC."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    from edgecxr.core.spec import preprocess
    from edgecxr.data.io import load_image
    from edgecxr.stages.export.triton import FILE_INPUT
    from edgecxr.stages.export.triton_config import onnx_io

    tensor_in, outputs, _ = onnx_io(server.repo / model / "1" / "model.onnx")
    probs_name = outputs[0].name
    spec = bundle.spec
    tensors = [preprocess(load_image(p, (spec.height, spec.width)), spec)[None].astype(np.float32) for p in images]
    answers: dict[str, Any] = {}
    for proto, module, client in (("http", http, http.InferenceServerClient(f"127.0.0.1:{server.http}")),
                                  ("grpc", grpc, grpc.InferenceServerClient(f"127.0.0.1:{server.grpc}"))):
        wait_ready(client, [model, f"{model}_image"], timeout, server)
        files = [ask(module, client, f"{model}_image", FILE_INPUT, np.array([[p.read_bytes()]], dtype=object),
                     "BYTES", probs_name)[0] for p in images]
        labels = []
        for t in tensors:
            top = ask(module, client, model, tensor_in[0].name, t, "FP32", probs_name, class_count=1)
            entry = top.reshape(-1)[0]
            labels.append((entry.decode() if isinstance(entry, bytes) else str(entry)).split(":", 2)[2])
        answers[proto] = {"files": np.stack(files).astype(np.float64), "labels": labels}
    return answers


def repository_states(server: Server) -> dict[str, tuple[str, str]]:
    import tritonclient.http as http

    client = http.InferenceServerClient(f"127.0.0.1:{server.http}")
    return {m["name"]: (m.get("state", ""), m.get("reason", "")) for m in client.get_model_repository_index()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--triton-venv", type=Path, required=True)
    ap.add_argument("--model", default="coronet")
    ap.add_argument("--images", type=Path, nargs="*", help="default: examples/images/*/*.png")
    ap.add_argument("--work", type=Path, help="keep repositories and server logs here (default: a temp folder)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds for the server and models to come up")
    args = ap.parse_args(argv)

    from edgecxr.core.bundle import Bundle
    from edgecxr.runtime import store
    from edgecxr.runtime.confidence import apply_temperature

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
    temperature = doc["audit"].get("temperature")
    classes = doc["classes"]

    problems: list[str] = []
    server = Server(files, repos["python"], work)
    try:
        server.wait_live(args.timeout)
        import tritonclient.http as http

        version = http.InferenceServerClient(f"127.0.0.1:{server.http}").get_server_metadata()["version"]
        answers = classify_all(server, name, images, bundle, args.timeout)
    finally:
        server.stop()
    for proto, got in answers.items():
        scaled = apply_temperature(got["files"], temperature)
        for i, path in enumerate(images):
            ref = want[path.name]
            ref_p = np.array([ref["probabilities"][c] for c in classes])
            label = classes[int(scaled[i].argmax())]
            dp = float(np.abs(scaled[i] - ref_p).max())
            if label != ref["label"] or dp > TOL:
                problems.append(f"{proto} {path.name}: file -> {label} (max|dp| {dp:.1e}), infer -> {ref['label']}")
            if got["labels"][i] != ref["label"]:
                problems.append(f"{proto} {path.name}: class_count=1 -> {got['labels'][i]}, infer -> {ref['label']}")

    ort_server = Server(files, repos["onnxruntime"], work, exit_on_error=False)
    try:
        ort_server.wait_live(args.timeout)
        end = time.monotonic() + args.timeout
        states = repository_states(ort_server)
        while any(s not in ("READY", "UNAVAILABLE") for s, _ in states.values()) and time.monotonic() < end:
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
    verdict = "all match" if not problems else f"{len(problems)} mismatches"
    print(f"triton-check: Triton server {version}: {len(images)} images x HTTP+gRPC (file ensemble and class_count) vs "
          f"edgecxr infer ({exported['precision']} ONNX, python flavour): {verdict}; onnxruntime flavour: "
          f"{len(states)} models, {name} stops at 'backend not found' as expected"
          f"{'' if not problems else ' (see above)'} [{time.monotonic() - t0:.0f} s]")
    if args.work is None and not problems:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
