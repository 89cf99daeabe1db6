"""A simulated scenario loaded into a real InfluxDB 1.6.7, for the dashboards' query tests.

The Yingyang demo site runs for a while with labelled scenarios (door forced, fire,
low battery, a lot over capacity, a device going offline, ...). Its messages go through
the hub's own decoder and line-protocol encoder, the rules engine and event manager
(`evaluation.rules_eval.run_rules`, the same path the hub runs) and the events' audit trails
through `events.render.event_point`. The hub's self-observation (`hub_stats`) is the
real `IngestStats.fields()` sampled every 10 s of simulated time while the messages are
counted in. Everything is written on InfluxDB's `/write` endpoint, in simulated time
(a fixed night, see `START`).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import httpx

from evaluation.rules_eval import run_rules
from events.render import event_point
from events.store import EventStore
from ingest.decode import Decoder, Rejected
from ingest.line_protocol import LineEncoder, encode_point
from ingest.stats import IngestStats
from rules.schema import load_rules
from sensors.base import EVENT, HUB_STATS, TELEMETRY, DecodeContext, keyed_hash
from sensors.registry import KINDS
from simulators.engine import SimMessage
from simulators.scenarios import run_scenarios
from sites.model import Site, load_site_ref

SITE: Final = "yingyang"
DURATION_S: Final = 2 * 3600
SEED: Final = 7
START: Final = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)
"""Fixed, so the data is the same on every run: 23:00-01:00 at the site (Asia/Shanghai),
closed hours, which the forced-door scenario needs. Tests query this window, as an
operator would pick it in Grafana's time picker."""
SCENARIOS: Final = (
    "door_forced",
    "door_held_open",
    "repeated_denials",
    "low_battery",
    "lot_over_capacity",
    "fire",
    "device_offline",
    "device_fault",
    "malformed_payloads",
    "fire_lane_violation",
    "device_tamper",
)
LOST_DEVICE_MESSAGES: Final = 3
"""Telemetry messages of one smoke detector dropped as if lost before the hub: the
Device health dashboard's sequence-gap panel must see the jump."""
STATS_EVERY_MS: Final = 10_000
HUB_NAME: Final = "hub-test"


@dataclass(frozen=True)
class LoadedScenario:
    """What went into the database, so tests can say which panels must show data."""

    site: Site
    start: datetime
    end: datetime
    points: dict[str, int]
    device_events: Counter[tuple[str, str]]
    """(measurement, event field) → messages on the event channel."""
    events: int
    open_events: int
    rejected: int
    lost_device: str


def _chunks(lines: list[bytes], size: int = 5000) -> Iterator[bytes]:
    for i in range(0, len(lines), size):
        yield b"".join(lines[i : i + size])


def _write(url: str, database: str, lines: list[bytes]) -> None:
    with httpx.Client(timeout=60) as client:
        client.post(
            f"{url}/query", params={"q": f'CREATE DATABASE "{database}"'}
        ).raise_for_status()
        for chunk in _chunks(lines):
            resp = client.post(
                f"{url}/write", params={"db": database, "precision": "ns"}, content=chunk
            )
            if resp.status_code != 204:
                raise AssertionError(
                    f"InfluxDB refused the scenario: {resp.status_code} {resp.text}"
                )


def _drop_some(messages: list[SimMessage]) -> tuple[list[SimMessage], str]:
    """Leave out a run of one smoke detector's telemetry (a seq gap the hub never sees)."""
    device = sorted({m.device_id for m in messages if m.kind == "smoke"})[0]
    mine = [i for i, m in enumerate(messages) if m.device_id == device and m.channel == TELEMETRY]
    middle = len(mine) // 2
    dropped = set(mine[middle : middle + LOST_DEVICE_MESSAGES])
    return [m for i, m in enumerate(messages) if i not in dropped], device


def _readings(
    messages: list[SimMessage], stats: IngestStats, device_events: Counter[tuple[str, str]]
) -> tuple[list[bytes], int]:
    """Decode and encode as the hub does; count into `stats` and sample it as `hub_stats`."""
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: keyed_hash(b"k", v)))
    encoder = LineEncoder()
    lines: list[bytes] = []
    rejected = 0
    next_stats = None
    for message in messages:
        now_ms = message.sim_ms
        if next_stats is None:
            next_stats = now_ms
        while next_stats <= now_ms:
            lines.append(
                encode_point(HUB_STATS, {"hub": HUB_NAME}, stats.fields(), next_stats * 1_000_000)
            )
            next_stats += STATS_EVERY_MS
        stats.received += 1
        stats.acked += 1
        decoded = decoder.decode(message.topic, message.payload, now_ms * 1_000_000)
        if isinstance(decoded, Rejected):
            rejected += 1
            stats.rejected[decoded.reason.value] += 1
            stats.dead_lettered += 1
            continue
        stats.stored += 1
        if decoded.channel == EVENT:
            device_events[decoded.measurement, str(decoded.fields["event"])] += 1
        lines.append(encoder.encode(decoded))
    return lines, rejected


def load_scenario(url: str, database: str) -> LoadedScenario:
    """Simulate, decode, run the rules and write everything; returns what was written."""
    site = load_site_ref(SITE)
    start = START
    end = start + timedelta(seconds=DURATION_S)
    messages, _labels = run_scenarios(
        site, SCENARIOS, start=start, duration_s=DURATION_S, seed=SEED
    )
    messages, lost_device = _drop_some(messages)
    stats = IngestStats()
    device_events: Counter[tuple[str, str]] = Counter()
    lines, rejected = _readings(messages, stats, device_events)
    with tempfile.TemporaryDirectory(prefix="gw-dash-events-") as tmp:
        store_url = f"sqlite:///{Path(tmp) / 'events.db'}"
        events, _count, _rej = run_rules([site], messages, load_rules(), store_url=store_url)
        with EventStore(store_url) as store:
            for event in events:
                for audit in store.audit_trail(event.id):
                    lines.append((event_point(event, audit) + "\n").encode())
    _write(url, database, lines)
    points: dict[str, int] = {}
    for line in lines:
        name = line.split(b",", 1)[0].split(b" ", 1)[0].decode()
        points[name] = points.get(name, 0) + 1
    open_events = sum(1 for e in events if not e.closed)
    return LoadedScenario(
        site, start, end, points, device_events, len(events), open_events, rejected, lost_device
    )
