"""The alarm-quality harness runs the hub's own rules path: the same scenario stream
through `rules_eval.evaluate` (one `step` per record) and through a `RulesService`
consuming the hub's log the way the hub does (`run(spool)`: chunks read from the spool,
commits when detections come, `stop` at the end) gives the same events: rule, key,
raise, clear, repeats. Flood control included: its quiet-down is in event time, so
how often the manager's timers run does not change what it writes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from detection.rules_service import RulesService
from evaluation.rules_eval import HASH_KEY, evaluate, reannunciations
from events.manager import EventManager
from events.model import SecurityEvent
from events.store import EventStore
from ingest.decode import Decoder
from ingest.spool import Spool
from rules.engine import Engine
from rules.schema import load_rules
from rules.site_directory import directory_from_sites
from sensors.base import DecodeContext, keyed_hash
from sensors.registry import KINDS
from simulators.engine import SimMessage
from simulators.scenarios import run_scenarios
from sites.model import Site, load_site_ref
from tests.support.intake import wait_for
from tests.support.log import harness_records, log_records

START = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)
"""23:00 at the site: closed hours, which the forced-door scenario needs."""
SPAN_S = 3_600
SCENARIOS = (
    "door_forced",
    "door_held_open",
    "repeated_denials",
    "low_battery",
    "device_fault",
    "device_tamper",
    "malformed_payloads",
    "device_offline",
    "incident_storm",
)

Row = tuple[str, str, int, int, int | None, int, bool, str | None]


def rows(events: Sequence[SecurityEvent]) -> list[Row]:
    return sorted(
        (e.rule_id, e.key, e.raised_ms, e.last_ms, e.returned_ms, e.count, e.active, e.parent_id)
        for e in events
    )


def through_service(site: Site, messages: Sequence[SimMessage], tmp: Path) -> list[SecurityEvent]:
    directory = directory_from_sites([site])
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: keyed_hash(HASH_KEY, v)))
    spool = Spool(tmp / "spool", max_bytes=1 << 30)
    spool.open()
    try:
        log_records(spool, list(harness_records(messages, decoder)), per_frame=64)
        with EventStore(f"sqlite:///{tmp / 'events.db'}") as store:
            store.migrate()
            service = RulesService(
                Engine(load_rules(), directory),
                store,
                EventManager(store, workers=directory.workers()),
                chunk=500,
            )

            async def drive() -> None:
                task = asyncio.create_task(service.run(spool))
                end = spool.end_of_log()
                await wait_for(lambda: service.position == end or task.done(), 120)
                await service.stop()
                await task

            asyncio.run(drive())
            assert service.committed == spool.end_of_log()
            assert service.commits > 1  # committed as it went, not once at the end
            events = store.list_events(limit=100_000)
            return events + reannunciations(store, events)
    finally:
        spool.close()


def test_harness_and_service_raise_the_same_events(tmp_path: Path) -> None:
    site = load_site_ref("yingyang")
    messages, labels = run_scenarios(site, SCENARIOS, start=START, duration_s=SPAN_S, seed=5)
    run = evaluate([site], messages, labels, load_rules(), span_ms=SPAN_S * 1000)
    served = through_service(site, messages, tmp_path)
    assert rows(run.events) == rows(served)
    rules = {row[0] for row in rows(served)}
    assert {"door_forced", "door_held_open", "malformed_payloads", "device_offline"} <= rules
    assert "flood_control" in rules  # the storm was grouped, and timed alike
    assert any(row[4] is not None for row in rows(served))  # a clear, timed alike
    assert run.report.by_kind["door_held_open"].recall == 1.0
