"""Readiness probes: can the hub reach its store, its broker and InfluxDB?"""

from __future__ import annotations

import asyncio
from typing import Final

import httpx
from starlette.concurrency import run_in_threadpool

from accounts.users import UserStore
from api.deps import ReadyProbe

PROBE_TIMEOUT_S: Final = 2.0


def default_probes(
    users: UserStore, broker_host: str, broker_port: int, influx_url: str
) -> dict[str, ReadyProbe]:
    """Store (a query), broker (a TCP connect) and InfluxDB (`/ping`) reachability."""

    async def store() -> None:
        await run_in_threadpool(users.ping)

    async def broker() -> None:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(broker_host, broker_port), PROBE_TIMEOUT_S
        )
        writer.close()
        await writer.wait_closed()

    async def influxdb() -> None:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S, trust_env=False) as client:
            response = await client.get(influx_url.rstrip("/") + "/ping")
        if response.status_code >= 300:
            raise ConnectionError(f"/ping answered {response.status_code}")

    return {"store": store, "broker": broker, "influxdb": influxdb}
