"""`RulesService` runs on event time: rule timers and the event manager's timers fire when
the watermark (the newest reading's timestamp or tick the log has shown) passes them,
never on the wall clock; rejections, which carry no event time, are evaluated at the
watermark; and rejections reach rules through the route the decoder parsed.

The readings here are of March 2025: were the wall clock used anywhere, every timer
would be long overdue at the first turn."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from detection.rules_service import RulesService, as_reading
from events.manager import EventManager
from events.model import Action, State
from events.store import EventStore
from ingest.decode import Decoder, Rejected
from ingest.records import Tick
from rules.engine import Engine
from rules.schema import parse_rules
from sensors.base import DecodeContext
from sensors.registry import KINDS
from tests.support.rules import TRAVEL_DIRECTORY, at, event

TAMPER = """\
rules:
  - id: tamper
    title: Tamper
    severity: high
    condition: {type: match, when: {channel: event, field: event, equals: tamper}}
    clear: {after: 10m}
    message: "tamper at {device}"
  - id: bad_json
    title: Bad JSON
    severity: low
    condition: {type: match, when: {channel: rejected, field: reason, equals: bad_json}}
    message: "bad json from {device}"
"""
DECODER = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: v))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as s:
        s.migrate()
        yield s


@pytest.fixture
def service(store: EventStore) -> RulesService:
    engine = Engine(parse_rules(TAMPER), TRAVEL_DIRECTORY)  # s1 with doors a1, a2, a3
    return RulesService(engine, store, EventManager(store, workers={}))


def test_rule_timers_fire_on_ticks_never_the_wall_clock(
    service: RulesService, store: EventStore
) -> None:
    (raised,) = service.step([event("access", "a1", 0, "tamper")])
    assert raised.raised and raised.at_ms == at(0)
    assert service.watermark_ms == at(0)
    assert service.step([Tick(at(599))]) == []  # due at 10 min of event time, not before
    (cleared,) = service.step([Tick(at(600))])
    assert not cleared.raised and cleared.at_ms == at(600)
    (stored,) = store.list_events()
    assert (stored.raised_ms, stored.returned_ms) == (at(0), at(600))
    assert service.status()["rules_detections"] == 2
    assert service.status()["rules_watermark_ms"] == at(600)
    assert service.commits == 2  # each turn with a detection commits, the empty one not


def test_rule_timers_fire_on_other_readings_timestamps(service: RulesService) -> None:
    service.step([event("access", "a1", 0, "tamper")])
    # Another device's reading moves event time: a1's clear comes due on its way.
    assert service.step([event("access", "a2", 599, "door_opened")]) == []
    (cleared,) = service.step([event("access", "a2", 601, "door_closed")])
    assert (cleared.key, cleared.raised, cleared.at_ms) == ("a1", False, at(600))


def test_a_late_reading_never_moves_event_time_back(service: RulesService) -> None:
    service.step([Tick(at(300))])
    (raised,) = service.step([event("access", "a1", 0, "tamper")])  # 5 min late
    assert raised.raised and service.watermark_ms == at(300)
    assert service.step([Tick(at(599))]) == []
    (cleared,) = service.step([Tick(at(600))])  # its clear: 10 min after its own time
    assert cleared.at_ms == at(600)


def test_the_event_managers_timers_run_on_event_time(
    service: RulesService, store: EventStore
) -> None:
    service.step([event("access", "a1", 0, "tamper")])
    (opened,) = store.list_events()
    service.manager.act(
        opened.id, Action.SHELVE, actor="op", at_ms=at(10), until_ms=at(300), note="test"
    )
    service.step([Tick(at(299))], force=True)
    assert store.list_events()[0].state is State.SHELVED
    service.step([Tick(at(400))], force=True)
    (unshelved,) = store.list_events()
    assert unshelved.state is State.ACTIVE_UNACKNOWLEDGED
    last = store.audit_trail(unshelved.id)[-1]
    # At the shelve's own end, not at the watermark that found it nor the wall clock.
    assert (last.action, last.at_ms) == (Action.UNSHELVE, at(300))


def test_step_commits_on_detections_or_when_forced(service: RulesService) -> None:
    service.step([event("access", "a1", 0, "door_opened")])
    assert service.commits == 0  # nothing to write, the interval not due
    service.step([event("access", "a1", 1, "tamper")])
    assert service.commits == 1
    service.step([Tick(at(2))], force=True)
    assert service.commits == 2


def test_rejections_are_evaluated_at_the_watermark(service: RulesService) -> None:
    arrived_ns = 1_900_000_000_000 * 1_000_000  # the wall clock of a far-away hub
    first = DECODER.decode("gw/v1/s1/access/a1/event", b"{", arrived_ns)
    assert isinstance(first, Rejected)
    # Before any event time the rejection's arrival is all there is.
    (early,) = service.step([first])
    assert early.at_ms == arrived_ns // 1_000_000

    other = RulesService(service.engine, service.store, service.manager)
    other.step([event("access", "a2", 5, "door_opened")])
    late = DECODER.decode("gw/v1/s1/access/a3/event", b"{", arrived_ns)
    assert isinstance(late, Rejected)
    (raised,) = other.step([late])
    assert (raised.key, raised.at_ms) == ("a3", at(5))
    assert other.watermark_ms == at(5)  # and a rejection never moves event time


def test_rejections_reach_rules_through_their_parsed_route() -> None:
    bad_json = DECODER.decode("gw/v1/s1/access/a1/event", b"{", 1_000_000)
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
    bad_topic = DECODER.decode("gw/v1/s1/access/a b!/event", b"{}", 1_000_000)
    assert isinstance(bad_topic, Rejected) and bad_topic.route is None
    assert as_reading(bad_topic) is None


def test_a_reading_stamped_on_arrival_happens_at_event_time(service: RulesService) -> None:
    """A message without a device timestamp is stamped when the hub read it: during a
    backlog that is "now", hours after the readings around it in the log. Once readings
    with device time have set event time, such a reading neither moves it nor is
    evaluated at its arrival time: it happened where it is in the log."""
    service.step([event("access", "a1", 0, "door_opened")])
    assert not service.clockless
    late = replace(event("access", "a2", 3600, "tamper"), ts_from_device=False)
    (raised,) = service.step([late])
    assert raised.at_ms == at(0)  # not an hour ahead, where its arrival stamp says
    assert service.watermark_ms == at(0)
    (cleared,) = service.step([Tick(at(600))])  # the 10 min auto-clear, from event time
    assert (cleared.key, cleared.at_ms) == ("a2", at(600))


def test_without_device_clocks_arrival_stamps_are_event_time(service: RulesService) -> None:
    """A deployment whose devices send no timestamps: arrival is the only time there is."""
    first = replace(event("access", "a1", 0, "door_opened"), ts_from_device=False)
    later = replace(event("access", "a2", 60, "tamper"), ts_from_device=False)
    service.step([first])
    (raised,) = service.step([later])
    assert service.clockless
    assert raised.at_ms == at(60) and service.watermark_ms == at(60)
    # Survives a restart: the flag is part of the committed state.
    service.step([], force=True)
    service.restore()
    assert service.clockless


def test_a_record_the_rules_cannot_evaluate_is_skipped_not_retried(
    service: RulesService, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluation is deterministic: a record that raises would raise again after every
    restart, hold the log until it fills, and stop ingestion. It is counted and skipped;
    the records around it are evaluated, and the skip survives a replay."""
    evaluate = service.engine.evaluate

    def poisoned(reading, state, now):  # type: ignore[no-untyped-def]
        if reading.device == "a2":
            raise RecursionError("a rule that cannot take this reading")
        return evaluate(reading, state, now)

    monkeypatch.setattr(service.engine, "evaluate", poisoned)
    detections = service.step(
        [event("access", "a2", 0, "tamper"), event("access", "a1", 1, "tamper")], force=True
    )
    assert [(d.key, d.raised) for d in detections] == [("a1", True)]
    assert service.record_errors == 1
    assert service.status()["rules_record_errors"] == 1
    assert [e.key for e in store.list_events()] == ["a1"]


