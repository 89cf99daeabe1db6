"""Readiness probes: can the hub reach its store, its broker and InfluxDB, and (inside
`gridwatch run`) is it ingesting: connected, consuming, writing, no task failing?"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


class NotReady(ConnectionError):
    """A readiness check that failed without a network error; the text is the reason.
    (A ConnectionError, so `/readyz` reports it like an unreachable dependency.)"""


@dataclass(frozen=True, slots=True)
class IngestionView:
    """What the running hub tells readiness about ingestion, as plain callables (the
    API never sees the hub's objects; `gridwatch serve` has no ingestion at all)."""

    connected: Callable[[], bool]
    """The hub's MQTT session is up."""
    reading_paused_s: Callable[[], float]
    """How long the intake has not been reading (a full consumer, the high-water mark); 0
    while it reads."""
    spool_full: Callable[[], bool]
    """The spool is full: nothing is acknowledged until InfluxDB takes some."""
    writer_failing_s: Callable[[], float]
    """How long writes to InfluxDB have been failing (0 while they succeed)."""
    task_problems: Callable[[], Mapping[str, str]]
    """Supervised background tasks that are not running, with why."""
    storage_error: Callable[[], str | None] = lambda: None
    """Why the spool's disk refuses writes (full, I/O error); None while it takes them."""
    connect_in_s: Callable[[], float] = lambda: 0.0
    """How long the hub still waits before it connects (`mqtt.resume_wait_s`), else 0."""
    pause_grace_s: float = 30.0
    """A pause shorter than this is back-pressure doing its job, not a problem."""
    writer_grace_s: float = 60.0
    """InfluxDB may refuse for this long (the spool holds the data) before it counts."""


def _both(first: ReadyProbe, then: Callable[[], str | None]) -> ReadyProbe:
    async def probe() -> None:
        await first()
        reason = then()
        if reason is not None:
            raise NotReady(reason)

    return probe


def with_ingestion(probes: Mapping[str, ReadyProbe], view: IngestionView) -> dict[str, ReadyProbe]:
    """The store/broker/influxdb probes, each also asking the running hub about its side
    of ingestion: `broker` (reachable, and the hub's session up and its intake reading),
    `influxdb` (pings, and takes the spool), `store` (answers, and no supervised task --
    rules, outbox, registry refreshes -- failed and waiting to restart). The names stay
    the three that `/readyz` has always reported."""

    def broker() -> str | None:
        if not view.connected():
            if (wait := view.connect_in_s()) > 0:
                return (
                    f"the hub connects in {wait:.0f} s, once the broker has queued again what "
                    "it sent the previous run unacknowledged (mqtt.resume_wait_s)"
                )
            return "the hub is not connected to the broker"
        if (error := view.storage_error()) is not None:
            return f"the spool's disk refuses writes ({error}): nothing is acknowledged"
        if view.spool_full():
            return "the spool is full: nothing is acknowledged until InfluxDB catches up"
        paused = view.reading_paused_s()
        if paused > view.pause_grace_s:
            return f"the intake has not read from the broker for {paused:.0f} s (consumer full)"
        return None

    def influxdb() -> str | None:
        failing = view.writer_failing_s()
        if failing > view.writer_grace_s:
            return f"InfluxDB writes have been failing for {failing:.0f} s (spooling)"
        return None

    def store() -> str | None:
        problems = view.task_problems()
        if not problems:
            return None
        return "tasks " + "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))

    checks = {"broker": broker, "influxdb": influxdb, "store": store}
    return {
        name: _both(probe, checks[name]) if name in checks else probe
        for name, probe in probes.items()
    }
