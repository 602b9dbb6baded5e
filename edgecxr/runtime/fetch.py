"""Download a model bundle archive from a URL into a cache, checked by sha256, and unpack it safely.

For models that do not ship with edgecxr (a site's own fine-tuned bundle on an intranet server,
say), in the way ultralytics and torchxrayvision fetch weights: the archive is downloaded once into
the cache (`$EDGECXR_CACHE`, else `$XDG_CACHE_HOME/edgecxr`, else ~/.cache/edgecxr), named by its
sha256, and verified before use; a mismatch deletes the download and is an error. The shipped
reference models never need the network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from edgecxr.core.errors import BundleError
from edgecxr.core.fileutil import sha256_file

#: Largest archive accepted (the reference bundles are ~70 MB).
MAX_BYTES = 2 * 1024**3
CHUNK = 1 << 20


def cache_dir() -> Path:
    env = os.environ.get("EDGECXR_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecxr"


def download(url: str, sha256: str, timeout: float = 60.0) -> Path:
    """The archive at `url` in the cache, downloaded if absent; its sha256 must equal `sha256`."""
    sha256 = sha256.lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise BundleError(f"sha256 must be 64 hex digits, got {sha256!r}")
    dest = cache_dir() / "downloads" / f"{sha256}.zip"
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-given URL
            total = 0
            while chunk := resp.read(CHUNK):
                total += len(chunk)
                if total > MAX_BYTES:
                    raise BundleError(f"{url}: larger than {MAX_BYTES // 1024**2} MB; refused")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise BundleError(f"{url}: sha256 {digest.hexdigest()[:16]}… differs from the expected {sha256[:16]}…; "
                              "download discarded")
        os.replace(tmp, dest)
    except OSError as exc:  # URLError, timeouts, refused connections
        raise BundleError(f"{url}: download failed: {getattr(exc, 'reason', exc)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def unpack_bundle(archive: Path, into: Path) -> Path:
    """Extract a zip holding one bundle (bundle.json at its root or in one folder); refuse unsafe members."""
    try:
        with zipfile.ZipFile(archive) as zf:
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


def fetch_bundle(url: str, sha256: str) -> tuple[Path, Path]:
    """(a temporary folder, the unpacked bundle inside it); the caller removes the temporary folder."""
    archive = download(url, sha256)
    tmp = Path(tempfile.mkdtemp(prefix="edgecxr-bundle-"))
    try:
        return tmp, unpack_bundle(archive, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

