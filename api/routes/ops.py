"""Operations routes: liveness, readiness of what the hub depends on, and Prometheus
metrics (`api.metrics`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import httpx
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy.exc import SQLAlchemyError

from api.deps import ReadyProbe, get_deps
from api.probes import PROBE_TIMEOUT_S
from api.roles import public
from api.schemas.ops import Check, Health, Readiness


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
