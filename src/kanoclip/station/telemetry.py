"""What `/metrics` exposes, in Prometheus' text format (prometheus_client): one registry per app, so that two
servers in one process (tests, benchmarks) count apart."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from kanoclip.labels import word

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = tuple(i / 20 for i in range(1, 21))


class ServeMetrics:
    """The server's series. Profile series are bounded with the profiles: a deleted profile's go with it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shown: dict[str, set[str]] = {}  # the label values each profile's detections were counted under
        r = self.registry
        self.requests = Counter(
            "kanoclip_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.errors = Counter(
            "kanoclip_request_errors", "answers with status >= 400, by endpoint", ["endpoint"], registry=r
        )
        self.latency = Histogram(
            "kanoclip_request_seconds", "request latency by endpoint", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "kanoclip_batch_images", "images per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.queue_depth = Gauge("kanoclip_queue_depth", "images waiting for a forward pass", registry=r)
        self.detections = Counter(
            "kanoclip_detections", "images scored, by profile and label", ["profile", "label"], registry=r
        )
        self.scores = Histogram(
            "kanoclip_score", "image anomaly scores, by profile", ["profile"], buckets=SCORE_BUCKETS, registry=r
        )
        # one series per type a profile's typing can name (its list, bounded by the types a profile may learn)
        self.defect_types = Counter(
            "kanoclip_defect_types", "anomalous images by profile and defect type", ["profile", "type"], registry=r
        )
        self.typed: dict[str, set[str]] = {}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint).inc()

    def observe_detection(
        self, profile: str, score: float | None, label: int | None, defect_type: str | None = None
    ) -> None:
        shown = "error" if score is None else ("unlabelled" if label is None else word(label))
        self.detections.labels(profile, shown).inc()
        self.shown.setdefault(profile, set()).add(shown)
        if score is not None:
            self.scores.labels(profile).observe(score)
        if defect_type is not None:
            self.defect_types.labels(profile, defect_type).inc()
            self.typed.setdefault(profile, set()).add(defect_type)

    def forget_profile(self, profile: str) -> None:
        """Drop a deleted profile's series, so that profiles created and deleted over months do not add up."""
        for shown in self.shown.pop(profile, ()):
            self.detections.remove(profile, shown)
        for typed in self.typed.pop(profile, ()):
            self.defect_types.remove(profile, typed)
        with contextlib.suppress(KeyError):
            self.scores.remove(profile)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware: each HTTP request's endpoint (its route's path template), status and latency. Plain ASGI,
    not Starlette's BaseHTTPMiddleware, which would hide a client's disconnect from the endpoints."""

    def __init__(self, app: Any, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            self.metrics.observe_request(getattr(route, "path", "other"), status[0], time.perf_counter() - start)
