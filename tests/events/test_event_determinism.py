"""The store is a function of the detections: ids from the raise, replays write nothing,
timers in event time (how often `tick` runs does not matter)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from events.manager import FLOOD_RULE, EventManager
from events.model import (
    Action,
    AuditRecord,
    Detection,
    SecurityEvent,
    Severity,
    State,
    event_id,
)
from events.store import EventStore
from tests.support.services import create_database, drop_database

T0 = 1_740_000_000_000
S = 1_000
MIN = 60 * S
SINKS = ("influx", "mqtt")


# ---------------------------------------------------------------------- ids


def test_event_ids_are_32_hex_from_rule_key_and_time() -> None:
    first = event_id("door_forced", "door-1", T0)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert event_id("door_forced", "door-1", T0) == first
    others = {
        event_id("door_forced", "door-1", T0 + 1),
        event_id("door_forced", "door-2", T0),
        event_id("smoke", "door-1", T0),
        # Separators are unambiguous: moving text across a boundary changes the id.
        event_id("door_forced:door", "-1", T0),
        event_id("door_forced", "door-1" + str(T0)[:3], int(str(T0)[3:])),
    }
    assert first not in others
    assert len(others) == 5


def test_the_manager_derives_ids_from_the_raise(store: EventStore) -> None:
    events = manager(store)
    (event,) = events.handle(raise_("a", 0), T0)
    assert event.id == event_id("door_forced", "a", T0)
    for i, key in enumerate("bcd", start=1):
        events.handle(raise_(key, i * S), T0 + i * S)
    parent = store.open_event(FLOOD_RULE, "s1")
    assert parent is not None
    assert parent.id == event_id(FLOOD_RULE, "s1", T0 + 3 * S)


def test_an_injected_id_function_gets_the_raise(store: EventStore) -> None:
    seen: list[tuple[str, str, int]] = []

    def readable(rule_id: str, key: str, raised_at_ms: int) -> str:
        seen.append((rule_id, key, raised_at_ms))
        return f"{rule_id}/{key}@{raised_at_ms}"

    events = EventManager(store, workers={}, new_id=readable)
    (event,) = events.handle(raise_("a", 0), T0)
    assert event.id == f"door_forced/a@{T0}"
    assert seen == [("door_forced", "a", T0)]


# ---------------------------------------------------------------------- the scenario


@dataclass(frozen=True)
class Op:
    """An operator's action at a time of the scenario (by event key)."""

    at_ms: int
    key: str
    action: Action
    until_ms: int | None = None
    rule_id: str = "door_forced"


Step = Detection | Op


def raise_(key: str, t: int, site: str = "s1", **kw: Any) -> Detection:
    return Detection(
        rule_id="door_forced",
        key=key,
        raised=True,
        at_ms=T0 + t,
        site=site,
        cell="c1",
        device=key,
        severity=kw.pop("severity", Severity.HIGH),
        title=f"Door forced: {key}",
        message=kw.pop("message", f"opened at {t}"),
        incident="door_forced",
        **kw,
    )


def clear(key: str, t: int, site: str = "s1") -> Detection:
    return Detection(
        rule_id="door_forced",
        key=key,
        raised=False,
        at_ms=T0 + t,
        site=site,
        message=f"closed at {t}",
    )


# Flood limit 3 in a 1-minute window. Two storms at s1 (the second reopens the parent),
# repeats and clears of children after the parent went quiet, a new event that finds
# the parent quiet before any tick does, shelves running out (of an event, and of the
# parent before and after its quiet-down), an operator acting on a suppressed child
# whose flood is over.
DETECTIONS: Sequence[Detection] = (
    raise_("a", 0),
    raise_("a", 5 * S, message="again"),
    clear("a", 10 * S),
    raise_("a", 12 * S),  # back from normal: the same event
    raise_("b", 20 * S),
    raise_("c", 21 * S),
    raise_("x", 21 * S, site="s2"),
    raise_("d", 22 * S),  # four in the window: a flood, a..d grouped
    raise_("e", 30 * S, severity=Severity.CRITICAL),  # on its own; parent quiet at 90 s
    clear("b", 40 * S),
    raise_("c", 45 * S),
    raise_("x", 70 * S, site="s2"),  # after its shelve ran out (50 s)
    raise_("c", 100 * S),  # the flood is over (90 s): unsuppressed first
    clear("d", 130 * S),
    raise_("f", 200 * S),
    raise_("g", 201 * S),
    raise_("h", 202 * S),
    raise_("i", 203 * S),  # a second storm reopens the parent
    raise_("j", 205 * S),  # joins; parent quiet at 265 s
    raise_("k", 300 * S),  # finds the parent quiet (265 s), then stands alone
    clear("k", 310 * S),
    raise_("a", 330 * S),
)
OPERATORS: Sequence[Op] = (
    Op(T0 + 26 * S, "x", Action.SHELVE, until_ms=T0 + 50 * S),
    Op(T0 + 35 * S, "s1", Action.SHELVE, until_ms=T0 + 80 * S, rule_id=FLOOD_RULE),
    Op(T0 + 95 * S, "e", Action.ACKNOWLEDGE),  # critical: never suppressed
    Op(T0 + 206 * S, "s1", Action.SHELVE, until_ms=T0 + 300 * S, rule_id=FLOOD_RULE),
)
END = T0 + 400 * S


