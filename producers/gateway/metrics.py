"""The gateway's own Prometheus metrics, served on its ``/metrics``.

Each app has a registry of its own, so two gateways in one process (tests) never
share counts. ``route`` is the route's template (``/v1/commands/{command_id}``), never
the raw path, so an id per request does not make a time series per id.
"""

from __future__ import annotations

import time
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Latency buckets (seconds): a single command is a few ms, a batch of 1,000 a second.
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: The label of a request no route matched (a scanner's paths are no series each).
UNMATCHED: Final = "other"


class GatewayMetrics:
    """``subswitch_gateway_requests_total{route,status}`` and
    ``subswitch_gateway_request_duration_seconds{route}``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "subswitch_gateway_requests",
            "HTTP requests the gateway answered, by route and status code.",
            ("route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "subswitch_gateway_request_duration_seconds",
            "Time from a request's arrival to its answer, by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)


class MetricsMiddleware:
    """Counts every request with its route and status (the ASGI app's outermost layer)."""

    def __init__(self, app: ASGIApp, *, metrics: GatewayMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on and count its answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.observe(self._route(scope), status, time.perf_counter() - started)

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        raw = scope.get("path", "")
        return raw if raw in self.routes else UNMATCHED
