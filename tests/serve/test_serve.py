"""`edgecxr serve` end to end: real uvicorn on a free loopback port, a tiny real ONNX bundle, tritonclient.

Every server here is the real thing (uvicorn, Starlette, the batchers, onnxruntime); only the model
is tiny, so its probabilities can be checked against a numpy reference (`tinymodels.reference_probs`).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from runtime import tinymodels

from serve.serving import OUT, SHAPE, httpx, start, tiny_bundle, tritonhttp


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("serve"))


def _start(bundle_dir: Path, **kw):
    return start(f"tiny={bundle_dir}", **kw)


@pytest.fixture(scope="module")
def images() -> list[Path]:
    found = tinymodels.real_images(2)
    if not found:
        pytest.skip("no real X-ray images (examples/images or ../shared/data/cxr) available")
    return found


@pytest.fixture(scope="module")
def server(bundle_dir: Path):
    running = _start(bundle_dir, max_body_bytes=256 << 10)
    yield running
    running.stop()


def _client(running) -> tritonhttp.InferenceServerClient:
    return tritonhttp.InferenceServerClient(running.url.removeprefix("http://"))


def _batch(n: int, seed: int = 0) -> np.ndarray:
    lo, hi = tinymodels.SPEC.output_range
    return np.random.default_rng(seed).uniform(lo, hi, (n, *SHAPE)).astype(np.float32)


def _infer(client, x: np.ndarray, binary: bool = True, request_id: str = "", headers=None):
    inp = tritonhttp.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = tritonhttp.InferRequestedOutput(OUT, binary_data=binary)
    return client.infer("tiny", [inp], outputs=[out], request_id=request_id, headers=headers)


def _metric(running, name: str, **labels: str) -> float:
    text = httpx.get(f"{running.url}/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
            return float(m.group(2))
    return 0.0


# ------------------------------------------------------------------------------------------------
# Open Inference Protocol through tritonclient
# ------------------------------------------------------------------------------------------------
def test_tritonclient_health_metadata_and_correct_probabilities(server) -> None:
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert client.get_server_metadata()["name"] == "edgecxr"
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, *SHAPE]}]
    # the model file's own output name, as Triton serving the same file would answer
    assert meta["outputs"][0] == {"name": "probs", "datatype": "FP32", "shape": [-1, 4]}
    assert client.get_model_config("tiny")["max_batch_size"] == 8
    x = _batch(3)
    for binary in (False, True):  # JSON tensors and the binary tensor extension
        result = _infer(client, x, binary=binary, request_id=f"req-{binary}")
        assert result.get_response()["id"] == f"req-{binary}"
        np.testing.assert_allclose(result.as_numpy(OUT), tinymodels.reference_probs(x), atol=1e-5)
    assert not client.is_model_ready("nosuch")


def test_bad_infer_requests_are_400_or_404(server) -> None:
    url = f"{server.url}/v2/models/tiny/infer"
    assert httpx.post(url, content=b"{not json").status_code == 400
    wrong = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 2], "data": [0.0, 1.0]}]}
    r = httpx.post(url, json=wrong)
    assert r.status_code == 400 and "shape" in r.json()["error"]
    nan = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, *SHAPE],
                       "data": [float("nan")] * int(np.prod(SHAPE))}]}
    assert httpx.post(url, content=str(nan).replace("nan", "NaN").replace("'", '"')).status_code == 400
    assert httpx.post(f"{server.url}/v2/models/nosuch/infer", json=wrong).status_code == 404


@pytest.mark.parametrize("change", [
    {"parameters": "garbage"}, {"parameters": [1, 2]}, {"parameters": {"binary_data_output": "false"}},
    {"outputs": [{"name": OUT, "parameters": "garbage"}]}, {"outputs": [{"name": OUT, "parameters": {"binary_data": 1}}]},
    {"id": {"nested": True}}, {"inputs": [{"name": "image", "datatype": ["FP32"], "shape": [1]}]},
    {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, *SHAPE], "parameters": "garbage"}]},
    {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [10**400]}]},
], ids=lambda c: str(c)[:60])
def test_malformed_infer_fields_are_400_not_500(server, change) -> None:
    """Every field of the body has its JSON type checked: a wrong one is a one-line 400, never a traceback."""
    x = _batch(1)
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            **change}
    raw = json.dumps(body).encode()
    r = httpx.post(f"{server.url}/v2/models/tiny/infer", content=raw)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error and "\n" not in error and "Traceback" not in error and "internal error" not in error


def test_oversized_request_is_413(server) -> None:
    big = b"0" * (300 << 10)
    assert httpx.post(f"{server.url}/v2/models/tiny/infer", content=big).status_code == 413
    # without a Content-Length (chunked), the limit applies while reading
    chunked = httpx.post(f"{server.url}/v1/classify", content=iter([big[:200 << 10], big[200 << 10:]]))
    assert chunked.status_code == 413


# ------------------------------------------------------------------------------------------------
# /v1/classify: the JSON of `infer --json`
# ------------------------------------------------------------------------------------------------
def test_classify_png_matches_infer_json(server, bundle_dir: Path, images: list[Path]) -> None:
    from edgecxr.runtime.classifier import Classifier
    from edgecxr.runtime.results import results_document

    png = images[0]
    raw = httpx.post(f"{server.url}/v1/classify", content=png.read_bytes(), params={"filename": png.name})
    multipart = httpx.post(f"{server.url}/v1/classify", files={"file": (png.name, png.read_bytes())})
    with Classifier.load(bundle_dir) as clf:
        (local,) = clf.predict([png])
        expected = results_document([local], clf.audit, clf.classes, backend=clf.backend_info)
    for r in (raw, multipart):
        assert r.status_code == 200
        doc = r.json()
        assert set(doc) == set(expected) and doc["audit"] == expected["audit"]
        (pred,) = doc["predictions"]
        assert pred["source"] == png.name and pred["status"] == "ok"
        assert pred["input_sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()
        assert pred["label"] == local.label
        assert pred["probabilities"] == pytest.approx(local.probabilities, abs=1e-5)


def test_classify_bad_file_is_422_with_the_reason(server) -> None:
    r = httpx.post(f"{server.url}/v1/classify", files={"file": ("notes.png", b"this is not an X-ray\n")})
    assert r.status_code == 422
    doc = r.json()
    assert doc["failed"] == 1 and doc["predictions"][0]["error"] and doc["predictions"][0]["label"] is None
    # "failed", never "ok", for an input that failed (issue 22), with the reason; a truncated PNG too
    assert doc["predictions"][0]["status"] == "failed" and doc["predictions"][0]["reason"] == doc["predictions"][0]["error"]
    png = tinymodels.real_images(1)[0].read_bytes() if tinymodels.real_images(1) else None
    if png is not None:
        cut = httpx.post(f"{server.url}/v1/classify", files={"file": ("cut.png", png[: len(png) // 2])})
        assert cut.status_code == 422 and cut.json()["predictions"][0]["status"] == "failed"
    assert httpx.post(f"{server.url}/v1/classify", content=b"").status_code == 400


def test_classify_rejects_a_non_radiograph(server) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (256, 256), dtype=np.uint8)
    import cv2

    ok, png = cv2.imencode(".png", noise)
    r = httpx.post(f"{server.url}/v1/classify", content=png.tobytes(), params={"filename": "noise.png"})
    assert r.status_code == 200
    pred = r.json()["predictions"][0]
    assert pred["status"] == "rejected" and pred["reason"] and pred["label"] is None


# ------------------------------------------------------------------------------------------------
# Batching, overload, token, shutdown
# ------------------------------------------------------------------------------------------------
def _concurrently(fn, n: int) -> list:
    results: list = [None] * n

    def run(i: int) -> None:
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - collected and checked by the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_dynamic_batching_merges_concurrent_requests(bundle_dir: Path) -> None:
    # a batch runs when it holds 4 rows or after 20 s: 4 single-row requests must share one batch
    running = _start(bundle_dir, max_batch=4, max_delay_ms=20_000)
    try:
        xs = [_batch(1, seed=i) for i in range(4)]
        results = _concurrently(lambda i: _infer(_client(running), xs[i], request_id=str(i)), 4)
        for i, r in enumerate(results):
            assert not isinstance(r, Exception), r
            assert r.get_response()["id"] == str(i)  # each got its own row back
            np.testing.assert_allclose(r.as_numpy(OUT), tinymodels.reference_probs(xs[i]), atol=1e-5)
        assert _metric(running, "edgecxr_batches_total", model="tiny", kind="tensors") == 1
        assert _metric(running, "edgecxr_batch_rows_total", model="tiny", kind="tensors") == 4
    finally:
        running.stop()


def test_overload_is_503_with_retry_after_and_queued_work_is_not_lost(bundle_dir: Path) -> None:
    # room for 4 rows; a 4-row request waits (up to 1.5 s) for a fuller batch, so the next one does not fit
    running = _start(bundle_dir, max_batch=8, max_queue=8, max_delay_ms=1500)
    try:
        x = _batch(8)
        first: dict = {}
        t = threading.Thread(target=lambda: first.setdefault("r", _infer(_client(running), x[:6])))
        t.start()
        deadline = time.monotonic() + 10
        while running.state.models["tiny"].tensors.pending < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = httpx.post(f"{running.url}/v2/models/tiny/infer",
                       json={"inputs": [{"name": "image", "datatype": "FP32", "shape": [4, *SHAPE],
                                         "data": x[6:].ravel().tolist() + x[6:].ravel().tolist()}]})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        t.join(30)
        np.testing.assert_allclose(first["r"].as_numpy(OUT), tinymodels.reference_probs(x[:6]), atol=1e-5)
        assert _metric(running, "edgecxr_overload_total", model="tiny") == 1
    finally:
        running.stop()


def test_token_is_required_except_for_health(bundle_dir: Path) -> None:
    from tritonclient.utils import InferenceServerException

    running = _start(bundle_dir, token="s3cret")
    try:
        client = _client(running)
        assert client.is_server_live() and client.is_server_ready()
        with pytest.raises(InferenceServerException, match="bearer token"):
            _infer(client, _batch(1))
        assert httpx.get(f"{running.url}/metrics").status_code == 401
        bad = httpx.get(f"{running.url}/v2/models/tiny", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
        good = _infer(client, _batch(1), headers={"Authorization": "Bearer s3cret"})
        assert good.as_numpy(OUT).shape == (1, 4)
    finally:
        running.stop()


def test_graceful_shutdown_finishes_requests_in_flight(bundle_dir: Path) -> None:
    running = _start(bundle_dir, max_batch=8, max_delay_ms=1500)
    x = _batch(2)
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", _infer(_client(running), x)))
    t.start()
    deadline = time.monotonic() + 10
    while running.state.models["tiny"].tensors.pending < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    running.stop()  # while the request waits in the queue
    t.join(30)
    np.testing.assert_allclose(out["r"].as_numpy(OUT), tinymodels.reference_probs(x), atol=1e-5)
    assert not running.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{running.url}/v2/health/live")


def test_client_that_disconnects_is_counted_and_the_server_goes_on(server) -> None:
    before = _metric(server, "edgecxr_client_disconnects_total")
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # half a body, then gone
        s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"inputs\"")
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while _metric(server, "edgecxr_client_disconnects_total") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(server, "edgecxr_client_disconnects_total") == before + 1
    assert _infer(_client(server), _batch(1)).as_numpy(OUT).shape == (1, 4)


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------
def test_cli_refuses_open_host_without_token_and_unknown_models() -> None:
    from edgecxr.cli import main

    runner = CliRunner()
    r = runner.invoke(main, ["serve", "--host", "0.0.0.0"], env={"EDGECXR_SERVE_TOKEN": ""})
    assert r.exit_code == 2 and "--token" in r.output
    r = runner.invoke(main, ["serve", "-m", "nosuch-model"])
    assert r.exit_code != 0 and "error: nosuch-model" in r.output
    helped = runner.invoke(main, ["serve", "--help"])
    assert helped.exit_code == 0 and "edgecxr serve" in helped.output.split("Example", 1)[1]


def test_cli_serves_and_drains_on_sigterm(bundle_dir: Path) -> None:
    import json
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "edgecxr", "serve", "-m", f"tiny={bundle_dir}", "--port", "0",
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["models"] == ["tiny"] and info["url"].startswith("http://127.0.0.1:")
        assert httpx.get(f"{info['url']}/v2/health/ready").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "ready: http://127.0.0.1:" in err and err.rstrip().endswith("stopped")


def test_classify_dicom_keeps_its_uids_and_rejects_a_ct(server, tmp_path: Path) -> None:
    from data.cxr_fixtures import make_dicom, xray

    dx = make_dicom(tmp_path / "dx.dcm", xray(0), StudyInstanceUID="1.2.3.4", SeriesInstanceUID="1.2.3.4.5")
    r = httpx.post(f"{server.url}/v1/classify", files={"file": ("dx.dcm", dx.read_bytes(), "application/dicom")})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert pred["status"] == "ok" and pred["label"] and pred["dicom"]["StudyInstanceUID"] == "1.2.3.4"
    ct = make_dicom(tmp_path / "ct.dcm", xray(1), Modality="CT")
    pred = httpx.post(f"{server.url}/v1/classify", content=ct.read_bytes(), params={"filename": "ct.dcm"}).json()
    assert pred["predictions"][0]["status"] == "rejected" and "CT" in pred["predictions"][0]["reason"]


def test_reference_coronet_through_tritonclient_matches_the_in_process_model(images: list[Path]) -> None:
    """The shipped CoroNet served: tritonclient gets what the same model file computes in process."""
    from edgecxr.runtime.classifier import Classifier
    from edgecxr.runtime.inputs import prepare

    with Classifier.load("coronet") as clf:
        x = np.stack([prepare(p, i, clf.spec, clf.input_rules)[1] for i, p in enumerate(images[:2])])
        expected = clf.runner.infer(x)
    running = start("coronet")
    try:
        client = _client(running)
        assert client.is_model_ready("coronet")
        name = client.get_model_metadata("coronet")["outputs"][0]["name"]
        inp = tritonhttp.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        result = client.infer("coronet", [inp], outputs=[tritonhttp.InferRequestedOutput(name, binary_data=True)])
        np.testing.assert_allclose(result.as_numpy(name), expected, atol=1e-5)
        assert (result.as_numpy(name).argmax(axis=1) == expected.argmax(axis=1)).all()
    finally:
        running.stop()


def test_cli_a_model_that_fails_to_load_is_one_error_line(tmp_path: Path) -> None:
    from edgecxr.cli import main

    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model\n")
    r = CliRunner().invoke(main, ["serve", "-m", f"bad={bad}", "--port", "0"])
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable ONNX model")


def test_listening_socket_is_tcp_so_answers_are_not_held_by_nagle() -> None:
    """asyncio sets TCP_NODELAY on accepted connections only when the socket says IPPROTO_TCP (proto 0
    does not): without it every small answer waited ~40 ms for the client's delayed ACK."""
    import socket as socket_module

    from edgecxr.serve.server import bind

    with bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket_module.IPPROTO_TCP
