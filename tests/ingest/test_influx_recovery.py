"""InfluxDB down for 10 s, then back: the spool writer and the event outbox resume
within seconds of its `/ping` answering, not after the backoff grown meanwhile.

Against a private InfluxDB 1.6.7 (the session one is shared, and this test stops it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from devstack.stack import ManagedProcess, restart
from events.dispatcher import OutboxDispatcher
from events.sinks import InfluxSink
from hub.wiring import influx_write
from ingest.deadletter import DeadLetterStore
from ingest.influx import InfluxV1Writer, V1Target, answers_ping
from ingest.influxql import QueryTarget, query
from ingest.spool import Spool
from ingest.stats import IngestStats
from ingest.writer import SpoolWriter
from tests.events.test_event_sinks import FakeStore, clock_ms, raised
from tests.ingest.test_writer import make_lines, spool_lines
from tests.support.services import running_influxdb

pytestmark = pytest.mark.integration

OUTAGE_S = 10.0


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[ManagedProcess]:
    with running_influxdb(tmp_path / "influx") as proc:
        yield proc


async def _when(predicate: Callable[[], bool], within_s: float) -> float:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within_s} s")
        await asyncio.sleep(0.005)
    return time.monotonic()


async def _first_ping(url: str) -> float:
    """The monotonic time at which InfluxDB first answers `/ping` (polled every 20 ms)."""
    async with httpx.AsyncClient(base_url=url, timeout=0.5) as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/ping")).status_code == 204:
                    return time.monotonic()
            await asyncio.sleep(0.02)


async def test_influxdb_back_after_an_outage_resumes_writes_and_outbox(
    tmp_path: Path, influx: ManagedProcess, database: str
) -> None:
    points = V1Target(influx.url, database, create_database=True)
    sink, events_sink = InfluxV1Writer(points), InfluxV1Writer(points)
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30)
    spool.open()
    dead = DeadLetterStore(tmp_path / "dl", max_bytes=1 << 20, keep=2)
    dead.open()
    stats = IngestStats()
    # The hub's defaults: writer backoff 0.5 .. 30 s, outbox backoff 0.5 .. 60 s.
    writer = SpoolWriter(spool, sink, dead, stats)
    store = FakeStore()
    events = InfluxSink(influx_write(events_sink), ping=lambda: answers_ping(events_sink))
    dispatcher = OutboxDispatcher(store, [events], clock_ms=clock_ms)
    lines = make_lines(200)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(writer.run()), tg.create_task(dispatcher.run())]
            spool_lines(spool, lines[:100])
            store.add("influxdb", *raised("before"))
            await _when(lambda: stats.stored == 100 and not store.items, 10)

            await asyncio.to_thread(influx.stop)
            down_at = time.monotonic()
            spool_lines(spool, lines[100:])
            store.add("influxdb", *raised("during-outage"))
            dispatcher.wake()
            await asyncio.sleep(OUTAGE_S)
            failures = dict(stats.write_failures)
            retries = dispatcher.stats()["influxdb"].retries
            answering = asyncio.create_task(_first_ping(influx.url))
            await asyncio.to_thread(restart, influx)
            back = await answering
            written = await _when(lambda: stats.stored == 200, 10)
            delivered = await _when(lambda: not store.items, 10)
            for task in tasks:
                task.cancel()
    finally:
        await sink.aclose()
        await events_sink.aclose()
        spool.close()
        dead.close()
    print(
        f"\nInfluxDB down {back - down_at:.1f} s: writes resumed {written - back:.2f} s and "
        f"the outbox emptied {delivered - back:.2f} s after /ping answered "
        f"(write failures while down {failures}, outbox retries {retries})"
    )
    assert written - back <= 3.0
    assert delivered - back <= 3.0
    assert stats.dead_lettered == 0
    # Down is down: a few real attempts (the backoff), not one per probe.
    assert sum(failures.values()) <= 8 and retries <= 8
    target = QueryTarget(influx.url, database)
    (smoke,) = query(target, "SELECT count(v) FROM smoke")
    (security_events,) = query(target, 'SELECT count("event_id") FROM security_event')
    assert smoke.values[0][1] == 200
    assert security_events.values[0][1] == 2
