"""Load test of `edgecxr serve` on loopback: throughput and latency, overload, disconnects, memory.

Bounded in count and time; every server is a real `python -m edgecxr serve` subprocess on
127.0.0.1 with a free port, driven by tritonclient's HTTP client (binary tensors) and httpx.

Phases:
  1. throughput and p50/p99 latency at concurrency 1, 8 and 32 (--concurrency) on the model (default: the shipped
     CoroNet), against the in-process Classifier's model on the same tensors measured in the same
     run (batch 1 and batch 8); and /v1/classify at concurrency 8 against Classifier.predict.
  2. overload: 64 clients against a 16-image queue. Every request is tagged (request id = its
     number and the image it carries); each must get exactly one answer, 200 or 503 + Retry-After,
     and every 200 must carry its own id and its own image's probabilities (no lost, duplicated or
     crossed answers).
  3. clients that disconnect: half a body then close, and a whole body then close before the
     answer; the server must count them, drop the queued work and go on answering correctly.
  4. memory: the server's RSS over --memory-requests requests (default 10,000) on a tiny model
     (tests/runtime/tinymodels.py: the server's own overhead, not the model's), every 10th a
     /v1/classify upload.

    .venv/bin/python scripts/load_test.py --out runs/load_test.json
    .venv/bin/python scripts/load_test.py --model @tiny --phases throughput   (the service's own cost)
    .venv/bin/python scripts/load_test.py --quick        (a smaller run, a few minutes)
    .venv/bin/python scripts/load_test.py --report load_test.json   (the BENCHMARKS.md tables)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # tinymodels: the tiny real ONNX bundle of the tests


# ------------------------------------------------------------------------------------------------
# A server subprocess
# ------------------------------------------------------------------------------------------------
class Server:
    """`python -m edgecxr serve ... --port 0 --json`; the first stdout line says where it listens."""

    def __init__(self, *args: str, timeout: float = 180.0):
        cmd = [sys.executable, "-m", "edgecxr", "serve", "--port", "0", "--json", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].strip():
            self.proc.kill()
            raise RuntimeError(f"server did not start: {self.proc.stderr.read()[-2000:]}")
        self.info = json.loads(line[0])
        self.url = self.info["url"]
        import httpx

        meta = httpx.get(f"{self.url}/v2/models/{self.info['models'][0]}").json()
        self.output = meta["outputs"][0]["name"]  #: the probabilities, under the model file's own name

    def rss_mb(self) -> float:
        for row in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
        return float("nan")

    def metric(self, name: str, **labels: str) -> float:
        import httpx

        want = {f'{k}="{v}"' for k, v in labels.items()}
        total = 0.0
        for row in httpx.get(f"{self.url}/metrics").text.splitlines():
            if row.startswith(name) and (row[len(name)] in " {"):
                got = set(row[row.find("{") + 1 : row.find("}")].split(",")) if "{" in row else set()
                if want <= got:
                    total += float(row.rsplit(" ", 1)[1])
        return total

    def stop(self) -> int:
        """SIGTERM (graceful drain) and the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9


# ------------------------------------------------------------------------------------------------
# Clients
# ------------------------------------------------------------------------------------------------

def _note(phase: str, result: dict, keys: tuple[str, ...]) -> None:
    """One progress line per phase on stderr (the whole result goes to --out and the report)."""
    shown = ", ".join(f"{k} {result[k]}" for k in keys if k in result)
    print(f"{phase}: {shown}", file=sys.stderr, flush=True)

def _client(url: str):
    import tritonclient.http as th

    return th.InferenceServerClient(url.removeprefix("http://"), connection_timeout=120, network_timeout=120)


def _infer(client, model: str, x: np.ndarray, request_id: str = "", output: str = "probs"):
    import tritonclient.http as th

    inp = th.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = th.InferRequestedOutput(output, binary_data=True)
    return client.infer(model, [inp], outputs=[out], request_id=request_id)


