"""HTTP body compression as Triton's HTTP endpoint does it: gzip / deflate request bodies, and answers
compressed when the client asks (tritonclient's `request_compression_algorithm` and
`response_compression_algorithm`).

Why a cap while decompressing, not after: a few kB of gzip can expand to gigabytes (a decompression
bomb). The body limit (`--max-body-mb`) is applied to the compressed bytes as they arrive and again to
the decompressed bytes as zlib produces them (`decompressobj` with `max_length`), so a bomb is
refused with 413 after producing at most limit + 1 bytes, never by running out of memory.

Pure functions on bytes; the service maps `EncodingError.status` to its answer.
"""

from __future__ import annotations

import gzip
import zlib

#: Content-Encoding values of request bodies this service decodes ("identity" and none: as sent)
REQUEST_ENCODINGS = ("gzip", "deflate")


class EncodingError(ValueError):
    """A body that cannot be decoded: 415 (unknown encoding), 413 (too large once decoded), 400 (corrupt)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def request_encoding(header: str | None) -> str | None:
    """The body's encoding from its Content-Encoding header: 'gzip', 'deflate', or None for identity."""
    value = (header or "identity").strip().lower()
    if value in ("", "identity"):
        return None
    if value in ("x-gzip",):
        return "gzip"
    if value not in REQUEST_ENCODINGS:
        raise EncodingError(415, f"Content-Encoding {value!r} is not accepted; send gzip, deflate or identity"[:200])
    return value


def decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """`data` decoded (gzip: every member; deflate: zlib-wrapped, or raw as some clients send it).

    Raises EncodingError 413 as soon as the output passes `limit` bytes, 400 for a corrupt or truncated body.
    """
    if encoding == "gzip":
        wbits = [16 + zlib.MAX_WBITS]
    elif encoding == "deflate":
        wbits = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # RFC 9110 says zlib format; raw deflate is a common mistake
    else:
        raise EncodingError(415, f"Content-Encoding {encoding!r} is not accepted")
    last: Exception | None = None
    for bits in wbits:
        try:
            return _inflate(data, bits, limit, encoding)
        except zlib.error as exc:
            last = exc
    raise EncodingError(400, f"the {encoding} request body is corrupt: {last}"[:200])


def _inflate(data: bytes, wbits: int, limit: int, encoding: str) -> bytes:
    parts: list[bytes] = []
    total, rest = 0, data
    while True:
        d = zlib.decompressobj(wbits)
        chunk = d.decompress(rest, limit + 1 - total)  # max_length >= 1 here (0 would mean unlimited)
        while True:
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise EncodingError(413, f"the {encoding} request body is over the limit of {limit} bytes once "
                                         "decompressed")
            if d.eof or not d.unconsumed_tail:
                break
            chunk = d.decompress(d.unconsumed_tail, limit + 1 - total)
        if not d.eof:
            raise EncodingError(400, f"the {encoding} request body is truncated")
        rest = d.unused_data
        if not rest or encoding != "gzip":  # gzip allows several members one after another (RFC 1952)
            if rest:
                raise EncodingError(400, f"{len(rest)} bytes after the end of the {encoding} stream")
            return b"".join(parts)


def response_encoding(accept: str | None) -> str | None:
    """The encoding to answer in from Accept-Encoding: gzip if acceptable, else deflate, else None."""
    if not accept:
        return None
    weights: dict[str, float] = {}
    for item in accept.split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[name.strip().lower()] = q
    for name in ("gzip", "deflate"):
        if weights.get(name, weights.get("*", 0.0)) > 0:
            return name
    return None


def compress(data: bytes, encoding: str) -> bytes:
    """`data` as a gzip or (zlib-wrapped) deflate body; fast level 1: answers are small and latency counts."""
    return gzip.compress(data, compresslevel=1, mtime=0) if encoding == "gzip" else zlib.compress(data, 1)
