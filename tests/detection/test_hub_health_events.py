"""The hub's own health as events: a condition the hub reports (`hub_condition`, its disk
refusing writes) and a `SessionLost` record in the log (the broker lost what it queued
for the hub) reach operators on every site, and a sequence gap that spans a session
loss says so instead of blaming the device."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from detection.rules_service import (
    SESSION_LOST_CAUSE,
    SESSION_LOST_RULE,
    STORAGE_FAILING_RULE,
    RulesService,
)
from events.manager import EventManager
from events.model import Severity, State
from events.store import EventFilter, EventStore
from ingest.records import Record, SessionLost, decode_records, encode_records
from rules.engine import Engine
from rules.schema import load_rules
from sensors.base import Reading
from tests.support.rules import TRAVEL_DIRECTORY, at, reading


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as s:
        s.migrate()
        yield s


@pytest.fixture
def service(store: EventStore) -> RulesService:
    engine = Engine(load_rules(()), TRAVEL_DIRECTORY)  # the built-in pack; site s1
    return RulesService(engine, store, EventManager(store, workers={}))


def smoke(t: float, seq: int) -> Reading:
    return replace(reading("smoke", "sm1", t, {"temperature": 21.0, "battery": 90}), seq=seq)


def test_a_session_loss_raises_a_one_shot_event_and_marks_the_gap_it_explains(
    service: RulesService, store: EventStore
) -> None:
    before = [smoke(t, seq) for seq, t in enumerate(range(0, 50, 10), start=1)]
    lost = SessionLost(at(55), "hub-a")
    after = smoke(60, 20)  # 14 messages missing: over the rule's 5
    assert decode_records(encode_records([lost])) == [lost]  # it survives the log

    detections = service.step([*before, lost, after], force=True)

    session = [d for d in detections if d.rule_id == SESSION_LOST_RULE]
    assert [(d.raised, d.site, d.at_ms) for d in session] == [
        (True, "s1", at(55)),
        (False, "s1", at(55)),
    ]
    (gap,) = [d for d in detections if d.rule_id == "reporting_gap"]
    assert gap.values["cause"] == SESSION_LOST_CAUSE
    assert gap.values["missing"] == 14
    assert "broker lost the hub's session" in gap.message
    (health,) = store.list_events(EventFilter(rule_id=SESSION_LOST_RULE))
    assert health.state is State.RETURNED_UNACKNOWLEDGED  # returned; waits for an operator's ack
    assert service.session_lost_ms == at(55)


def test_a_gap_that_opened_after_the_session_loss_blames_the_device(
    service: RulesService,
) -> None:
    records: list[Record] = [SessionLost(at(5), "hub-a"), smoke(10, 1), smoke(20, 2), smoke(30, 20)]
    detections = service.step(records, force=True)
    (gap,) = [d for d in detections if d.rule_id == "reporting_gap"]
    assert "cause" not in gap.values


def test_the_session_loss_is_part_of_the_committed_state(
    service: RulesService, store: EventStore
) -> None:
    service.step([smoke(0, 1), SessionLost(at(5), "hub-a")], force=True)
    service.commit((), service.position, state=True)
    again = RulesService(
        Engine(load_rules(()), TRAVEL_DIRECTORY), store, EventManager(store, workers={})
    )
    again.restore()
    assert again.session_lost_ms == at(5)


def test_a_hub_condition_is_raised_and_cleared_on_every_site(
    service: RulesService, store: EventStore
) -> None:
    service.hub_condition(
        STORAGE_FAILING_RULE,
        True,
        hub="hub-a",
        severity=Severity.HIGH,
        title="Hub cannot store sensor data",
        message="disk full",
        values={"hub": "hub-a", "error": "No space left on device"},
    )
    raised = service.step([], force=True)
    assert [(d.rule_id, d.site, d.raised) for d in raised] == [(STORAGE_FAILING_RULE, "s1", True)]
    assert service.step([], force=True) == []  # committed once, not again
    (event,) = store.list_events(EventFilter(rule_id=STORAGE_FAILING_RULE))
    assert event.severity is Severity.HIGH and event.state is State.ACTIVE_UNACKNOWLEDGED

    service.hub_condition(
        STORAGE_FAILING_RULE,
        False,
        hub="hub-a",
        severity=Severity.HIGH,
        title="Hub stores sensor data again",
        message="resumed",
        values={"hub": "hub-a", "error": ""},
    )
    service.step([], force=True)
    (event,) = store.list_events(EventFilter(rule_id=STORAGE_FAILING_RULE))
    assert event.state is State.RETURNED_UNACKNOWLEDGED
