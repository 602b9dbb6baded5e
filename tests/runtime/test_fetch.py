"""Bundle download (edgecxr.fetch) against a real HTTP server on 127.0.0.1: cache, sha256, unsafe archives."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from functools import partial
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecxr.cli import main
from edgecxr.core.errors import BundleError
from edgecxr.runtime import fetch, store
from runtime import tinymodels


@pytest.fixture()
def server(tmp_path):
    """(root folder served, base URL, request log) of a loopback HTTP server, stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            hits.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECXR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(store.ENV_MODELS, str(tmp_path / "models"))


def _zip_bundle(src: Path, out: Path, prefix: str = "mine/") -> str:
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, prefix + f.name)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_download_verifies_and_caches(server, tmp_path):
    root, url, hits = server
    bundle = tinymodels.make_bundle(tmp_path / "b")
    sha = _zip_bundle(bundle.dir, root / "m.zip")
    first = fetch.download(f"{url}/m.zip", sha)
    assert first.is_file() and first.name == f"{sha}.zip"
    assert fetch.download(f"{url}/m.zip", sha) == first
    assert hits.count("/m.zip") == 1  # the second call came from the cache
    with pytest.raises(BundleError, match="differs from the expected"):
        fetch.download(f"{url}/m.zip", "0" * 64)
    assert not list((tmp_path / "cache" / "downloads").glob(".download-*"))  # nothing half-written left
    with pytest.raises(BundleError, match="download failed"):
        fetch.download(f"{url}/missing.zip", "1" * 64)


def test_unsafe_archives_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(BundleError, match="unsafe member"):
        fetch.unpack_bundle(evil, tmp_path / "x")
    assert not (tmp_path / "outside.txt").exists()
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a zip"):
        fetch.unpack_bundle(tmp_path / "junk.zip", tmp_path / "y")


def test_models_add_from_url_registers_and_loads(server, tmp_path, images):
    root, url, _ = server
    bundle = tinymodels.make_bundle(tmp_path / "b")
    sha = _zip_bundle(bundle.dir, root / "m.zip")
    runner = CliRunner()
    no_sha = runner.invoke(main, ["models", "add", f"{url}/m.zip", "--name", "site"])
    assert no_sha.exit_code == 2 and "--sha256" in no_sha.output
    result = runner.invoke(main, ["models", "add", f"{url}/m.zip", "--sha256", sha, "--name", "site"])
    assert result.exit_code == 0, result.output
    infer = runner.invoke(main, ["infer", "--model", "site", str(images[0]), "--json"])
    assert infer.exit_code == 0, infer.output
    bad = runner.invoke(main, ["models", "add", f"{url}/m.zip", "--sha256", "f" * 64, "--name", "other"])
    assert bad.exit_code == 1 and "differs" in bad.output
