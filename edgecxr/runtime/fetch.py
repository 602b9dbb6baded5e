"""Download a model bundle archive from a URL into a cache, checked by sha256, and unpack it safely.

For models that do not ship with edgecxr (a site's own fine-tuned bundle on an intranet server,
say), in the way ultralytics and torchxrayvision fetch weights: the archive is downloaded once into
the cache (`$EDGECXR_CACHE`, else `$XDG_CACHE_HOME/edgecxr`, else ~/.cache/edgecxr), named by its
sha256, and verified before use; a mismatch deletes the download and is an error. The shipped
reference models never need the network.

A download is bounded in time and size, whatever the server does: it must finish within an overall
deadline (DEFAULT_DEADLINE_S, `edgecxr models add --deadline`), not only answer each read within
READ_TIMEOUT_S (a server sending one byte a second would otherwise hold it for ever), and it may
not exceed a size cap (MAX_BYTES, `edgecxr models add --max-mb`), checked against Content-Length before reading and
against the bytes received while reading; its unpacked files may hold at most twice the cap.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from edgecxr.core.errors import ArgumentError, BundleError
from edgecxr.core.fileutil import sha256_file

#: Largest archive accepted by default (the reference bundles are ~70 MB); `--max-mb` changes it.
MAX_BYTES = 2 * 1024**3
#: Seconds a whole download may take by default (2 GiB at ~1.2 MB/s); `--deadline` changes it.
DEFAULT_DEADLINE_S = 1800.0
#: Seconds one read (or the connection) may wait for the server before the download fails.
READ_TIMEOUT_S = 60.0
CHUNK = 1 << 20


def cache_dir() -> Path:
    env = os.environ.get("EDGECXR_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecxr"


class _Deadline:
    """Ends a download when its deadline passes, in whatever phase it is (connect, headers, body).

    A per-read timeout does not bound a download: a server that sends a byte every second never
    lets one read time out. So a timer shuts down the download's sockets at the deadline, which
    makes the blocked read return at once; `expired` then tells the caller why it ended. Sockets
    are registered as they open (the TCP socket, and the TLS socket that replaces it).
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True  # a timer firing now must not touch sockets that are being closed
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            if self.expired:
                _shutdown(sock)
            elif not self._done:
                self._socks.append(sock)
        return sock

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._socks:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        # the plain socket's shutdown, also for a TLS socket (whose own shutdown unwraps TLS state)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """urllib's opener (redirects, proxies) whose HTTP(S) connections register their sockets with `deadline`."""

    def watched(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
        class Watched(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, **kwargs)
                create = self._create_connection
                self._create_connection = lambda *a, **kw: deadline.watch(create(*a, **kw))

            def connect(self) -> None:
                super().connect()
                deadline.watch(self.sock)

        return Watched

    plain, tls = watched(http.client.HTTPConnection), watched(http.client.HTTPSConnection)

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(plain, req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(tls, req, context=self._context)

    return urllib.request.build_opener(Http, Https)


def _mib(n: int) -> str:
    return f"{n / 1024**2:g} MiB"


def download(url: str, sha256: str, timeout: float = READ_TIMEOUT_S, deadline: float = DEFAULT_DEADLINE_S,
             max_bytes: int = MAX_BYTES) -> Path:
    """The archive at `url` in the cache, downloaded if absent; its sha256 must equal `sha256`.

    Args:
        timeout: seconds the connection and each read may wait for the server.
        deadline: seconds the whole download may take (connect, headers and body together).
        max_bytes: largest archive accepted; a larger Content-Length is refused before reading.
    """
    sha256 = sha256.lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise BundleError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if not deadline > 0 or not max_bytes > 0:
        raise ArgumentError(f"deadline ({deadline!r} s) and size cap ({max_bytes!r} bytes) must be positive",
                            params=("deadline", "max_bytes"))
    dest = cache_dir() / "downloads" / f"{sha256}.zip"
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-")
    started = time.monotonic()
    too_slow = f"{url}: download did not finish within its {deadline:g} s deadline; download discarded"
    too_big = f"{url}: larger than {_mib(max_bytes)}; download discarded"
    try:
        with os.fdopen(fd, "wb") as out, _Deadline(deadline) as watch:
            try:
                with _opener(watch).open(url, timeout=min(timeout, deadline)) as resp:
                    length = resp.headers.get("Content-Length")
                    if length and length.strip().isdigit() and int(length) > max_bytes:
                        raise BundleError(f"{url}: Content-Length {int(length)} bytes is larger than "
                                          f"{_mib(max_bytes)}; not downloaded", params=("max_bytes",))
                    total = 0
                    # read1: at most one read from the socket, so the deadline is checked between reads
                    while chunk := resp.read1(CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise BundleError(too_big, params=("max_bytes",))
                        if time.monotonic() - started > deadline:
                            raise BundleError(too_slow, params=("deadline",))
                        digest.update(chunk)
                        out.write(chunk)
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, refused, cut short
                if watch.expired:
                    raise BundleError(too_slow, params=("deadline",)) from None
                raise BundleError(f"{url}: download failed: {getattr(exc, 'reason', None) or exc}") from None
            if watch.expired:  # the shut-down socket read as the end of the body
                raise BundleError(too_slow, params=("deadline",))
        if digest.hexdigest() != sha256:
            raise BundleError(f"{url}: sha256 {digest.hexdigest()[:16]}… differs from the expected {sha256[:16]}…; "
                              "download discarded")
        os.replace(tmp, dest)
    except OSError as exc:  # the cache folder: disk full, permissions
        raise BundleError(f"{url}: download failed: {exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def unpack_bundle(archive: Path, into: Path, max_bytes: int = 2 * MAX_BYTES) -> Path:
    """Extract a zip holding one bundle (bundle.json at its root or in one folder); refuse unsafe members
    and members that would unpack to more than `max_bytes` in all (a zip bomb filling the disk)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            unpacked = sum(info.file_size for info in zf.infolist())
            if unpacked > max_bytes:
                raise BundleError(f"{archive}: unpacks to {unpacked} bytes, more than {_mib(max_bytes)}; refused")
            for info in zf.infolist():
                name = PurePosixPath(info.filename)
                if name.is_absolute() or ".." in name.parts or info.filename.startswith("\\"):
                    raise BundleError(f"{archive}: unsafe member {info.filename!r}; refused")
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise BundleError(f"{archive}: member {info.filename!r} is a symlink; refused")
            zf.extractall(into)
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{archive}: not a zip archive ({exc})") from None
    found = sorted(p.parent for p in into.rglob("bundle.json"))
    if len(found) != 1:
        raise BundleError(f"{archive}: expected one bundle (bundle.json), found {len(found)}")
    return found[0]


def fetch_bundle(url: str, sha256: str, deadline: float = DEFAULT_DEADLINE_S,
                 max_bytes: int = MAX_BYTES) -> tuple[Path, Path]:
    """(a temporary folder, the unpacked bundle inside it); the caller removes the temporary folder."""
    archive = download(url, sha256, deadline=deadline, max_bytes=max_bytes)
    tmp = Path(tempfile.mkdtemp(prefix="edgecxr-bundle-"))
    try:
        return tmp, unpack_bundle(archive, tmp, max_bytes=2 * max_bytes)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

