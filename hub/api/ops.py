"""Operations: liveness, readiness of what the hub depends on, and Prometheus metrics.

Metrics live in a registry per app (`ApiMetrics`), never prometheus-client's global one,
so two apps in one process (tests, or serve + run) never mix or collide.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Literal

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from hub.api.app import ReadyProbe, get_deps
from hub.api.auth import public
from hub.api.users import UserStore
from hub.settings import Settings

PROBE_TIMEOUT_S: Final = 2.0


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


# ---------------------------------------------------------------------- probes


def default_probes(settings: Settings, users: UserStore) -> dict[str, ReadyProbe]:
    """Store (a query), broker (a TCP connect) and InfluxDB (`/ping`) reachability."""

    async def store() -> None:
        await run_in_threadpool(users.ping)

    async def broker() -> None:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(settings.mqtt.host, settings.mqtt.port), PROBE_TIMEOUT_S
        )
        writer.close()
        await writer.wait_closed()

    async def influxdb() -> None:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, trust_env=False) as client:
            response = await client.get(settings.influx.url.rstrip("/") + "/ping")
        if response.status_code >= 300:
            raise ConnectionError(f"/ping answered {response.status_code}")

    return {"store": store, "broker": broker, "influxdb": influxdb}


class Check(BaseModel):
    ok: bool
    detail: str = ""


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "checks": {
                        "store": {"ok": True, "detail": ""},
                        "broker": {"ok": True, "detail": ""},
                        "influxdb": {"ok": True, "detail": ""},
                    },
                }
            ]
        }
    )

    status: Literal["ready", "not_ready"]
    checks: dict[str, Check]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


async def run_probes(probes: Mapping[str, ReadyProbe]) -> dict[str, Check]:
    async def one(probe: ReadyProbe) -> Check:
        try:
            await asyncio.wait_for(probe(), PROBE_TIMEOUT_S + 1)
        except (OSError, TimeoutError, httpx.HTTPError, SQLAlchemyError) as exc:
            return Check(ok=False, detail=f"{type(exc).__name__}: {exc}")
        return Check(ok=True)

    names = list(probes)
    results = await asyncio.gather(*(one(probes[name]) for name in names))
    return dict(zip(names, results, strict=True))


# ---------------------------------------------------------------------- routes

router = APIRouter(tags=["ops"])
_public = [Depends(public())]


@router.get("/healthz", dependencies=_public, summary="The process is up")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    dependencies=_public,
    summary="Store, broker and InfluxDB are reachable",
    responses={503: {"model": Readiness, "description": "A dependency is unreachable"}},
)
async def readyz(request: Request, response: Response) -> Readiness:
    checks = await run_probes(get_deps(request).probes)
    ready = all(check.ok for check in checks.values())
    if not ready:
        response.status_code = 503
    return Readiness(status="ready" if ready else "not_ready", checks=checks)


@router.get(
    "/metrics",
    dependencies=_public,
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Metrics"}},
)
async def metrics(request: Request) -> Response:
    registry = get_deps(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
