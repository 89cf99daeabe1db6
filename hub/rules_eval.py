"""Alarm-quality harness: simulated incidents through the hub's rule path, scored.

The site's traffic (background plus labelled scenarios, or dataset replays) goes
through the same decoder, rules engine, event manager and event store the hub runs,
in simulated time and as fast as the CPU allows: `now` is each message's simulated
time, so a 40-hour scenario suite takes minutes. MQTT and InfluxDB are left out on
purpose (they move messages, they do not decide events; the end-to-end test covers
them). Events are then matched to the ground-truth labels (`hub.alarm_quality`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from events.manager import EventManager
from events.model import SecurityEvent
from events.store import EventStore
from hub.alarm_quality import QualityReport, score
from hub.directory import directory_from_sites
from hub.rules_service import as_reading
from ingest.decode import Decoder, Rejected
from rules.engine import Engine, EngineState
from rules.schema import Rule, rule_wait_ms
from sensors.base import DecodeContext, keyed_hash
from sensors.registry import KINDS
from simulators.engine import SimMessage
from simulators.labels import Label
from simulators.site import Site

TICK_MS: Final = 1_000
"""Rule timers fire at least this often in simulated time (between sparse messages)."""

MANAGER_TICK_MS: Final = 60_000
"""Shelve expiry and flood-window checks (store queries) run this often."""

def wait_s(rules: Sequence[Rule]) -> dict[str, float]:
    """Each incident kind's own waiting time in seconds (the longest of its rules'):
    the delay target is this plus 2 s."""
    waits: dict[str, float] = {}
    for rule in rules:
        kind = rule.incident_kind
        waits[kind] = max(waits.get(kind, 0.0), rule_wait_ms(rule) / 1000)
    return waits

GRACE_MS: Final = {
    "welfare_check": 25 * 3_600_000,
    "parking_overstay": 25 * 3_600_000,
    "device_offline": 5 * 60_000,
    "stuck_sensor": 30 * 60_000,
}
"""How long after a label ends its detection still counts (absence rules fire late)."""


@dataclass(frozen=True, slots=True)
class EvalRun:
    report: QualityReport
    labels: list[Label]
    events: list[SecurityEvent]
    messages: int
    rejected: int
    elapsed_s: float


def run_rules(
    sites: Sequence[Site],
    messages: Iterable[SimMessage],
    rules: Sequence[Rule],
    *,
    store_url: str,
    topic_prefix: str = "gw/v1",
    on_progress: Callable[[int], None] | None = None,
) -> tuple[list[SecurityEvent], int, int]:
    """Feed messages (in time order) through decode → rules → events; return every
    event in the store, the message count and the rejected count."""
    directory = directory_from_sites(sites)
    engine = Engine(rules, directory)
    state = EngineState()
    key = b"alarm-quality-harness"
    decoder = Decoder(
        KINDS,
        DecodeContext(hash_identifier=lambda v: keyed_hash(key, v)),
        topic_prefix=topic_prefix,
    )
    prefix_parts = len(topic_prefix.strip("/").split("/"))
    with EventStore(store_url) as store:
        store.migrate()
        manager = EventManager(store, workers=directory.workers())
        count = rejected = 0
        next_tick = None
        for message in messages:
            now = message.sim_ms
            if next_tick is None:
                next_tick = (now // TICK_MS + 1) * TICK_MS
            while next_tick <= now:
                for detection in engine.tick(state, next_tick):
                    manager.handle(detection, next_tick)
                if next_tick % MANAGER_TICK_MS == 0:
                    manager.tick(next_tick)
                next_tick += TICK_MS
            decoded = decoder.decode(message.topic, message.payload, now * 1_000_000)
            rejected += isinstance(decoded, Rejected)
            count += 1
            reading = as_reading(decoded, prefix_parts)
            if reading is not None:
                for detection in engine.evaluate(reading, state, now):
                    manager.handle(detection, now)
            if on_progress is not None and count % 10_000 == 0:
                on_progress(count)
        events = store.list_events(limit=1_000_000)
    return events, count, rejected


def evaluate(
    sites: Sequence[Site],
    messages: Sequence[SimMessage],
    labels: Sequence[Label],
    rules: Sequence[Rule],
    *,
    span_ms: int,
    store_url: str | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> EvalRun:
    """Run the rules over the messages and score the events against the labels."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gridwatch-eval-") as tmp:
        url = store_url or f"sqlite:///{Path(tmp) / 'events.db'}"
        events, count, rejected = run_rules(
            sites, messages, rules, store_url=url, on_progress=on_progress
        )
    device_count = sum(len(site.devices) for site in sites)
    report = score(
        labels,
        events,
        device_count=device_count,
        span_ms=span_ms,
        operators=max(1, len(sites)),
        grace_ms=GRACE_MS,
    )
    return EvalRun(report, list(labels), events, count, rejected, time.perf_counter() - started)