def run_clients(concurrency: int, total: int, one) -> tuple[list, float]:
    """`total` calls of one(i, state) from `concurrency` threads; (results by i, wall seconds)."""
    results: list = [None] * total
    counter = iter(range(total))
    lock = threading.Lock()

    def worker() -> None:
        state: dict = {}
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                value = one(i, state)
            except Exception as exc:  # noqa: BLE001 - every outcome is recorded and counted
                value = exc
            results[i] = (value, time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def _latency(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


# ------------------------------------------------------------------------------------------------
# Phases
# ------------------------------------------------------------------------------------------------
def images(n: int) -> list[Path]:
    from runtime.tinymodels import real_images

    found = real_images(n)
    if len(found) < n:
        raise SystemExit("error: needs real X-rays (examples/images or ../shared/data/cxr)")
    return found


def phase_throughput(model: str, paths: list[Path], levels: list[int], per_level: int, args) -> dict:
    """Each served level between two in-process measurements of the same model (the machine's load drifts)."""
    import httpx

    from edgecxr.runtime.classifier import Classifier
    from edgecxr.runtime.inputs import prepare

    clf = Classifier.load(model)
    xs = np.stack([prepare(p, i, clf.spec, clf.input_rules)[1] for i, p in enumerate(paths)])
    expected = clf.runner.infer(xs)
    single: list[float] = []  # every in-process batch-1 latency, for the summary

    def in_process(kind: str, n: int = 16) -> float:
        """Images/s of the in-process model: batch 1 ('batch 1'), batch 8 ('batch 8') or predict on the files."""
        t0 = time.perf_counter()
        if kind == "batch 1":
            for i in range(n):
                t = time.perf_counter()
                clf.runner.infer(xs[i % len(xs)][None])
                single.append(time.perf_counter() - t)
        else:
            for _ in range(max(1, n // len(xs))):
                clf.runner.infer(xs) if kind == "batch 8" else clf.predict(paths, batch_size=len(paths))
        return max(1, n // len(xs)) * len(xs) / (time.perf_counter() - t0) if kind != "batch 1" else n / (
            time.perf_counter() - t0)

    in_process("batch 1", 2)  # warm
    server = Server("-m", model, "--max-batch-size", "8", "--max-delay-ms", str(args.max_delay_ms),
                    "--max-queue", "64")
    name = server.info["models"][0]
    blobs = [p.read_bytes() for p in paths]

    def infer_one(i: int, state: dict) -> str:
        client = state.setdefault("c", _client(server.url))
        k = i % len(xs)
        r = _infer(client, name, xs[k][None], request_id=str(i), output=server.output)
        ok = r.get_response()["id"] == str(i) and np.allclose(r.as_numpy(server.output)[0], expected[k], atol=1e-4)
        return "ok" if ok else "wrong"

    def classify_one(i: int, state: dict) -> str:
        client = state.setdefault("h", httpx.Client(timeout=120))
        r = client.post(f"{server.url}/v1/classify", content=blobs[i % len(blobs)],
                        params={"filename": paths[i % len(paths)].name})
        return "ok" if r.status_code == 200 and r.json()["predictions"][0]["label"] else f"http {r.status_code}"

    plan = [("/v2 infer (binary)", c, infer_one, "batch 1" if c == 1 else "batch 8", "tensors") for c in levels]
    plan.append(("/v1/classify (PNG)", 8, classify_one, "Classifier.predict(files, batch 8)", "images"))
    rows = []
    try:
        for endpoint, c, one, base_kind, kind in plan:
            run_clients(c, c, one)  # warm-up: one request per client
            before = in_process(base_kind if base_kind.startswith("batch") else "files")
            b0, r0, s0 = (server.metric(f"edgecxr_{m}", kind=kind)
                          for m in ("batches_total", "batch_rows_total", "batch_seconds_sum"))
            res, wall = run_clients(c, per_level, one)
            b1, r1, s1 = (server.metric(f"edgecxr_{m}", kind=kind)
                          for m in ("batches_total", "batch_rows_total", "batch_seconds_sum"))
            after = in_process(base_kind if base_kind.startswith("batch") else "files")
            base = (before + after) / 2
            served = per_level / wall
            row = {"endpoint": endpoint, "concurrency": c, "requests": per_level, "ips": round(served, 2),
                   **_latency([t for _, t in res]), "vs_in_process": round(served / base, 3), "baseline": base_kind,
                   "baseline_ips_before_after": [round(before, 2), round(after, 2)],
                   "mean_batch": round((r1 - r0) / max(b1 - b0, 1), 2),
                   "mean_batch_s": round((s1 - s0) / max(b1 - b0, 1), 3),
                   "outcomes": dict(Counter(v if isinstance(v, str) else type(v).__name__ for v, _ in res))}
            rows.append(row)
            _note(f"throughput {endpoint} c={c}", row, ("ips", "p50_ms", "p99_ms", "vs_in_process", "mean_batch"))
    finally:
        rc = server.stop()
        clf.close()
    local = {"batch1": _latency(single), "batch1_ips": round(len(single) / sum(single), 2)}
    return {"model": name, "in_process": local, "served": rows, "exit_code": rc}


def _request_body(x: np.ndarray, tag: str, output: str = "probs") -> tuple[bytes, dict[str, str]]:
    """A tagged binary infer request, encoded by tritonclient itself."""
    import tritonclient.http as th

    inp = th.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = th.InferRequestedOutput(output, binary_data=True)
    body, json_size = th.InferenceServerClient.generate_request_body([inp], [out], request_id=tag)
    headers = {"Content-Type": "application/octet-stream"}
    if json_size is not None:
        headers["Inference-Header-Content-Length"] = str(json_size)
    return body, headers


def phase_overload(model: str, paths: list[Path], total: int, args) -> dict:
    """64 clients, a 16-image queue: every tagged request must get exactly one answer of its own."""
    import httpx
    import tritonclient.http as th

    from edgecxr.runtime.classifier import Classifier
    from edgecxr.runtime.inputs import prepare

    with Classifier.load(model) as clf:
        xs = np.stack([prepare(p, i, clf.spec, clf.input_rules)[1] for i, p in enumerate(paths)])
        expected = clf.runner.infer(xs)
    server = Server("-m", model, "--max-batch-size", "8", "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "16")
    name = server.info["models"][0]
    url = f"{server.url}/v2/models/{name}/infer"

    def one(i: int, state: dict):
        client = state.setdefault("h", httpx.Client(timeout=300))
        k = i % len(xs)
        tag = f"req-{i}-img{k}"
        body, headers = _request_body(xs[k][None], tag, server.output)
        r = client.post(url, content=body, headers=headers)
        if r.status_code != 200:
            return (str(r.status_code), r.headers.get("retry-after"), None)
        length = r.headers.get("inference-header-content-length")
        result = th.InferResult.from_response_body(r.content, header_length=int(length) if length else None)
        return ("200", result.get_response().get("id"), result.as_numpy(server.output)[0])

    try:
        res, wall = run_clients(64, total, one)
        answers: Counter = Counter()
        wrong = lost = no_retry_after = 0
        ids, retry_after, client_errors = [], Counter(), Counter()
        for i, item in enumerate(res):
            if item is None or not isinstance(item[0], tuple):
                lost += 1  # no HTTP answer at all (connection error, client timeout)
                client_errors[repr(item[0] if item else None)[:160]] += 1
                continue
            code, extra, probs = item[0]
            answers[code] += 1
            if code == "200":
                ids.append(extra)
                k = i % len(xs)
                if extra != f"req-{i}-img{k}" or not np.allclose(probs, expected[k], atol=1e-4):
                    wrong += 1
            elif code == "503":
                retry_after[extra] += 1
                no_retry_after += extra is None or not extra.isdigit() or int(extra) < 1
        duplicated = len(ids) - len(set(ids))
        overload = server.metric("edgecxr_overload_total")
        batches = server.metric("edgecxr_batches_total", kind="tensors")
        batch_s = server.metric("edgecxr_batch_seconds_sum", kind="tensors") / max(batches, 1)
    finally:
        rc = server.stop()
    out = {"requests": total, "concurrency": 64, "max_queue": 16, "answers": dict(answers), "lost": lost,
           "duplicated": duplicated, "wrong_or_crossed": wrong, "retry_after_values": dict(retry_after),
           "503_without_retry_after": no_retry_after, "client_errors": dict(client_errors),
           "server_overload_counter": overload, "batches": batches, "mean_batch_s": round(batch_s, 3),
           "wall_s": round(wall, 1),
           "exit_code": rc}
    _note("overload", out, ("answers", "lost", "duplicated", "wrong_or_crossed", "503_without_retry_after", "exit_code"))
    return out


def _raw(url: str, payload: bytes, cut: int | None) -> None:
    """Send a request (all of it, or `cut` bytes of it) on a raw socket and close without reading."""
    import socket

    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(payload if cut is None else payload[:cut])
        if cut is not None:
            time.sleep(0.05)


def phase_disconnects(model: str, paths: list[Path], n: int, args) -> dict:
    from edgecxr.runtime.classifier import Classifier
    from edgecxr.runtime.inputs import prepare

    with Classifier.load(model) as clf:
        xs = np.stack([prepare(p, i, clf.spec, clf.input_rules)[1] for i, p in enumerate(paths)])
        expected = clf.runner.infer(xs)
    server = Server("-m", model, "--max-batch-size", "8", "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "256")
    name = server.info["models"][0]
    head = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, *xs.shape[1:]],
                                   "parameters": {"binary_data_size": xs[0].nbytes}}]}).encode()
    body = head + xs[0].tobytes()
    request = (f"POST /v2/models/{name}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
               f"Inference-Header-Content-Length: {len(head)}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        half, _ = run_clients(16, n, lambda i, s: _raw(server.url, request, len(request) // 2))
        whole, _ = run_clients(16, n, lambda i, s: _raw(server.url, request, None))
        time.sleep(3)
        after = {"disconnects_counted": server.metric("edgecxr_client_disconnects_total"),
                 "dropped_before_running": server.metric("edgecxr_dropped_requests", kind="tensors"),
                 "inflight_after": server.metric("edgecxr_inflight_requests") - 1}  # minus this /metrics request

        def check(i: int, state: dict) -> bool:
            k = i % len(xs)
            r = _infer(state.setdefault("c", _client(server.url)), name, xs[k][None], request_id=str(i), output=server.output)
            return r.get_response()["id"] == str(i) and np.allclose(r.as_numpy(server.output)[0], expected[k], atol=1e-4)

        res, _ = run_clients(8, 64, check)
        after["correct_after"] = sum(v is True for v, _ in res)
        after["checked_after"] = len(res)
    finally:
        rc = server.stop()
    out = {"half_body_then_close": n, "whole_body_then_close": n, **after, "exit_code": rc}
    _note("disconnects", out, tuple(k for k in out if k not in ("half_body_then_close", "whole_body_then_close")))
    return out


def phase_memory(total: int, paths: list[Path]) -> dict:
    import httpx
    from runtime import tinymodels

    folder = Path(tempfile.mkdtemp(prefix="edgecxr-load-"))
    tinymodels.make_bundle(folder / "tiny", int8=False, fp16=False)
    server = Server("-m", f"tiny={folder / 'tiny'}", "--max-batch-size", "8", "--max-delay-ms", "2", "--max-queue", "256")
    lo, hi = tinymodels.SPEC.output_range
    xs = np.random.default_rng(0).uniform(lo, hi, (16, *tinymodels.SPEC.input_shape)).astype(np.float32)
    expected = tinymodels.reference_probs(xs)
    blob = paths[0].read_bytes()
    samples: list[tuple[int, float]] = []
    done = [0]
    lock = threading.Lock()

    def one(i: int, state: dict) -> bool:
        if i % 10 == 9:
            h = state.setdefault("h", httpx.Client(timeout=60))
            ok = h.post(f"{server.url}/v1/classify", content=blob, params={"filename": "x.png"}).status_code == 200
        else:
            k = i % len(xs)
            r = _infer(state.setdefault("c", _client(server.url)), "tiny", xs[k][None], request_id=str(i), output=server.output)
            ok = r.get_response()["id"] == str(i) and np.allclose(r.as_numpy(server.output)[0], expected[k], atol=1e-5)
        with lock:
            done[0] += 1
            if done[0] % 500 == 0:
                samples.append((done[0], server.rss_mb()))
        return ok

    try:
        samples.append((0, server.rss_mb()))
        res, wall = run_clients(8, total, one)
        samples.append((total, server.rss_mb()))
    finally:
        rc = server.stop()
    ok = sum(v is True for v, _ in res)
    base = next((mb for n, mb in samples if n >= 1000), samples[0][1])  # after warm-up (allocator, caches)
    out = {"requests": total, "ok": ok, "wall_s": round(wall, 1), "rss_mb_start": round(samples[0][1], 1),
           "rss_mb_after_1000": round(base, 1), "rss_mb_end": round(samples[-1][1], 1),
           "rss_mb_max": round(max(mb for _, mb in samples), 1),
           "growth_after_warmup_mb": round(samples[-1][1] - base, 1),
           "samples": [(n, round(mb, 1)) for n, mb in samples], "exit_code": rc}
    _note("memory", out, ("requests", "ok", "rss_mb_after_1000", "rss_mb_end", "growth_after_warmup_mb", "exit_code"))
    return out


def markdown(result: dict) -> str:
    """The BENCHMARKS.md tables of one run's JSON (so the numbers there are copied by code, not by hand)."""
    t, o, d, m = (result.get(k) for k in ("throughput", "overload", "disconnects", "memory"))
    local = t["in_process"]
    machine = result["machine"]
    lines = [
        f"Run {result['date']}, `{result['command']}`, {result.get('wall_s')} s; {machine['cpus']} CPUs "
        f"({machine['cpu'].get('model') if isinstance(machine['cpu'], dict) else machine['cpu']}), load average at start {machine.get('load_average_at_start')}.",
        "",
        f"In process (same run, `{t['model']}` model through its runner, batch 1): p50 {local['batch1']['p50_ms']} ms, "
        f"p99 {local['batch1']['p99_ms']} ms, {local['batch1_ips']} images/s.",
        "",
        "| endpoint | concurrency | requests | images/s | p50 ms | p99 ms | in process images/s (before, after) | "
        "vs in process | mean batch | s per batch | answers |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in t["served"]:
        answers = ", ".join(f"{k} {v}" for k, v in r["outcomes"].items())
        before, after = r["baseline_ips_before_after"]
        lines.append(f"| {r['endpoint']} | {r['concurrency']} | {r['requests']} | {r['ips']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['baseline']}: {before}, {after} | {r['vs_in_process']:.2f}x | "
                     f"{r['mean_batch']} | {r['mean_batch_s']} | {answers} |")
    if not (o and d and m):  # a run of some --phases only
        return "\n".join(lines)
    lines += [
        "",
        "| check | result |",
        "|---|---|",
        f"| overload: {o['requests']} tagged requests, {o['concurrency']} clients, queue {o['max_queue']} | "
        f"answers {o['answers']}; lost {o['lost']}, duplicated {o['duplicated']}, wrong or crossed "
        f"{o['wrong_or_crossed']}; Retry-After values {o['retry_after_values']}, 503s without it "
        f"{o['503_without_retry_after']}; server's overload counter {o['server_overload_counter']:g}; "
        f"{o.get('batches', 0):g} batches of {o.get('mean_batch_s')} s on average"
        + (f"; client-side errors {o['client_errors']}" if o.get("client_errors") else "") + " |",
        f"| disconnects: {d['half_body_then_close']} half bodies + {d['whole_body_then_close']} whole requests, "
        f"then close | counted {d['disconnects_counted']:g}, dropped before running {d['dropped_before_running']:g}, "
        f"in flight afterwards {d['inflight_after']:g}; then {d['correct_after']}/{d['checked_after']} correct answers |",
        f"| memory: {m['requests']} requests (tiny model, every 10th a /v1/classify PNG upload) | {m['ok']} ok in "
        f"{m['wall_s']} s; RSS {m['rss_mb_start']} MB at start, {m['rss_mb_after_1000']} MB after 1,000, "
        f"{m['rss_mb_end']} MB at the end (max {m['rss_mb_max']} MB): {m['growth_after_warmup_mb']:+} MB after warm-up |",
        f"| shutdown | every server stopped by SIGTERM exited "
        f"{sorted({t['exit_code'], o['exit_code'], d['exit_code'], m['exit_code']})} |",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="coronet",
                    help="model for phases 1-3 (default: the shipped CoroNet; @tiny: the tests' tiny model, which "
                         "shows the service's own per-request cost)")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level (phase 1)")
    ap.add_argument("--concurrency", default="1,8,32", help="client counts of phase 1, comma-separated (e.g. 1,4,16)")
    ap.add_argument("--overload-requests", type=int, default=300)
    ap.add_argument("--disconnects", type=int, default=32, help="clients of each disconnect kind (phase 3)")
    ap.add_argument("--memory-requests", type=int, default=10_000)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="a small run (about a minute): 24/100/8/1000")
    ap.add_argument("--out", type=Path, help="write the results as JSON (atomically)")
    ap.add_argument("--phases", default="throughput,overload,disconnects,memory", help="comma-separated subset")
    ap.add_argument("--report", type=Path, help="print the BENCHMARKS.md tables of a saved --out JSON and exit")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks: no server left behind
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return
    if args.quick:
        args.requests, args.overload_requests, args.disconnects, args.memory_requests = 24, 100, 8, 1000
    from edgecxr.runtime.sysinfo import cpu_info

    paths = images(8)
    if args.model == "@tiny":
        from runtime import tinymodels

        args.model = str(tinymodels.make_bundle(Path(tempfile.mkdtemp(prefix="edgecxr-load-")) / "tiny",
                                                int8=False, fp16=False).dir)
    t0 = time.perf_counter()
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["scripts/load_test.py", *sys.argv[1:]]),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_info(),
                    "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
    }
    phases = {
        "throughput": lambda: phase_throughput(args.model, paths, [int(c) for c in args.concurrency.split(",")], args.requests, args),
        "overload": lambda: phase_overload(args.model, paths, args.overload_requests, args),
        "disconnects": lambda: phase_disconnects(args.model, paths, args.disconnects, args),
        "memory": lambda: phase_memory(args.memory_requests, paths),
    }
    for name in args.phases.split(","):
        result[name] = phases[name]()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        from edgecxr.core.fileutil import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)


if __name__ == "__main__":
    main()
