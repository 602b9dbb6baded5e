"""What the routes and the application share: the service state, the request helpers (body limits,
timeouts, disconnects) and the endpoint wrapper that turns the service's exceptions into answers.

Its own module so that app.py (start-up, guard) and routes.py (the handlers) both import it and
neither imports the other at module level.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgecxr.serve.batching import Overloaded
from edgecxr.serve.compression import EncodingError, decompress, request_encoding
from edgecxr.serve.config import ServeConfig
from edgecxr.serve.metrics import Metrics
from edgecxr.serve.models import ServedModel
from edgecxr.serve.protocol import ProtocolError

log = logging.getLogger("edgecxr.serve")

#: compressed bodies larger than this are decompressed in a worker thread, not on the event loop
_INFLATE_IN_THREAD = 16 << 10


class HTTPError(Exception):
    """An answer other than 200, with its one-line reason (sent as the protocol's {"error": ...})."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class ClientGone(Exception):
    """The client closed the connection before its answer; nothing is sent."""


@dataclass
class ServiceState:
    """What the routes share: config, metrics, the models and the service's phase."""

    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    error: str | None = None
    failure: BaseException | None = None  #: what made start-up fail (the CLI re-raises it)
    tmpdir: str | None = None
    on_ready: Callable[[ServiceState], None] | None = None
    on_fatal: Callable[[ServiceState], None] | None = None

    def model(self, name: str | None, version: str | None = None) -> ServedModel:
        """The served model `name` (None: the first), 404 if unknown, 503 while it is not ready."""
        from edgecxr.serve.models import VERSION

        name = name or self.config.default_model
        if name not in {m.name for m in self.config.models}:
            raise HTTPError(404, f"unknown model {name!r}; served: {[m.name for m in self.config.models]}")
        if version not in (None, "", VERSION):
            raise HTTPError(404, f"model {name!r} has no version {version!r} (only {VERSION})")
        served = self.models.get(name)
        if served is None or not served.ready:
            raise HTTPError(503, f"model {name!r} is not ready yet", {"retry-after": "1"})
        return served


# ------------------------------------------------------------------------------------------------
# Request helpers: body limits, timeouts, disconnects
# ------------------------------------------------------------------------------------------------
async def read_body(request: Any, state: ServiceState) -> bytes:
    """The whole body, decoded (Content-Encoding gzip / deflate, as Triton accepts); refused with 413
    past the size limit (compressed as sent, and again decompressed), 408 if it is slower than the
    timeout, 415 for an encoding other than gzip, deflate or identity."""
    from starlette.requests import ClientDisconnect

    limit = state.config.max_body_bytes
    try:
        encoding = request_encoding(request.headers.get("content-encoding"))
    except EncodingError as exc:
        raise HTTPError(exc.status, str(exc)) from None
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")

    async def collect() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        body = await asyncio.wait_for(collect(), state.config.timeout_s)
    except asyncio.TimeoutError:
        state.metrics.timeouts.inc()
        raise HTTPError(408, f"the request body did not arrive within {state.config.timeout_s:g} s") from None
    except ClientDisconnect:
        state.metrics.disconnects.inc()
        raise ClientGone() from None
    if encoding is None:
        return body
    try:
        if len(body) > _INFLATE_IN_THREAD:
            return await asyncio.to_thread(decompress, body, encoding, limit)
        return decompress(body, encoding, limit)
    except EncodingError as exc:
        raise HTTPError(exc.status, str(exc)) from None


async def _disconnected(request: Any) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer(request: Any, state: ServiceState, work: Any) -> Any:
    """Await `work` (a batcher submission) within the timeout; cancel it if the client goes away."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=state.config.timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()  # dropped from the queue if it has not run; its result discarded if it has
        if watcher in done:
            state.metrics.disconnects.inc()
            raise ClientGone()
        state.metrics.timeouts.inc()
        raise HTTPError(504, f"no answer within {state.config.timeout_s:g} s")
    finally:
        watcher.cancel()


def endpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Route wrapper: the service's exceptions become protocol answers ({"error": "..."}), never tracebacks."""
    from starlette.responses import JSONResponse, Response

    async def handler(request: Any) -> Any:
        state: ServiceState = request.app.state.service
        try:
            return await fn(request, state)
        except HTTPError as exc:
            return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)
        except ProtocolError as exc:
            return JSONResponse({"error": str(exc)}, 400)
        except Overloaded as exc:
            return JSONResponse({"error": str(exc)}, 503, headers={"retry-after": str(exc.retry_after)})
        except ClientGone:
            return Response(status_code=499)  # nginx's "client closed request"; nobody receives it
        except Exception as exc:  # a bug or a failing model: one line to the client, the traceback to the log
            log.exception("request %s failed", request.url.path)
            return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    return handler