async def test_the_allowed_lateness_is_a_setting_the_rules_keep_across_reloads(
    tmp_path: Path,
) -> None:
    from hub.settings import ApiSettings, EventsSettings, HubSettings, Settings, SpoolSettings
    from hub.wiring import build_events, build_writer

    settings = Settings(
        hub=HubSettings(data_dir=tmp_path / "data"),
        spool=SpoolSettings(directory=tmp_path / "spool"),
        events=EventsSettings(publish_mqtt=False, write_influx=False, allowed_lateness_s=2.5),
        api=ApiSettings(enabled=False),
    )
    writer = build_writer(settings)
    side = build_events(settings, None, writer)
    try:
        service = side.service
        assert service.engine.lateness_ms == 2_500
        service.step([event("access", "a1", 10, "door_opened")])
        service.step([event("access", "a2", 5, "door_opened")])  # 5 s behind a1's
        assert service.status()["rules_late_readings"] == 1
        service.reload_rules()
        service.set_directory(service.engine.directory)
        assert service.engine.lateness_ms == 2_500
        assert service.status()["rules_late_readings"] == 1
    finally:
        side.store.close()
        await writer.aclose()
    with pytest.raises(ValueError, match="allowed_lateness_s"):
        EventsSettings(allowed_lateness_s=-1)
