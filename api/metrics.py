"""The API's Prometheus metrics, in a registry per app (`ApiMetrics`), never
prometheus-client's global one, so two apps in one process (tests, or serve + run)
never mix or collide."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram


class ApiMetrics:
    """The API's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gridwatch_api_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gridwatch_api_request_seconds",
            "Request handling time by route template",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.logins = Counter(
            "gridwatch_api_logins", "Login attempts by outcome", ["outcome"], registry=self.registry
        )
        self.actions = Counter(
            "gridwatch_api_event_actions",
            "Operator actions on events by action and outcome",
            ["action", "outcome"],
            registry=self.registry,
        )
        self.reports = Counter(
            "gridwatch_api_reports", "Resident reports filed", registry=self.registry
        )


def install_metrics(app: FastAPI, metrics: ApiMetrics) -> None:
    """Count and time every request under its route template (bounded label values)."""

    @app.middleware("http")
    async def measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        metrics.requests.labels(request.method, template, str(response.status_code)).inc()
        metrics.latency.labels(template).observe(time.perf_counter() - started)
        return response
