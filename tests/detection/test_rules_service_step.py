"""`RulesService.step` on an injected clock: rule timers fire on the service's clock
(simulated time), the event manager's timers on `manager_tick_ms`, and rejections reach
rules through the route the decoder parsed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from detection.rules_service import RulesService, as_reading
from evaluation.rules_eval import SimClock
from events.manager import EventManager
from events.model import SecurityEvent
from events.store import EventStore
from ingest.decode import Decoder, Rejected
from rules.engine import Engine
from rules.schema import parse_rules
from sensors.base import DecodeContext
from sensors.registry import KINDS
from tests.support.rules import at, event

TAMPER = """\
rules:
  - id: tamper
    title: Tamper
    severity: high
    condition: {type: match, when: {channel: event, field: event, equals: tamper}}
    clear: {after: 10m}
    message: "tamper at {device}"
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as s:
        s.migrate()
        yield s


def service_on(
    store: EventStore, clock: SimClock, manager_tick_ms: int | None = None
) -> RulesService:
    return RulesService(
        Engine(parse_rules(TAMPER)),
        store,
        EventManager(store, workers={}),
        clock_ms=clock,
        manager_tick_ms=manager_tick_ms,
    )


def recorder(ticked: list[int]) -> Callable[[int], list[SecurityEvent]]:
    def tick(now_ms: int) -> list[SecurityEvent]:
        ticked.append(now_ms)
        return []

    return tick


def test_step_fires_rule_timers_on_the_injected_clock(store: EventStore) -> None:
    clock = SimClock(at(0))
    service = service_on(store, clock)
    service.observe(event("access", "a1", 0, "tamper"))
    (raised,) = service.step()
    assert raised.raised and raised.at_ms == at(0)
    clock.now_ms = at(599)
    assert service.step() == []  # the clear is due at 10 min of the clock, not before
    clock.now_ms = at(600)
    (cleared,) = service.step()
    assert not cleared.raised and cleared.at_ms == at(600)
    (stored,) = store.list_events()
    assert (stored.raised_ms, stored.returned_ms) == (at(0), at(600))
    assert service.status()["rules_detections"] == 2
    assert store.get_snapshot("rules-engine") is not None  # snapshotted after the change


def test_manager_timers_tick_at_each_multiple_of_manager_tick_ms(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SimClock(60_500)
    service = service_on(store, clock, manager_tick_ms=60_000)
    ticked: list[int] = []
    monkeypatch.setattr(service.manager, "tick", recorder(ticked))
    for now in (60_500, 61_000, 119_999, 120_000, 120_001, 250_000, 250_500, 300_000):
        clock.now_ms = now
        service.step()
    assert ticked == [120_000, 250_000, 300_000]

    every_persist = service_on(store, clock)  # the hub's default: at every persist
    monkeypatch.setattr(every_persist.manager, "tick", recorder(ticked))
    ticked.clear()
    clock.now_ms = at(0)
    every_persist.step()  # nothing to persist yet (no detection, snapshot not due)
    every_persist.observe(event("access", "a1", 0, "tamper"))
    every_persist.step()
    assert ticked == [at(0)]


def test_rejections_reach_rules_through_their_parsed_route() -> None:
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: v))
    bad_json = decoder.decode("gw/v1/s1/access/a1/event", b"{", 1_000_000)
    assert isinstance(bad_json, Rejected)
    pseudo = as_reading(bad_json)
    assert pseudo is not None
    assert (pseudo.site, pseudo.kind, pseudo.device, pseudo.fields["reason"]) == (
        "s1",
        "access",
        "a1",
        "bad_json",
    )
    # Four levels after the prefix, but no device topic: it names no device.
    bad_topic = decoder.decode("gw/v1/s1/access/a b!/event", b"{}", 1_000_000)
    assert isinstance(bad_topic, Rejected) and bad_topic.route is None
    assert as_reading(bad_topic) is None
