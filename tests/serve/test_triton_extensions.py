"""`edgecxr serve` speaks what it advertises, checked with NVIDIA's own client (tritonclient.http):
compressed bodies both ways, the classification extension, statistics, the repository endpoints it
answers and refuses, and JSON errors everywhere (tritonclient cannot read a plain-text error).

The service has no gRPC endpoint (docs/SERVING.md), so only tritonclient's HTTP client applies. The
formats were compared once with NVIDIA's tritonserver 2.51 on `edgecxr export triton --flavour
python` (same strings, shapes and datatypes for classification; the same statistics fields).
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from runtime import tinymodels

from serve.serving import (
    OUT,
    SHAPE,
    InferenceServerException,
    ModelSpec,
    httpx,
    start,
    tiny_bundle,
    tritonhttp,
)

LIMIT = 256 << 10  #: the server's body limit in these tests (compressed and decompressed)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    running = start(f"tiny={tiny_bundle(tmp_path_factory.mktemp('ext'))}", max_body_bytes=LIMIT)
    yield running
    running.stop()


@pytest.fixture()
def client(server):
    c = tritonhttp.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def _batch(n: int, seed: int = 0) -> np.ndarray:
    lo, hi = tinymodels.SPEC.output_range
    return np.random.default_rng(seed).uniform(lo, hi, (n, *SHAPE)).astype(np.float32)


def _infer(client, x: np.ndarray, binary: bool = True, class_count: int = 0, **kw):
    inp = tritonhttp.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = tritonhttp.InferRequestedOutput(OUT, binary_data=binary, class_count=class_count)
    return client.infer("tiny", [inp], outputs=[out], **kw)


def _json_body(x: np.ndarray, **output_params) -> bytes:
    out = {"name": OUT, "parameters": output_params} if output_params else {"name": OUT}
    return json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}], "outputs": [out]}).encode()


def test_server_metadata_advertises_only_what_is_implemented(client) -> None:
    extensions = set(client.get_server_metadata()["extensions"])
    # each of these is exercised below; model_repository is not claimed: models are fixed at start
    assert extensions == {"binary_tensor_data", "classification", "model_configuration", "statistics"}


# ------------------------------------------------------------------------------------------------
# Compression (tritonclient's request_compression_algorithm / response_compression_algorithm)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_compressed_requests_and_answers_through_tritonclient(client, algorithm: str, binary: bool) -> None:
    x = _batch(3, seed=1)
    result = _infer(client, x, binary=binary, request_compression_algorithm=algorithm,
                    response_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy(OUT), tinymodels.reference_probs(x), atol=1e-5)


def test_answers_are_compressed_when_asked(server) -> None:
    x = _batch(2)
    with httpx.stream("POST", f"{server.url}/v2/models/tiny/infer", content=_json_body(x),
                      headers={"accept-encoding": "gzip"}) as raw:
        packed = b"".join(raw.iter_raw())  # the bytes on the wire, not httpx's decoded ones
    assert raw.status_code == 200 and raw.headers["content-encoding"] == "gzip"
    doc = json.loads(gzip.decompress(packed))
    np.testing.assert_allclose(np.reshape(doc["outputs"][0]["data"], (2, 4)), tinymodels.reference_probs(x),
                               atol=1e-5)
    plain = httpx.post(f"{server.url}/v2/models/tiny/infer", content=_json_body(x), headers={"accept-encoding": ""})
    assert "content-encoding" not in plain.headers


def test_a_decompression_bomb_is_413_and_the_server_goes_on(server, client) -> None:
    bomb = gzip.compress(b"\0" * (32 << 20))  # 32 MiB once decompressed, ~32 kB sent: under the limit as sent
    assert len(bomb) < LIMIT
    r = httpx.post(f"{server.url}/v2/models/tiny/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert r.status_code == 413 and "once decompressed" in r.json()["error"]
    assert _infer(client, _batch(1)).as_numpy(OUT).shape == (1, 4)


def test_bad_compressed_bodies_are_json_errors(server) -> None:
    url = f"{server.url}/v2/models/tiny/infer"
    body = _json_body(_batch(1))
    cases = [(gzip.compress(body)[:100], "gzip", 400), (body, "gzip", 400), (body, "br", 415)]
    for content, encoding, status in cases:
        r = httpx.post(url, content=content, headers={"content-encoding": encoding})
        assert r.status_code == status and r.json()["error"], (encoding, r.text)
    raw_deflate = httpx.post(url, content=zlib.compress(body)[2:-4], headers={"content-encoding": "deflate"})
    assert raw_deflate.status_code == 200  # raw deflate (no zlib header), as some clients send it


def test_classify_upload_may_be_gzipped(server, tmp_path: Path) -> None:
    images = tinymodels.real_images(1)
    if not images:
        pytest.skip("no real X-ray images (examples/images or ../shared/data/cxr) available")
    png = images[0].read_bytes()
    plain = httpx.post(f"{server.url}/v1/classify", content=png, params={"filename": "a.png"}).json()
    packed = httpx.post(f"{server.url}/v1/classify", content=gzip.compress(png), params={"filename": "a.png"},
                        headers={"content-encoding": "gzip"})
    assert packed.status_code == 200
    assert packed.json()["predictions"][0]["probabilities"] == plain["predictions"][0]["probabilities"]


# ------------------------------------------------------------------------------------------------
# Classification extension (tritonclient's class_count, HTTP parameters.classification)
# ------------------------------------------------------------------------------------------------
def _expected_top(x: np.ndarray, k: int) -> list[list[tuple[int, str]]]:
    probs = tinymodels.reference_probs(x)
    return [[(int(i), tinymodels.CLASSES[i]) for i in np.argsort(-row, kind="stable")[:k]] for row in probs]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_class_count_returns_top_k_as_triton_strings(client, binary: bool) -> None:
    x = _batch(3, seed=2)
    result = _infer(client, x, binary=binary, class_count=2)
    entry = result.get_output(OUT)
    assert entry["datatype"] == "BYTES" and entry["shape"] == [3, 2]
    top = result.as_numpy(OUT)
    probs = tinymodels.reference_probs(x)
    for i, row in enumerate(top):
        parsed = [(s.decode() if isinstance(s, bytes) else s).split(":") for s in row]
        assert [(int(index), label) for _, index, label in parsed] == _expected_top(x, 2)[i]
        for value, index, _ in parsed:
            assert len(value.split(".")[1]) == 6  # "%f", as Triton's std::to_string
            assert float(value) == pytest.approx(float(probs[i, int(index)]), abs=2e-6)


def test_class_count_above_the_classes_is_clipped_and_bad_counts_are_400(server, client) -> None:
    x = _batch(1)
    assert _infer(client, x, class_count=10).as_numpy(OUT).shape == (1, 4)  # min(K, classes), as Triton
    url = f"{server.url}/v2/models/tiny/infer"
    for bad in (-1, "2", 1.5, True):
        r = httpx.post(url, content=_json_body(x, classification=bad))
        assert r.status_code == 400 and "classification" in r.json()["error"]
    raw = httpx.post(url, content=_json_body(x, classification=0)).json()  # 0: the raw tensor
    assert raw["outputs"][0]["datatype"] == "FP32"


# ------------------------------------------------------------------------------------------------
# Statistics, repository endpoints, JSON errors
# ------------------------------------------------------------------------------------------------
def test_inference_statistics_count_requests_rows_and_batches(server, client) -> None:
    before = client.get_inference_statistics("tiny")["model_stats"][0]
    x = _batch(3, seed=3)
    for _ in range(2):
        _infer(client, x)
    # malformed: never reaches the model, so it counts nowhere (as on Triton)
    assert httpx.post(f"{server.url}/v2/models/tiny/infer", content=b"{not json").status_code == 400
    after = client.get_inference_statistics("tiny", "1")["model_stats"][0]
    assert after["name"] == "tiny" and after["version"] == "1"
    assert after["inference_count"] - before["inference_count"] == 6
    assert after["execution_count"] - before["execution_count"] == 2
    stats, old = after["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - old["success"]["count"] == 2
    assert stats["fail"]["count"] == old["fail"]["count"]
    assert stats["success"]["ns"] > old["success"]["ns"] and stats["compute_infer"]["ns"] > old["compute_infer"]["ns"]
    assert stats["queue"]["count"] - old["queue"]["count"] == 2
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 0
    assert any(b["batch_size"] == 3 and b["compute_infer"]["count"] >= 2 for b in after["batch_stats"])
    everyone = client.get_inference_statistics()["model_stats"]
    assert [m["name"] for m in everyone] == ["tiny"]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("nosuch")


def test_repository_index_and_load_answer_unload_is_refused_in_json(client) -> None:
    assert client.get_model_repository_index() == [{"name": "tiny", "version": "1", "state": "READY"}]
    client.load_model("tiny")  # served already: nothing to do, as after a load
    for call, words in [(lambda: client.unload_model("tiny"), "fixed"), (lambda: client.load_model("other"), "fixed"),
                        (lambda: client.load_model("tiny", config='{"max_batch_size": 2}'), "new config")]:
        with pytest.raises(InferenceServerException, match=words) as caught:
            call()
        assert caught.value.status() == "403"
    assert client.is_model_ready("tiny")  # the refused unload left it served


def test_unknown_routes_and_methods_are_json_errors_tritonclient_can_read(server, client) -> None:
    for method, path, status in [("GET", "/v2/nosuch", 404), ("GET", "/", 404), ("GET", "/v2/models/tiny/infer", 405),
                                 ("DELETE", "/v2/models/tiny", 405)]:
        r = httpx.request(method, f"{server.url}{path}")
        assert r.status_code == status and r.headers["content-type"] == "application/json", (path, r.text)
        assert r.json()["error"]
    # endpoints of extensions the service does not claim: the message, not "Parse error at offset 1"
    for call in (client.get_trace_settings, client.get_log_settings, client.get_system_shared_memory_status):
        with pytest.raises(InferenceServerException, match="no such endpoint") as caught:
            call()
        assert caught.value.status() == "404"


def test_a_model_cannot_be_named_stats() -> None:
    from edgecxr.core.errors import BundleError

    with pytest.raises(BundleError, match="reserved"):
        ModelSpec.parse("stats=coronet")