def scenario(operators: bool = True) -> list[Step]:
    steps: list[Step] = [*DETECTIONS, *(OPERATORS if operators else ())]
    return sorted(steps, key=lambda s: s.at_ms)  # stable: detections first at a tie


def manager(store: EventStore) -> EventManager:
    return EventManager(
        store, workers={"c1": "worker-li"}, sinks=SINKS, flood_limit=3, flood_window_ms=MIN
    )


def play(events: EventManager, steps: Sequence[Step], tick_every: int | None) -> list[Any]:
    """Hand the steps over in order, ticking every `tick_every` ms of the scenario's clock
    (up to and including each step's time; never when None), and once at the end."""
    store = events.store
    changed: list[Any] = []
    next_tick = T0
    for step in steps:
        while tick_every is not None and next_tick <= step.at_ms:
            changed += events.tick(next_tick)
            next_tick += tick_every
        if isinstance(step, Detection):
            changed += events.handle(step, step.at_ms)
            continue
        target = store.open_event(step.rule_id, step.key)
        assert target is not None, step
        changed.append(
            events.act(target.id, step.action, actor="op", at_ms=step.at_ms, until_ms=step.until_ms)
        )
    changed += events.tick(END)
    return changed


@dataclass(frozen=True)
class Dump:
    events: list[SecurityEvent]
    trails: dict[str, list[AuditRecord]]
    outbox: list[tuple[int, str, SecurityEvent, AuditRecord]]

    def without_outbox_order(self) -> tuple[Any, ...]:
        """The outbox as a set of deliveries: the rows a timer writes come in its own
        save or in the save of what found it first, so their order may differ."""
        deliveries = sorted(self.outbox, key=lambda o: (o[1], o[2].id, o[2].version))
        return self.events, self.trails, [o[1:] for o in deliveries]


def dump(store: EventStore) -> Dump:
    events = sorted(store.list_events(limit=10_000), key=lambda e: e.id)
    outbox = [
        (item.id, item.sink, item.event, item.audit)
        for sink in SINKS
        for item in store.outbox_due(sink, 2**62, limit=10_000)
    ]
    return Dump(events, {e.id: store.audit_trail(e.id) for e in events}, sorted(outbox))


@pytest.fixture
def store(event_db_url: str) -> Iterator[EventStore]:
    with EventStore(event_db_url) as s:
        s.migrate()
        yield s


