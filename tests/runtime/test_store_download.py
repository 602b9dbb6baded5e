"""`edgecxr models add URL`: the download is bounded in time and size whatever the server does.

A hostile or broken server on 127.0.0.1 trickles the body (one byte every 50 ms: each read is
answered well within the per-read timeout, so only an overall deadline ends it), trickles the
headers, announces or sends more than the size cap, or serves a zip that unpacks to far more than
it weighs. Before the deadline existed the trickle ran for ever; before the cap counted unpacked
bytes a small zip could fill the disk.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.runtime import fetch, store
from runtime import tinymodels

MIB = 1024**2
TRICKLE_S = 0.05


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECXR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(store.ENV_MODELS, str(tmp_path / "models"))


@pytest.fixture()
def server():
    """(base URL, {path: bytes} served whole) of a loopback server with misbehaving paths."""
    stop = threading.Event()
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args) -> None:
            pass

        def _trickle(self, data: bytes) -> None:
            for i in range(len(data)):
                if stop.wait(TRICKLE_S):
                    return
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            try:
                if self.path == "/slow-body":
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self._trickle(b"x" * 100000)
                elif self.path == "/slow-headers":
                    self.wfile.write(b"HTTP/1.0 200 OK\r\n")
                    self._trickle(b"X-Padding: " + b"a" * 10000 + b"\r\n\r\n")
                elif self.path == "/announces-too-much":
                    self.send_response(200)
                    self.send_header("Content-Length", str(3 * MIB))
                    self.end_headers()
                    self.wfile.write(b"\0" * 1024)  # then hangs: the client must not wait for the rest
                    stop.wait(30)
                elif self.path == "/sends-too-much":
                    self.send_response(200)  # no Content-Length: the body ends when the connection closes
                    self.end_headers()
                    for _ in range(64):
                        self.wfile.write(b"\0" * (64 * 1024))
                elif self.path in files:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(files[self.path])))
                    self.end_headers()
                    self.wfile.write(files[self.path])
                else:
                    self.send_error(404)
            except OSError:
                pass  # the client hung up, as it should

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()


def _add(url: str, *extra: str):
    started = time.monotonic()
    result = CliRunner().invoke(main, ["models", "add", url, "--sha256", "0" * 64, "--name", "site", *extra])
    return result, time.monotonic() - started


def _nothing_kept(tmp_path: Path) -> None:
    downloads = tmp_path / "cache" / "downloads"
    assert not downloads.is_dir() or not list(downloads.iterdir())  # no partial download left
    assert not (tmp_path / "models" / "site").exists()


@pytest.mark.parametrize("path", ["/slow-body", "/slow-headers"])
def test_a_trickling_server_is_cut_off_at_the_deadline(server, tmp_path, path):
    url, _ = server
    result, took = _add(url + path, "--deadline", "1.5")
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and "did not finish within its 1.5 s deadline" in result.stderr
    assert "--deadline" in result.stderr  # the CLI names the option that sets it
    assert 1.4 < took < 8, took
    _nothing_kept(tmp_path)


def test_more_than_the_cap_is_refused_announced_or_not(server, tmp_path):
    url, _ = server
    announced, took = _add(url + "/announces-too-much", "--max-mb", "1", "--deadline", "20")
    assert announced.exit_code == 1 and "Content-Length 3145728 bytes is larger than 1 MiB" in announced.stderr
    assert took < 8  # refused on the header, not after waiting for the body
    sent, _ = _add(url + "/sends-too-much", "--max-mb", "1", "--deadline", "20")
    assert sent.exit_code == 1 and "larger than 1 MiB; download discarded" in sent.stderr
    assert "--max-mb" in sent.stderr
    _nothing_kept(tmp_path)


def test_a_zip_that_unpacks_to_more_than_twice_the_cap_is_refused(server, tmp_path):
    url, files = server
    bundle = tinymodels.make_bundle(tmp_path / "b", int8=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(bundle.dir.iterdir()):
            zf.write(f, "b/" + f.name)
        zf.writestr("b/padding.bin", b"\0" * (3 * MIB))  # a few kB packed
    files["/bomb.zip"] = data = buf.getvalue()
    assert len(data) < MIB
    sha = hashlib.sha256(data).hexdigest()
    result = CliRunner().invoke(main, ["models", "add", url + "/bomb.zip", "--sha256", sha, "--name", "site",
                                       "--max-mb", "1"])
    assert result.exit_code == 1 and "more than 2 MiB; refused" in result.stderr, result.output
    assert not (tmp_path / "models" / "site").exists()
    ok = CliRunner().invoke(main, ["models", "add", url + "/bomb.zip", "--sha256", sha, "--name", "site"])
    assert ok.exit_code == 0, ok.output  # the default cap takes it (and the padding is not a listed file)
    assert sorted(p.name for p in (tmp_path / "models" / "site").iterdir()) == [
        "bundle.json", "model.fp16.onnx", "model.onnx"]


def test_download_deadline_and_cap_defaults_are_finite():
    assert 0 < fetch.DEFAULT_DEADLINE_S <= 3600 and 0 < fetch.READ_TIMEOUT_S < fetch.DEFAULT_DEADLINE_S
    assert fetch.MAX_BYTES == 2 * 1024**3
