"""Body (de)compression and the classification strings on their own (no HTTP): the bomb cap, every
gzip/deflate form clients send, and Triton's "value:index:label" format."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest

from edgecxr.serve.compression import EncodingError, compress, decompress, request_encoding, response_encoding
from edgecxr.serve.protocol import classify

DATA = b'{"inputs": []}' * 1000


@pytest.mark.parametrize("encoding, packed", [
    ("gzip", gzip.compress(DATA)),
    ("gzip", gzip.compress(DATA[:5000]) + gzip.compress(DATA[5000:])),  # two members (RFC 1952)
    ("deflate", zlib.compress(DATA)),  # zlib-wrapped: what RFC 9110 and tritonclient send
    ("deflate", zlib.compress(DATA)[2:-4]),  # raw deflate: what some clients send
])
def test_decompress_every_form_clients_send(encoding: str, packed: bytes) -> None:
    assert decompress(packed, encoding, len(DATA)) == DATA


def test_a_decompression_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros in ~64 kB
    assert len(bomb) < 100_000
    with pytest.raises(EncodingError) as caught:
        decompress(bomb, "gzip", 1 << 20)
    assert caught.value.status == 413 and "once decompressed" in str(caught.value)
    assert decompress(gzip.compress(DATA), "gzip", len(DATA)) == DATA  # exactly at the limit is fine
    with pytest.raises(EncodingError):
        decompress(gzip.compress(DATA), "gzip", len(DATA) - 1)
    # a bomb in the second gzip member counts against the same limit
    with pytest.raises(EncodingError):
        decompress(gzip.compress(DATA) + bomb, "gzip", 1 << 20)


@pytest.mark.parametrize("encoding, packed, status", [
    ("gzip", gzip.compress(DATA)[:40], 400),  # truncated
    ("gzip", b"", 400),
    ("gzip", b"not gzip at all", 400),
    ("deflate", zlib.compress(DATA) + b"junk", 400),  # bytes after the stream
    ("br", b"x", 415),
])
def test_corrupt_or_unknown_bodies_are_refused(encoding: str, packed: bytes, status: int) -> None:
    with pytest.raises(EncodingError) as caught:
        decompress(packed, encoding, 1 << 20)
    assert caught.value.status == status


def test_encoding_headers() -> None:
    assert request_encoding(None) is None and request_encoding("identity") is None
    assert request_encoding("GZIP") == "gzip" and request_encoding("deflate") == "deflate"
    with pytest.raises(EncodingError) as caught:
        request_encoding("br")
    assert caught.value.status == 415
    assert response_encoding("gzip, deflate") == "gzip"
    assert response_encoding("gzip;q=0, deflate") == "deflate"
    assert response_encoding("br") is None and response_encoding(None) is None
    assert gzip.decompress(compress(DATA, "gzip")) == DATA and zlib.decompress(compress(DATA, "deflate")) == DATA


def test_classify_formats_like_triton() -> None:
    """C++ std::to_string of the float ("%f"), index, label; highest first; ties in index order; K clipped."""
    probs = np.array([[0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.5, 0.0]], np.float32)
    labels = ["covid", "normal", "pneumonia_bacterial", "pneumonia_viral"]
    top = classify(probs, 2, labels)
    assert top.shape == (2, 2)
    assert top.tolist() == [["0.700000:1:normal", "0.100000:0:covid"],
                            ["0.500000:2:pneumonia_bacterial", "0.250000:0:covid"]]
    assert classify(probs, 9, None).shape == (2, 4)  # min(K, classes), as Triton
    assert classify(probs, 1, None).tolist() == [["0.700000:1"], ["0.500000:2"]]  # no labels: value:index
