"""The gateway's Prometheus series: requests by route and code, latency, requests waiting, results stored.

``visionpipe_gateway_waiting_requests`` is what the gateway scales on (deploy/k8s: a KEDA Prometheus trigger):
requests held open for a result measure load in the pipeline's own unit, where CPU would miss a gateway that
only waits.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from visionpipe.metrics import LATENCY_BUCKETS


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter(
            "visionpipe_gateway_requests",
            "HTTP requests answered, by route and status code",
            ["route", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "visionpipe_gateway_request_seconds",
            "Time to answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.waiting = Gauge("visionpipe_gateway_waiting_requests", "Requests held open for a result", registry=r)
        self.stored = Counter(
            "visionpipe_gateway_results_stored", "Results and failures stored for fetching", ["outcome"], registry=r
        )
        self.ready = Gauge("visionpipe_ready", "1 when the stage is ready to serve", ["stage"], registry=r)
        self.refused = Counter(
            "visionpipe_gateway_refused",
            "Requests refused at admission, by why (deadline: the pipeline expects to take longer than it)",
            ["why"],
            registry=r,
        )
        self.deadline = Counter(
            "visionpipe_gateway_deadline_answers",
            "Requests with a deadline, by how they were answered: in_time (a result by the deadline), "
            "exceeded (504 deadline_exceeded: early from a stage, or late and said so)",
            ["outcome"],
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every answered request under its route template (``/v1/results/{request_id}``)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception that escapes every handler becomes uvicorn's 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
