"""The routes: the Open Inference Protocol (/v2/...), /v1/classify for encoded images, and /metrics.

Of Triton's extensions, those in EXTENSIONS (binary tensors, classification, model configuration,
statistics) and compressed bodies both ways; the repository index is answered, load of a served
model is a no-op and unload is refused (models are fixed at start), so `model_repository` is not
advertised. Any other path is a JSON 404 (app.py), never plain text.

/v2/models/NAME/infer takes a preprocessed FP32 NHWC tensor (as `edgecxr.preprocess` makes it, or
as a client that moves to Triton would send it) and returns the model's raw outputs. /v1/classify
takes the image or DICOM file itself (raw body, or multipart with one file) and answers with
exactly the JSON of `edgecxr infer --json` for that one file, audit trail included: the same
decoding limits, input checks and Classifier path, so a rejected or abstained input says so here
too. An unreadable file is 422 with that document (its `error` says why).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from edgecxr.serve.batching import Overloaded
from edgecxr.serve.compression import compress, response_encoding
from edgecxr.serve.models import VERSION, ServedModel
from edgecxr.serve.protocol import HEADER_LENGTH, ProtocolError, encode_infer_response, parse_infer_request
from edgecxr.serve.state import HTTPError, ServiceState, answer, endpoint, read_body
from edgecxr.serve.stats import ModelStats

#: bodies larger than this are parsed in a worker thread, not on the event loop
_PARSE_IN_THREAD = 64 << 10
#: upload suffixes kept on the temporary file (a DICOM without preamble is recognised by suffix)
_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}
#: the Triton protocol extensions GET /v2 advertises: each one is implemented and tested
#: (tests/serve/test_triton_extensions.py). Not `model_repository`: models are fixed when the
#: service starts, so load / unload are refused (the index is answered all the same).
EXTENSIONS = ("binary_tensor_data", "classification", "model_configuration", "statistics")
#: why load / unload are refused
_FIXED = "models are fixed when the server starts (edgecxr serve -m NAME=PATH ...); restart it to change them"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    """JSON as `infer --json` writes it (NaN stays NaN, which Starlette's JSONResponse refuses)."""
    from starlette.responses import Response

    return Response(json.dumps(data).encode(), status, headers=headers, media_type="application/json")


# ------------------------------------------------------------------------------------------------
# Health and metadata
# ------------------------------------------------------------------------------------------------
@endpoint
async def live(request: Any, state: ServiceState) -> Any:
    return _json({"live": True})


@endpoint
async def ready(request: Any, state: ServiceState) -> Any:
    if state.ready and not state.draining:
        return _json({"ready": True})
    why = "shutting down" if state.draining else state.error or "loading models"
    return _json({"ready": False, "error": why}, 503, {"retry-after": "1"})


@endpoint
async def server_metadata(request: Any, state: ServiceState) -> Any:
    from edgecxr.core.version import __version__

    return _json({"name": "edgecxr", "version": __version__, "extensions": list(EXTENSIONS)})


@endpoint
async def repository_index(request: Any, state: ServiceState) -> Any:
    rows = []
    for spec in state.config.models:
        served = state.models.get(spec.name)
        rows.append({"name": spec.name, "version": VERSION,
                     "state": "READY" if served is not None and served.ready else "LOADING"})
    return _json(rows)


@endpoint
async def repository_load(request: Any, state: ServiceState) -> Any:
    """Triton's load: a served model is loaded already (200, nothing reloaded); anything else is refused."""
    name = request.path_params["name"]
    body = await read_body(request, state)
    try:
        doc = json.loads(body) if body.strip() else {}
    except ValueError:
        raise HTTPError(400, "the load request is not valid JSON") from None
    overrides = doc.get("parameters") if isinstance(doc, dict) else None
    if name not in {m.name for m in state.config.models}:
        raise HTTPError(403, f"cannot load {name!r}: {_FIXED}")
    if overrides:
        raise HTTPError(403, f"cannot load {name!r} with a new config or files: {_FIXED}")
    state.model(name)  # 503 + Retry-After while it is still loading
    return _json({})


@endpoint
async def repository_unload(request: Any, state: ServiceState) -> Any:
    raise HTTPError(403, f"cannot unload {request.path_params['name']!r}: {_FIXED}")


@endpoint
async def model_stats(request: Any, state: ServiceState) -> Any:
    """Triton's statistics extension: every model's, or one model's (its one version)."""
    params = request.path_params
    names = [m.name for m in state.config.models]
    if "name" in params:
        if params["name"] not in names:
            raise HTTPError(404, f"unknown model {params['name']!r}; served: {names}")
        if params.get("version") not in (None, "", VERSION):
            raise HTTPError(404, f"model {params['name']!r} has no version {params['version']!r} (only {VERSION})")
        names = [params["name"]]
    rows = []
    for name in names:
        served = state.models.get(name)
        stats = served.stats if served is not None else ModelStats()
        rows.append(stats.document(name, VERSION))
    return _json({"model_stats": rows})


def _served(request: Any, state: ServiceState) -> ServedModel:
    params = request.path_params
    return state.model(params["name"], params.get("version"))


@endpoint
async def model_metadata(request: Any, state: ServiceState) -> Any:
    return _json(_served(request, state).metadata())


@endpoint
async def model_ready(request: Any, state: ServiceState) -> Any:
    _served(request, state)  # 404 unknown, 503 not ready
    return _json({"name": request.path_params["name"], "ready": not state.draining},
                 503 if state.draining else 200)


@endpoint
async def model_config(request: Any, state: ServiceState) -> Any:
    cfg = state.config
    return _json(_served(request, state).config(cfg.max_batch, cfg.max_delay_ms / 1e3))


@endpoint
async def metrics(request: Any, state: ServiceState) -> Any:
    from starlette.responses import Response

    body, content_type = state.metrics.render()
    return Response(body, headers={"content-type": content_type})


# ------------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------------
def _check_input(served: ServedModel, inputs: dict[str, np.ndarray]) -> np.ndarray:
    x = inputs.get(served.input_name)
    if x is None or len(inputs) != 1:
        raise ProtocolError(f"model {served.name!r} takes one input, {served.input_name!r}; got {list(inputs)}")
    want = tuple(served.classifier.spec.input_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise ProtocolError(f"input {served.input_name!r}: shape {list(x.shape)} is not [N, {', '.join(map(str, want))}]"
                            f" with N >= 1 (preprocessing {served.classifier.spec.id})")
    if not np.isfinite(x).all():
        raise ProtocolError(f"input {served.input_name!r} holds NaN or Inf")
    return x


def _refuse_if_full(state: ServiceState, served: ServedModel, batcher: Any) -> None:
    """503 at once when the queue is already full: under overload a refusal must cost next to nothing."""
    if batcher is not None and batcher.would_refuse(1):
        state.metrics.overload.labels(served.name).inc()
        raise Overloaded(batcher.retry_after())


async def _admitted(state: ServiceState, served: ServedModel, submission: Any) -> Any:
    """A batcher submission, with refusals for a full queue counted per model."""
    try:
        return await submission
    except Overloaded:
        state.metrics.overload.labels(served.name).inc()
        raise


@endpoint
async def infer(request: Any, state: ServiceState) -> Any:
    from starlette.responses import Response

    served = _served(request, state)
    _refuse_if_full(state, served, served.tensors)  # before reading and parsing a body that cannot be queued
    t0 = time.perf_counter()
    body = await read_body(request, state)  # gzip / deflate decoded here
    header_length = request.headers.get(HEADER_LENGTH)  # the length of the JSON part once decoded
    if len(body) > _PARSE_IN_THREAD:
        req = await asyncio.to_thread(parse_infer_request, body, header_length)
    else:
        req = parse_infer_request(body, header_length)
    x = _check_input(served, req.inputs)
    assert served.tensors is not None
    ok = False  # from here on the request counts in the model's statistics (a malformed one never does, as on Triton)
    try:
        rows = await answer(request, state, _admitted(state, served, served.tensors.submit(list(x))))
        outputs = {name: np.stack([r[name] for r in rows]) for name in rows[0]}
        content, headers = encode_infer_response(served.name, VERSION, req, outputs, served.labels)
        ok = True
    finally:
        served.stats.on_request(ok, time.perf_counter() - t0)
    encoding = response_encoding(request.headers.get("accept-encoding"))
    if encoding is not None:  # as Triton: the answer compressed when the client asks (tritonclient's
        # response_compression_algorithm); Inference-Header-Content-Length still counts the decoded JSON
        content = await asyncio.to_thread(compress, content, encoding) if len(content) > _PARSE_IN_THREAD \
            else compress(content, encoding)
        headers = {**headers, "content-encoding": encoding, "vary": "accept-encoding"}
    return Response(content, headers=headers)


async def _upload(request: Any, body: bytes) -> tuple[bytes, str]:
    """The file bytes and its name: the one file of a multipart form, or the raw body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        from starlette.datastructures import UploadFile
        from starlette.requests import Request

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
        except Exception as exc:  # starlette's MultiPartException and malformed forms
            raise HTTPError(400, f"cannot read the multipart form: {exc}") from None
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(files) != 1:
            raise HTTPError(400, f"send exactly one file in the form (got {len(files)})")
        data = await files[0].read()
        return data, files[0].filename or "upload"
    return body, request.query_params.get("filename") or "upload"


def _prepare_bytes(data: bytes, name: str, served: ServedModel, folder: str) -> tuple[Any, Any]:
    """Decode + input checks through the file path `infer` uses (same limits, DICOM rules, sha256).

    The upload goes to a private temporary file first: `runtime.inputs.prepare` and the DICOM
    header checks read files, and one code path for both means no decoding rule exists twice.
    """
    from edgecxr.runtime.inputs import prepare

    suffix = Path(name).suffix.lower()
    path = Path(folder) / f"{uuid.uuid4().hex}{suffix if suffix in _SUFFIXES else ''}"
    with open(path, "xb") as fh:
        fh.write(data)
    try:
        pred, tensor = prepare(path, 0, served.classifier.spec, served.classifier.input_rules)
    finally:
        os.unlink(path)
    pred.source = name
    return pred, tensor


@endpoint
async def classify(request: Any, state: ServiceState) -> Any:
    from edgecxr.runtime.results import results_document

    t0 = time.perf_counter()
    served = state.model(request.query_params.get("model"))
    images = served.images
    assert images is not None and state.tmpdir is not None
    _refuse_if_full(state, served, images)  # before paying for the upload and the decode
    body = await read_body(request, state)
    if not body:
        raise HTTPError(400, "empty body: send an image or DICOM file (raw body or multipart)")
    data, name = await _upload(request, body)
    pred, tensor = await asyncio.to_thread(_prepare_bytes, data, name, served, state.tmpdir)
    if tensor is not None:  # only inputs that reach the model count in its statistics, as on Triton
        ok = False
        try:
            (pred,) = await answer(request, state, _admitted(state, served, images.submit([(pred, tensor)])))
            ok = True
        finally:
            served.stats.on_request(ok, time.perf_counter() - t0)
    state.metrics.predictions.labels(served.name, pred.status).inc()  # "failed" when pred.error is set
    clf = served.classifier
    doc = results_document([pred], clf.audit, clf.classes, backend=clf.backend_info)
    return _json(doc, 422 if pred.error else 200)


def _routes() -> list[Any]:
    from starlette.routing import Route

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    out = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_metadata),
        Route("/v2/repository/index", repository_index, methods=["POST", "GET"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
        Route("/v2/models/stats", model_stats),  # before /v2/models/{name}, which it would match
        Route("/v1/classify", classify, methods=["POST"]),
        Route("/metrics", metrics),
    ]
    for base in (model, versioned):
        out += [
            Route(base, model_metadata),
            Route(f"{base}/ready", model_ready),
            Route(f"{base}/config", model_config),
            Route(f"{base}/stats", model_stats),
            Route(f"{base}/infer", infer, methods=["POST"]),
        ]
    return out


ROUTES = _routes()
