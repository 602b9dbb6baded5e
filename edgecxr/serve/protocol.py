"""The KServe v2 / Open Inference Protocol over REST: decoding an infer request, encoding the answer.

Both tensor encodings tritonclient's HTTP client sends are read: JSON (`"data"`: a flat or nested
list) and Triton's binary tensor extension (a JSON header of `Inference-Header-Content-Length`
bytes, then each binary input's raw little-endian bytes in order, `parameters.binary_data_size`
each). JSON is what any client can write by hand; binary is what a client should use for images:
a 150x150x3 FP32 tensor is 270 kB raw against ~1.5 MB of JSON text that costs far more to parse.
Outputs are encoded the way the request asked (per output `parameters.binary_data`, or the
request-wide `binary_data_output`), as Triton does.

Triton's classification extension: an output requested with `parameters.classification` K
(tritonclient's `class_count`) comes back as BYTES of shape [batch, min(K, classes)], each element
"value:index:label" for the K highest values of its row, highest first, the value printed as Triton
prints it (C++ `std::to_string`, i.e. "%f"), the label where the output has labels (the
probabilities: the model's classes, as `labels.txt` of `edgecxr export triton`) and
"value:index" elsewhere. BYTES elements are JSON strings, or in binary each a 4-byte little-endian
length and its bytes.

Only what an image classifier takes is accepted: FP32 inputs (FP16/FP64 are not converted behind
the client's back), no BYTES inputs. Compressed bodies are decoded before they get here
(state.read_body, compression.py).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the header that marks Triton's binary tensor extension (length of the JSON part)
HEADER_LENGTH = "Inference-Header-Content-Length"
#: datatype name -> numpy dtype, for the tensors this service reads and writes
DTYPES = {"FP32": np.dtype("<f4")}


class ProtocolError(ValueError):
    """A malformed or unsupported infer request (the service answers 400 with the message)."""


@dataclass(frozen=True)
class WantedOutput:
    """One requested output: binary or JSON, and the classification count (0: the raw tensor)."""

    binary: bool
    classification: int = 0


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, WantedOutput] | None  #: requested outputs by name; None: all, raw, as binary_default
    binary_default: bool


def _json_part(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 < n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} is outside the body ({len(body)} bytes)")
        head, rest = body[:n], body[n:]
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, a 5000-digit int, [[[[...
        raise ProtocolError(f"the request is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object")
    return doc, rest


def _params(owner: dict[str, Any], where: str) -> dict[str, Any]:
    """`owner["parameters"]`, which the protocol defines as a JSON object; absent or null is {}."""
    params = owner.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}'parameters' must be a JSON object, got {type(params).__name__}")
    return params


def _flag(params: dict[str, Any], key: str, where: str, default: bool) -> bool:
    """A boolean parameter; "false" (a string) must not silently mean True."""
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}parameters.{key} must be true or false, got {value!r}"[:200])
    return value


def _count(params: dict[str, Any], where: str) -> int:
    """parameters.classification: a non-negative integer (0, as absent, asks for the raw tensor)."""
    value = params.get("classification", 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"{where}parameters.classification must be a non-negative integer, got {value!r}"[:200])
    return value


def _shape(spec: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return tuple(shape)


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """An infer request body (JSON, or JSON + binary tensors) -> its id, input arrays and wanted outputs."""
    doc, binary = _json_part(body, header_length)
    specs = doc.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise ProtocolError("'inputs' must be a non-empty list")
    inputs: dict[str, np.ndarray] = {}
    at = 0
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ProtocolError("each input needs a 'name'")
        name = spec["name"]
        datatype = spec.get("datatype")
        dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise ProtocolError(f"input {name!r}: datatype {datatype!r} is not supported; send FP32"[:200])
        shape = _shape(spec, name)
        count = int(np.prod(shape)) if shape else 1
        params = _params(spec, f"input {name!r}: ")
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size != count * dtype.itemsize:
                raise ProtocolError(f"input {name!r}: binary_data_size {size!r} does not match shape {list(shape)} "
                                    f"of {dtype.itemsize}-byte values ({count * dtype.itemsize})")
            if at + size > len(binary):
                raise ProtocolError(f"input {name!r}: the body holds fewer binary bytes than binary_data_size says")
            array = np.frombuffer(binary, dtype=dtype, count=count, offset=at).reshape(shape)
            at += size
        elif "data" in spec:
            try:
                array = np.asarray(spec["data"], dtype=np.float32)
            except (TypeError, ValueError, OverflowError, RecursionError):
                raise ProtocolError(f"input {name!r}: 'data' must hold FP32 numbers") from None
            if array.size != count:
                raise ProtocolError(f"input {name!r}: {array.size} values for shape {list(shape)} ({count})")
            array = array.reshape(shape)
        else:
            raise ProtocolError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        if name in inputs:
            raise ProtocolError(f"input {name!r} given twice")
        inputs[name] = array
    if at != len(binary):
        raise ProtocolError(f"{len(binary) - at} bytes after the binary inputs that no input claims")
    binary_default = _flag(_params(doc, ""), "binary_data_output", "", False)
    outputs = None
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        outputs = {}
        for out in doc["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise ProtocolError("each requested output needs a 'name'")
            where = f"output {out['name']!r}: "
            params = _params(out, where)
            outputs[out["name"]] = WantedOutput(_flag(params, "binary_data", where, binary_default),
                                                _count(params, where))
    rid = doc.get("id")
    if rid is not None and (not isinstance(rid, (str, int)) or isinstance(rid, bool)):
        raise ProtocolError(f"'id' must be a string, got {type(rid).__name__}")
    return InferRequest(None if rid is None else str(rid), inputs, outputs, binary_default)


def classify(array: np.ndarray, count: int, labels: Sequence[str] | None = None) -> np.ndarray:
    """Triton's classification of an output: per batch row its `count` highest values, highest first,
    as "value:index[:label]" strings (object array [batch, min(count, row size)]); ties keep index order."""
    rows = np.asarray(array, dtype=np.float32).reshape(len(array), -1)
    k = min(count, rows.shape[1])
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty((len(rows), k), dtype=object)
    for i, row in enumerate(order):
        for j, index in enumerate(row):
            text = f"{float(rows[i, index]):f}:{index}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            out[i, j] = text
    return out


def _bytes_raw(strings: np.ndarray) -> bytes:
    """BYTES elements in the binary tensor extension: each a 4-byte little-endian length, then its bytes."""
    parts = []
    for s in strings.ravel():
        data = s.encode()
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def encode_infer_response(model: str, version: str, request: InferRequest, outputs: dict[str, np.ndarray],
                          labels: Mapping[str, Sequence[str]] | None = None) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON + binary outputs where they were asked so.

    `labels`: output name -> class names, for "value:index:label" in classification answers.
    """
    wanted = request.outputs
    if wanted is None:
        wanted = {n: WantedOutput(request.binary_default) for n in outputs}
    unknown = [n for n in wanted if n not in outputs]
    if unknown:
        raise ProtocolError(f"unknown output(s) {unknown}; this model has {list(outputs)}")
    entries, blobs = [], []
    for name, want in wanted.items():
        entry: dict[str, Any]
        if want.classification:
            strings = classify(outputs[name], want.classification, (labels or {}).get(name))
            entry = {"name": name, "datatype": "BYTES", "shape": list(strings.shape)}
            if want.binary:
                raw = _bytes_raw(strings)
                entry["parameters"] = {"binary_data_size": len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = strings.ravel().tolist()
            entries.append(entry)
            continue
        array = np.ascontiguousarray(outputs[name], dtype=np.float32)
        entry = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if want.binary:
            raw = array.astype("<f4", copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.id is not None:
        doc["id"] = request.id
    doc["outputs"] = entries
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH.lower(): str(len(head))}
