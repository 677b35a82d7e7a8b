"""The API's HTTP figures: one pure ASGI middleware, outside the front door, so that the
requests it sheds are counted too.

Requests are labelled by route template (`/api/v1/sessions/{session_id}/checks`), never by
raw path: a path carries ids, and a label per id would grow without bound. A request no
route took (shed, refused as too large, an unknown path) is labelled `unrouted`."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNROUTED = "unrouted"
# From a health check (about 1 ms) to the request deadline (15 s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)


class RequestMetrics:
    def __init__(self, app: Any, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter("worksession_http_requests_total",
                                "HTTP requests answered, by route template, method and status",
                                ("route", "method", "status"), registry=registry)
        self.latency = Histogram("worksession_http_request_duration_seconds",
                                 "Time from a request's arrival to its answer's end",
                                 ("route", "method"), buckets=LATENCY_BUCKETS,
                                 registry=registry)
        self.in_flight = Gauge("worksession_http_requests_in_flight",
                               "Requests being answered now (waiting for a place included)",
                               registry=registry)
        self.shed = Counter("worksession_http_requests_shed_total",
                            "Requests refused 503 /problems/overloaded by load shedding",
                            registry=registry)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500  # what the client gets if the application fails before answering

        async def sender(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        self.in_flight.inc()
        try:
            await self.app(scope, receive, sender)
        finally:
            self.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or UNROUTED
            method = scope["method"]
            self.requests.labels(route, method, str(status)).inc()
            self.latency.labels(route, method).observe(time.perf_counter() - started)
            if scope.get("state", {}).get("shed"):
                self.shed.inc()
