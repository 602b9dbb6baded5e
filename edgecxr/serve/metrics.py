"""Prometheus metrics of the service, in a registry of its own (one per app, so tests can run several).

What an operator needs to see from outside: request rate and latency per endpoint and status,
requests in flight, queue depth, how full the batches are (is dynamic batching doing anything?),
inference time, refusals (overload, timeouts, size, token) and clients that went away.
"""

from __future__ import annotations

from typing import Any

#: batch-size histogram buckets: powers of two up to the largest batch anyone sensibly configures
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's counters, gauges and histograms (prometheus_client objects)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgecxr_requests", "HTTP requests answered", ["endpoint", "code"], registry=r)
        self.latency = Histogram("edgecxr_request_seconds", "Time from request to response", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("edgecxr_inflight_requests", "Requests being handled now", registry=r)
        self.queue = Gauge("edgecxr_queue_rows", "Rows admitted and not yet answered", ["model", "kind"], registry=r)
        self.batches = Counter("edgecxr_batches", "Batches run by the model", ["model", "kind"], registry=r)
        self.batch_rows = Counter("edgecxr_batch_rows", "Rows run by the model (sum of batch sizes)",
                                  ["model", "kind"], registry=r)
        self.batch_size = Histogram("edgecxr_batch_size", "Rows per batch (dynamic batching at work when > 1)",
                                    ["model", "kind"], buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("edgecxr_batch_seconds", "Time to run one batch through the model",
                                   ["model", "kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.overload = Counter("edgecxr_overload", "Requests refused with 503 because the queue was full",
                                ["model"], registry=r)
        self.timeouts = Counter("edgecxr_timeouts", "Requests that ran past the request timeout", registry=r)
        self.disconnects = Counter("edgecxr_client_disconnects",
                                   "Clients that went away before their answer", registry=r)
        self.predictions = Counter("edgecxr_predictions", "/v1/classify results by status",
                                   ["model", "status"], registry=r)
        self.dropped = Gauge("edgecxr_dropped_requests",
                             "Requests whose caller left (timeout, disconnect) before they ran: never computed",
                             ["model", "kind"], registry=r)
        self.ready = Gauge("edgecxr_ready", "1 when every model is loaded and warmed up", registry=r)

    def on_batch(self, model: str, kind: str) -> Any:
        """The batcher's callback for one model and kind."""
        def record(rows: int, seconds: float) -> None:
            self.batches.labels(model, kind).inc()
            self.batch_rows.labels(model, kind).inc(rows)
            self.batch_size.labels(model, kind).observe(rows)
            self.inference.labels(model, kind).observe(seconds)
        return record

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
