"""Rejections under names the rules' directory does not know are aggregated: one event
per known site (unknown devices) and one for the hub (unknown sites), listing names and
counts; known devices keep their own `malformed_payloads`, and an unregistered device
under a known site still raises its `unregistered_device`. Rejections carry no event time:
the rules see them at the watermark, which the ticks between them move here."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from detection.rules_service import MAX_NAMES, RulesService, UnknownSources
from events.manager import EventManager
from events.model import SecurityEvent
from events.store import EventStore
from ingest.decode import Rejected, RejectReason
from ingest.records import Record, Tick
from rules.directory import Directory
from rules.engine import HUB_SCOPE, UNKNOWN_SOURCES, Engine
from rules.schema import load_rules
from rules.site_directory import directory_from_sites
from sensors.topics import DEFAULT_PREFIX, Route, device_topic
from sites.model import load_site_ref

T0_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def directory() -> Directory:
    return directory_from_sites([load_site_ref("yingyang")])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as s:
        s.migrate()
        yield s


def service(store: EventStore, directory: Directory) -> RulesService:
    return RulesService(
        Engine(load_rules(), directory), store, EventManager(store, workers=directory.workers())
    )


def rejected(site: str, kind: str, device: str, at_ms: int, reason: RejectReason) -> Rejected:
    route = Route(site, kind, device, "event")
    topic = device_topic(DEFAULT_PREFIX, site, kind, device, "event")
    return Rejected(reason, "test", topic, b"{", at_ms * 1_000_000, route)


def at_time(item: Rejected) -> list[Record]:
    """The rejection as the log holds it when the input moved event time to its arrival:
    a tick (or a reading) of that time before it."""
    return [Tick(item.received_ns // 1_000_000), item]


def run(svc: RulesService, items: Sequence[Rejected], until_ms: int) -> None:
    """One turn over the rejections, each at its time, then event time moved to `until_ms`."""
    records = [r for item in items for r in at_time(item)]
    svc.step([*records, Tick(until_ms)], force=True)


def name(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))


def events(store: EventStore) -> list[SecurityEvent]:
    return store.list_events(limit=10_000)


def test_random_names_make_at_most_two_events_and_known_devices_keep_theirs(
    store: EventStore, directory: Directory
) -> None:
    svc = service(store, directory)
    rng = random.Random(7)
    known = sorted(directory.devices.values(), key=lambda d: d.id)[0]
    items = [
        rejected(name(rng), "smoke", name(rng), T0_MS + i, RejectReason.BAD_JSON)
        for i in range(500)
    ]
    for i in range(3):  # a known device's malformed payloads, as today
        at = T0_MS + 600 + i
        items.append(rejected(known.site, known.kind, known.id, at, RejectReason.BAD_JSON))
    run(svc, items, T0_MS + 1_000)

    found = events(store)
    by_rule: dict[str, list[SecurityEvent]] = {}
    for event in found:
        by_rule.setdefault(event.rule_id, []).append(event)
    (hub_event,) = by_rule.pop("unknown_sources")
    assert hub_event.site == HUB_SCOPE
    assert hub_event.key == HUB_SCOPE
    (malformed,) = by_rule.pop("malformed_payloads")
    assert malformed.device == known.id and malformed.site == known.site
    assert by_rule == {}, sorted(by_rule)
    # the count condition raised at the third rejection; repeats refresh the tally
    assert "unknown source(s)" in hub_event.message
    tally = svc.unknown.tallies[HUB_SCOPE]
    assert tally.total == 500 and len(tally.counts) == 500


def test_unknown_devices_of_a_known_site_make_one_site_event_listing_names_and_counts(
    store: EventStore, directory: Directory
) -> None:
    svc = service(store, directory)
    rng = random.Random(8)
    site = next(iter(directory.sites))
    names = [name(rng) for _ in range(250)]
    at = T0_MS
    items: list[Rejected] = []
    for n in names:
        for _ in range(2):
            items.append(rejected(site, "smoke", n, at, RejectReason.BAD_JSON))
            at += 10
    # an unregistered device under the known site still raises its own alarm
    items.append(rejected(site, "smoke", "sm-intruder", at, RejectReason.UNKNOWN_DEVICE))
    run(svc, items, at + 1_000)
    # after the cooldown the open event repeats with the tally so far
    later = at + 11 * 60_000
    late = [rejected(site, "smoke", "zz-late", later + i, RejectReason.BAD_JSON) for i in range(3)]
    run(svc, late, later + 1_000)

    rules = sorted((e.rule_id, e.key) for e in events(store))
    assert rules == [("unknown_sources", site), ("unregistered_device", "sm-intruder")]
    (event,) = [e for e in events(store) if e.rule_id == "unknown_sources"]
    assert event.site == site and event.count >= 2
    assert event.message.startswith(f"503 rejected messages from 251 unknown source(s) on {site}")
    assert "zz-late (3)" in event.message and f"{sorted(names)[0]} (2)" in event.message
    assert event.message.endswith("; 482 more message(s) from 241 other name(s)")
    assert event.values.get("count") is not None


def test_the_tally_is_bounded_and_starts_afresh_after_a_quiet_hour(directory: Directory) -> None:
    unknown = UnknownSources()
    last = None
    for i in range(MAX_NAMES + 50):
        last = unknown.reading(
            rejected("nowhere", "smoke", f"d{i}", T0_MS + i, RejectReason.BAD_JSON), directory
        )
    assert last is not None and last.channel == "rejected" and "reason" not in last.fields
    assert last.fields["unknown_total"] == MAX_NAMES + 50
    assert last.fields[UNKNOWN_SOURCES] == MAX_NAMES + 1  # the names beyond the table, as one
    assert len(unknown.tallies[HUB_SCOPE].counts) == MAX_NAMES
    fresh = unknown.reading(
        rejected("nowhere", "smoke", "d1", T0_MS + 3_700_000, RejectReason.BAD_JSON), directory
    )
    assert fresh is not None and fresh.fields["unknown_total"] == 1
    # a bad topic (no route) is still nothing to rules
    no_route = Rejected(RejectReason.BAD_JSON, "x", "junk", b"", 1, None)
    assert unknown.reading(no_route, directory) is None