@pytest.fixture
def three_databases(
    event_db_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[list[str]]:
    """`event_db_url` and two more empty databases of its kind."""
    if event_db_url.startswith("sqlite"):
        yield [event_db_url, *(f"sqlite:///{tmp_path / f'events-{n}.db'}" for n in (1, 2))]
        return
    admin: str = request.getfixturevalue("postgres_url")
    names = [f"{event_db_url.rsplit('/', 1)[1]}_{n}" for n in (1, 2)]
    try:
        yield [event_db_url, *(create_database(admin, name) for name in names)]
    finally:
        for name in names:
            drop_database(admin, name)


def test_the_scenario_does_what_it_says(store: EventStore) -> None:
    play(manager(store), scenario(), tick_every=None)
    parent = store.open_event(FLOOD_RULE, "s1")
    assert parent is not None
    assert (parent.count, parent.values["events"], parent.values["apart"]) == (4, 9, 1)
    assert parent.state is State.RETURNED_UNACKNOWLEDGED
    assert len(store.children(parent.id)) == 9
    by_key = {e.key: e for e in store.list_events(limit=100)}
    assert by_key["a"].count == 4
    assert (by_key["c"].count, by_key["c"].last_ms) == (3, T0 + 100 * S)
    assert by_key["k"].parent_id is None
    assert (by_key["e"].state, by_key["e"].parent_id) == (State.ACTIVE_ACKNOWLEDGED, None)
    e_trail = [(r.action, r.at_ms - T0) for r in store.audit_trail(by_key["e"].id)]
    assert e_trail == [
        (Action.RAISE, 30 * S),
        (Action.ASSIGN, 30 * S),
        (Action.COMMENT, 30 * S),  # names the storm it was raised in
        (Action.ACKNOWLEDGE, 95 * S),
    ]
    actions = [(r.action, r.at_ms - T0) for r in store.audit_trail(parent.id)]
    assert actions == [
        (Action.RAISE, 22 * S),
        (Action.REPEAT, 30 * S),
        (Action.SHELVE, 35 * S),
        (Action.UNSHELVE, 80 * S),
        (Action.RETURN, 90 * S),
        (Action.REPEAT, 203 * S),
        (Action.REPEAT, 205 * S),
        (Action.SHELVE, 206 * S),
        (Action.RETURN, 265 * S),
        (Action.UNSHELVE, 300 * S),
    ]
    c_trail = [(r.action, r.at_ms - T0) for r in store.audit_trail(by_key["c"].id)]
    assert c_trail[-3:] == [
        (Action.REPEAT, 45 * S),
        (Action.UNSUPPRESS, 90 * S),
        (Action.REPEAT, 100 * S),
    ]
    x_trail = [(r.action, r.at_ms - T0) for r in store.audit_trail(by_key["x"].id)]
    assert x_trail[-2:] == [(Action.UNSHELVE, 50 * S), (Action.REPEAT, 70 * S)]


@pytest.mark.parametrize("operators", [False, True], ids=["detections", "with-operators"])
def test_how_often_tick_runs_does_not_change_the_store(
    three_databases: list[str], operators: bool
) -> None:
    dumps = []
    for url, tick_every in zip(three_databases, [S, MIN, None], strict=True):
        with EventStore(url) as store:
            store.migrate()
            play(manager(store), scenario(operators), tick_every)
            dumps.append(dump(store))
    every_second, every_minute, never = (d.without_outbox_order() for d in dumps)
    assert every_minute == every_second
    assert never == every_second


def test_a_replay_writes_nothing(store: EventStore) -> None:
    events = manager(store)
    play(events, scenario(operators=False), tick_every=MIN)
    # An operator closes a returned event: replaying its raise must not open another.
    k = store.open_event("door_forced", "k")
    assert k is not None
    events.act(k.id, Action.CLOSE, actor="op", at_ms=END, note="checked")
    before = dump(store)
    again = play(events, scenario(operators=False), tick_every=MIN)
    assert again == []
    assert dump(store) == before
    # So does a restarted manager (its flood windows rebuilt from the store).
    assert play(manager(store), scenario(operators=False), tick_every=None) == []
    assert dump(store) == before


def test_a_late_repeat_or_clear_is_a_replay(store: EventStore) -> None:
    events = manager(store)
    (event,) = events.handle(raise_("a", 10 * S), T0)
    events.handle(raise_("a", 20 * S), T0)
    assert events.handle(raise_("a", 20 * S, message="same time"), T0) == []
    assert events.handle(raise_("a", 15 * S), T0) == []
    assert events.handle(clear("a", 15 * S), T0) == []  # raised again since
    (back,) = events.handle(clear("a", 20 * S), T0)  # a clear at the last raise counts
    assert (back.id, back.active, back.count) == (event.id, False, 2)
    assert len(store.audit_trail(event.id)) == 4  # raise, assign, repeat, return


def test_a_flood_with_a_critical_fire_is_the_same_every_time(
    three_databases: list[str],
) -> None:
    """Twelve doors, a critical fire in the middle of the storm, four more doors: the
    same detections give the same events, ids, audit trails and outbox, and replaying
    them writes nothing."""
    doors = [raise_(f"door-{i}", i * S) for i in range(12)]
    burning = raise_("fire-c1", 12 * S, severity=Severity.CRITICAL, devices=("s-1", "s-2"))
    steps = [*doors, burning, *(raise_(f"door-{i}", i * S) for i in range(12, 16))]
    dumps = []
    for url in three_databases[:2]:
        with EventStore(url) as store:
            store.migrate()
            events = EventManager(store, workers={"c1": "worker-li"}, sinks=SINKS)
            assert [events.handle(d, d.at_ms) for d in steps]
            assert [events.handle(d, d.at_ms) for d in steps] == [[]] * len(steps)
            assert events.tick(T0 + 16 * S + 10 * MIN) != []  # the storm is over
            dumps.append(dump(store))
            parent = store.open_event(FLOOD_RULE, "s1")
            fire = store.open_event("door_forced", "fire-c1")
            assert parent is not None and fire is not None
            assert fire.parent_id is None
            assert [r.action for r in store.audit_trail(fire.id)] == [
                Action.RAISE,
                Action.ASSIGN,
                Action.COMMENT,
            ]
            assert (parent.values["events"], parent.values["apart"]) == (16, 1)
    first, second = dumps
    assert first == second
    assert {e.id for e in first.events} >= {
        event_id("door_forced", "fire-c1", T0 + 12 * S),
        event_id(FLOOD_RULE, "s1", T0 + 10 * S),
    }
