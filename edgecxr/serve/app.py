"""The ASGI application of `edgecxr serve`: start-up (load, warm up), the guard, the routes (state.py: what they share).

Starlette rather than FastAPI: the Open Inference Protocol's binary tensor extension needs the raw
body (a JSON header and raw tensor bytes in one request) and a 270 kB tensor must not go through
per-request model validation, so FastAPI's pydantic layer would be bypassed on every route that
matters while still being a dependency; Starlette is the part of FastAPI this service uses.
uvicorn runs it (server.py): the reference ASGI server, with graceful shutdown built in.

Start-up loads the models in a background task, so `/v2/health/live` answers while they load and
`/v2/health/ready` says 200 only once every model has loaded and passed a warm-up inference.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from edgecxr.serve.batching import DynamicBatcher
from edgecxr.serve.config import OPEN_PATHS, ServeConfig
from edgecxr.serve.models import load_model
from edgecxr.serve.state import ServiceState

__all__ = ["ServiceState", "create_app"]

log = logging.getLogger("edgecxr.serve")


# ------------------------------------------------------------------------------------------------
# The guard: token, in-flight count, per-endpoint metrics
# ------------------------------------------------------------------------------------------------
_MODEL_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?")


def endpoint_label(path: str) -> str:
    """A request path as a metric label: the model name replaced, unknown paths lumped as 'other'."""
    if path == "/v2/models/stats":  # every model's statistics, not a model named "stats"
        return path
    label = _MODEL_PATH.sub("/v2/models/{name}", path)
    if label.startswith("/v2/repository/models/"):
        label = re.sub(r"^/v2/repository/models/[^/]+", "/v2/repository/models/{name}", label)
    known = {"/v2", "/v2/health/live", "/v2/health/ready", "/v2/repository/index", "/v2/models/{name}",
             "/v2/models/{name}/ready", "/v2/models/{name}/config", "/v2/models/{name}/infer",
             "/v2/models/{name}/stats", "/v2/repository/models/{name}/load", "/v2/repository/models/{name}/unload",
             "/v1/classify", "/metrics"}
    return label if label in known else "other"


class Guard:
    """ASGI middleware: refuses a missing or wrong bearer token (401) and records every request."""

    def __init__(self, app: Any, state: ServiceState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        metrics, label, t0, status = self.state.metrics, endpoint_label(scope["path"]), time.perf_counter(), [500]

        async def recorded_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        metrics.inflight.inc()
        try:
            if self._authorized(scope):
                await self.app(scope, receive, recorded_send)
            else:
                from starlette.responses import JSONResponse

                await JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"}, 401,
                                   headers={"www-authenticate": "Bearer"})(scope, receive, recorded_send)
        finally:
            metrics.inflight.dec()
            metrics.requests.labels(label, str(status[0])).inc()
            metrics.latency.labels(label).observe(time.perf_counter() - t0)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        token = self.state.config.token
        if token is None or scope["path"] in OPEN_PATHS:
            return True
        given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


# ------------------------------------------------------------------------------------------------
# Start-up and shutdown
# ------------------------------------------------------------------------------------------------
async def _load_all(state: ServiceState) -> None:
    """Load every model, start its batchers, warm it up; then the service is ready."""
    cfg, metrics = state.config, state.metrics
    try:
        for spec in cfg.models:
            served = await asyncio.to_thread(load_model, spec, cfg.backend, cfg.precision, cfg.input_rules,
                                             cfg.allow_rejected)
            state.models[spec.name] = served
            for kind, run in (("tensors", served.run_tensors), ("images", served.run_prepared)):
                batcher = DynamicBatcher(run, served.executor, cfg.max_batch, cfg.max_delay_ms / 1e3, cfg.max_queue,
                                         on_batch=metrics.on_batch(spec.name, kind), max_wait_s=cfg.timeout_s,
                                         on_run=served.stats.on_run)
                batcher.start()
                setattr(served, kind, batcher)
                metrics.queue.labels(spec.name, kind).set_function(lambda b=batcher: b.pending)
                metrics.dropped.labels(spec.name, kind).set_function(lambda b=batcher: b.stats.dropped)
            await asyncio.get_running_loop().run_in_executor(served.executor, served.warm_up)
            for batcher in (served.tensors, served.images):  # a full batch costs about max_batch/2 warm-ups
                batcher.expect(served.warm_up_s * cfg.max_batch / 2)
            log.info("model %s ready: %s", spec.name, served.classifier.describe())
    except Exception as exc:
        state.error, state.failure = str(exc) or type(exc).__name__, exc
        if state.on_fatal is not None:
            state.on_fatal(state)  # the CLI stops the server and prints the one error line
        else:
            log.error("error: %s", state.error)
        return
    state.ready = True
    metrics.ready.set(1)
    if state.on_ready is not None:
        state.on_ready(state)


@asynccontextmanager
async def _lifespan(app: Any):
    state: ServiceState = app.state.service
    state.tmpdir = tempfile.mkdtemp(prefix="edgecxr-serve-")
    loader = asyncio.create_task(_load_all(state))
    try:
        yield
    finally:
        state.draining, state.ready = True, False
        state.metrics.ready.set(0)
        await asyncio.gather(loader, return_exceptions=True)
        for served in state.models.values():
            for batcher in (served.tensors, served.images):
                if batcher is not None:
                    await batcher.close()  # runs what is still queued: nothing admitted is lost
            await asyncio.to_thread(served.close)
        shutil.rmtree(state.tmpdir, ignore_errors=True)


async def _json_http_error(request: Any, exc: Any) -> Any:
    """Starlette's own refusals (no such route 404, wrong method 405) as the protocol's {"error": ...}:
    Triton clients parse every error body as JSON (tritonclient: "Parse error at offset 1" on text)."""
    from starlette.responses import JSONResponse

    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path} (see GET /v2 and docs/SERVING.md)"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return JSONResponse({"error": message}, exc.status_code, headers=exc.headers)


def create_app(config: ServeConfig, on_ready: Callable[[ServiceState], None] | None = None,
               on_fatal: Callable[[ServiceState], None] | None = None) -> tuple[Any, ServiceState]:
    """The ASGI app (guarded) and its state; models load when the server starts it (lifespan)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException

    from edgecxr.serve import routes

    state = ServiceState(config, on_ready=on_ready, on_fatal=on_fatal)
    inner = Starlette(routes=routes.ROUTES, lifespan=_lifespan, exception_handlers={HTTPException: _json_http_error})
    inner.state.service = state
    return Guard(inner, state), state
