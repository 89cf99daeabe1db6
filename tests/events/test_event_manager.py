"""The event manager on real databases: dedup, assignment, flood control, timers, restarts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from events.manager import FLOOD_INCIDENT, FLOOD_RULE, STORM_DEVICES_NAMED, EventManager
from events.model import (
    SYSTEM,
    Action,
    Detection,
    ForbiddenTransition,
    Mode,
    SecurityEvent,
    Severity,
    Source,
    State,
)
from events.store import EventFilter, EventStore, StaleEvent, UnknownEvent

T0 = 1_740_000_000_000
MIN = 60_000
WINDOW = 10 * MIN
WORKERS = {"c1": "worker-li", "c2": "worker-wang"}
SINKS = ("influx", "mqtt")
OPEN = set(State) - {State.CLOSED}


def raise_(key: str = "door-1", at_ms: int = T0, **kw: Any) -> Detection:
    fields: dict[str, Any] = {
        "rule_id": "door_forced",
        "site": "s1",
        "cell": "c1",
        "device": key,
        "severity": Severity.HIGH,
        "title": f"Door forced: {key}",
        "message": "opened without access",
        "incident": "door_forced",
    }
    return Detection(key=key, raised=True, at_ms=at_ms, **(fields | kw))


def clear(key: str = "door-1", at_ms: int = T0, **kw: Any) -> Detection:
    return Detection(
        rule_id=kw.pop("rule_id", "door_forced"),
        key=key,
        raised=False,
        at_ms=at_ms,
        site="s1",
        **kw,
    )


@pytest.fixture
def store(event_db_url: str) -> Iterator[EventStore]:
    with EventStore(event_db_url) as s:
        s.migrate()
        yield s


def manager(store: EventStore) -> EventManager:
    return EventManager(store, workers=WORKERS, sinks=SINKS, flood_limit=10, flood_window_ms=WINDOW)


@pytest.fixture
def events(store: EventStore) -> EventManager:
    return manager(store)


def one(changed: list[SecurityEvent]) -> SecurityEvent:
    assert len(changed) == 1, changed
    return changed[0]


def must(event: SecurityEvent | None) -> SecurityEvent:
    assert event is not None
    return event


# ---------------------------------------------------------------------- raise and clear


def test_a_raise_opens_an_event_assigned_to_the_cells_grid_worker(
    events: EventManager, store: EventStore
) -> None:
    event = one(events.handle(raise_(at_ms=T0), now_ms=T0 + 5))
    assert event.state is State.ACTIVE_UNACKNOWLEDGED
    assert (event.assignee, event.raised_ms, event.updated_ms) == ("worker-li", T0, T0)
    assert store.get(event.id) == event
    trail = store.audit_trail(event.id)
    assert [(r.action, r.actor) for r in trail] == [
        (Action.RAISE, SYSTEM),
        (Action.ASSIGN, SYSTEM),
    ]
    assert trail[1].note == "grid worker of cell c1"
    # Every transition went to every sink in the same transaction.
    assert store.outbox_pending() == {"influx": 2, "mqtt": 2}


def test_no_assignment_without_a_known_cell(events: EventManager, store: EventStore) -> None:
    unknown = one(events.handle(raise_("d1", cell="c9"), T0))
    no_cell = one(events.handle(raise_("d2", cell=None), T0))
    assert unknown.assignee is None
    assert no_cell.assignee is None
    assert [r.action for r in store.audit_trail(unknown.id)] == [Action.RAISE]


def test_the_same_condition_repeats_its_open_event(events: EventManager, store: EventStore) -> None:
    first = one(events.handle(raise_(at_ms=T0), T0))
    again = one(events.handle(raise_(at_ms=T0 + 30_000, message="again"), T0 + 30_000))
    assert again.id == first.id
    assert (again.count, again.last_ms, again.raised_ms, again.message) == (
        2,
        T0 + 30_000,
        T0,
        "again",
    )
    assert store.count_events() == 1
    assert store.audit_trail(first.id)[-1].action is Action.REPEAT


def test_a_clear_returns_the_event_and_a_stray_clear_is_ignored(
    events: EventManager, store: EventStore
) -> None:
    assert events.handle(clear(at_ms=T0), T0) == []
    event = one(events.handle(raise_(at_ms=T0), T0))
    back = one(events.handle(clear(at_ms=T0 + MIN, message="closed again"), T0 + MIN))
    assert back.id == event.id
    assert back.state is State.RETURNED_UNACKNOWLEDGED
    assert back.returned_ms == T0 + MIN
    assert events.handle(clear(at_ms=T0 + 2 * MIN), T0 + 2 * MIN) == []
    assert store.audit_trail(event.id)[-1].note == "closed again"
    # Raised again before anyone closed it: the same event, annunciated again.
    again = one(events.handle(raise_(at_ms=T0 + 3 * MIN), T0 + 3 * MIN))
    assert (again.id, again.state, again.count) == (event.id, State.ACTIVE_UNACKNOWLEDGED, 2)


def test_a_closed_event_is_not_reopened(events: EventManager) -> None:
    event = one(events.handle(raise_(at_ms=T0), T0))
    events.handle(clear(at_ms=T0 + 1), T0 + 1)
    closed = events.act(event.id, Action.CLOSE, actor="alice", at_ms=T0 + 2, note="repaired")
    assert closed.state is State.CLOSED
    fresh = one(events.handle(raise_(at_ms=T0 + 3), T0 + 3))
    assert fresh.id != event.id
    assert fresh.count == 1


def test_flood_control_rule_id_is_reserved(events: EventManager) -> None:
    with pytest.raises(ValueError, match="reserved"):
        events.handle(raise_(rule_id=FLOOD_RULE), T0)


def test_now_stands_in_for_a_missing_detection_time(events: EventManager) -> None:
    event = one(events.handle(raise_(at_ms=0), now_ms=T0))
    assert (event.raised_ms, event.updated_ms) == (T0, T0)


# ---------------------------------------------------------------------- operators


def test_operator_actions_are_audited_under_their_name(
    events: EventManager, store: EventStore
) -> None:
    event = one(events.handle(raise_(), T0))
    acked = events.act(event.id, Action.ACKNOWLEDGE, actor="alice", at_ms=T0 + 1)
    assert acked.state is State.ACTIVE_ACKNOWLEDGED
    reassigned = events.act(
        event.id,
        Action.ASSIGN,
        actor="alice",
        at_ms=T0 + 2,
        assignee="worker-zhao",
        expected_version=acked.version,
    )
    assert reassigned.assignee == "worker-zhao"
    last = store.audit_trail(event.id)[-1]
    assert (last.action, last.actor, last.at_ms) == (Action.ASSIGN, "alice", T0 + 2)


def test_operator_errors(events: EventManager) -> None:
    event = one(events.handle(raise_(), T0))
    with pytest.raises(UnknownEvent):
        events.act("nope", Action.ACKNOWLEDGE, actor="alice", at_ms=T0)
    with pytest.raises(ForbiddenTransition, match="only the system"):
        events.act(event.id, Action.RETURN, actor="alice", at_ms=T0 + 1)
    with pytest.raises(ForbiddenTransition, match="still active"):
        events.act(event.id, Action.CLOSE, actor="alice", at_ms=T0 + 1, note="done")
    with pytest.raises(StaleEvent):
        events.act(
            event.id,
            Action.ACKNOWLEDGE,
            actor="alice",
            at_ms=T0 + 1,
            expected_version=event.version - 1,
        )


def test_shelves_expire_through_tick(events: EventManager, store: EventStore) -> None:
    event = one(events.handle(raise_(), T0))
    events.act(event.id, Action.SHELVE, actor="alice", at_ms=T0 + 1, until_ms=T0 + 5 * MIN)
    assert events.tick(T0 + 5 * MIN - 1) == []
    back = one(events.tick(T0 + 5 * MIN))
    assert (back.id, back.state, back.shelved_until_ms) == (
        event.id,
        State.ACTIVE_UNACKNOWLEDGED,
        None,
    )
    last = store.audit_trail(event.id)[-1]
    assert (last.action, last.actor, last.from_state) == (Action.UNSHELVE, SYSTEM, State.SHELVED)
    assert events.tick(T0 + 10 * MIN) == []


def test_a_late_tick_unshelves_at_the_expiry(events: EventManager, store: EventStore) -> None:
    event = one(events.handle(raise_(), T0))
    events.act(event.id, Action.SHELVE, actor="alice", at_ms=T0 + 1, until_ms=T0 + 5 * MIN)
    back = one(events.tick(T0 + 60 * MIN))
    assert (back.state, back.updated_ms) == (State.ACTIVE_UNACKNOWLEDGED, T0 + 5 * MIN)
    assert store.audit_trail(event.id)[-1].at_ms == T0 + 5 * MIN


def test_a_repeat_after_the_expiry_unshelves_first(events: EventManager, store: EventStore) -> None:
    event = one(events.handle(raise_(), T0))
    events.act(event.id, Action.SHELVE, actor="alice", at_ms=T0 + 1, until_ms=T0 + 5 * MIN)
    again = one(events.handle(raise_(at_ms=T0 + 6 * MIN), T0 + 6 * MIN))
    assert (again.state, again.count) == (State.ACTIVE_UNACKNOWLEDGED, 2)
    trail = [(r.action, r.at_ms) for r in store.audit_trail(event.id)[-2:]]
    assert trail == [(Action.UNSHELVE, T0 + 5 * MIN), (Action.REPEAT, T0 + 6 * MIN)]
    assert events.tick(T0 + 7 * MIN) == []


# ---------------------------------------------------------------------- flood control


def storm(events: EventManager, n: int, *, start: int = T0, step: int = 50_000, **kw: Any) -> int:
    """n new events (distinct doors) at one site, `step` apart; returns the last time."""
    at = start
    for i in range(n):
        at = start + i * step
        events.handle(raise_(f"door-{i}", at_ms=at, **kw), at)
    return at


def top_level_open(store: EventStore, site: str = "s1") -> list[SecurityEvent]:
    return store.list_events(EventFilter(site=site, states=OPEN, top_level_only=True))


def test_ten_events_are_not_a_flood(events: EventManager, store: EventStore) -> None:
    storm(events, 10)
    assert store.count_events(EventFilter(rule_id=FLOOD_RULE)) == 0
    assert len(top_level_open(store)) == 10


def test_eleven_events_in_ten_minutes_open_one_parent(
    events: EventManager, store: EventStore
) -> None:
    storm(events, 9)
    fire = one(
        events.handle(raise_("smoke-1", at_ms=T0 + 9 * 50_000, severity=Severity.CRITICAL), T0)
    )
    changed = events.handle(raise_("door-10", at_ms=T0 + 10 * 50_000, devices=("cam-1",)), T0)

    # The critical event counted towards the flood (11 in 10 min) but was not grouped.
    parent, alone = sorted(top_level_open(store), key=lambda e: e.rule_id != FLOOD_RULE)
    assert (parent.rule_id, parent.key, parent.incident) == (FLOOD_RULE, "s1", FLOOD_INCIDENT)
    assert parent.title == "Incident storm at s1: 10 events grouped"
    assert parent.message.startswith("10 events from 11 devices grouped at s1, 1 more shown")
    assert dict(parent.values) == {"events": 10, "apart": 1, "devices": 11}
    assert parent.severity is Severity.HIGH  # the highest of the group
    assert parent.state is State.ACTIVE_UNACKNOWLEDGED
    assert {"door-0", "door-10", "cam-1"} <= set(parent.devices)
    assert "smoke-1" not in parent.devices
    assert (alone.id, alone.state, alone.parent_id) == (fire.id, State.ACTIVE_UNACKNOWLEDGED, None)
    children = store.children(parent.id)
    assert len(children) == 10
    assert all(c.state is State.SUPPRESSED for c in children)
    assert all(c.parent_id == parent.id for c in children)
    assert sorted(e.id for e in changed) == sorted([parent.id, *(c.id for c in children)])
    grouped = store.audit_trail(children[0].id)[-2:]
    assert [(r.action, r.actor) for r in grouped] == [
        (Action.GROUP, SYSTEM),
        (Action.SUPPRESS, SYSTEM),
    ]


def test_further_events_join_the_active_parent(events: EventManager, store: EventStore) -> None:
    last = storm(events, 11)
    [parent] = top_level_open(store)
    at = last + 30_000
    changed = events.handle(raise_("door-11", at_ms=at), at)
    joined = store.children(parent.id)
    assert len(joined) == 12
    newcomer = next(c for c in joined if c.key == "door-11")
    assert newcomer.state is State.SUPPRESSED
    now = must(store.get(parent.id))
    assert (now.count, now.last_ms, now.values["events"]) == (2, at, 12)
    assert {e.id for e in changed} == {newcomer.id, parent.id}
    assert len(top_level_open(store)) == 1
    # A repeat of a child is not a new event: it does not extend the storm.
    events.handle(raise_("door-3", at_ms=at + 1), at + 1)
    assert must(store.get(parent.id)).count == 2
    # Another site is not part of this storm.
    other = one(events.handle(raise_("door-x", at_ms=at, site="s2"), at))
    assert other.parent_id is None


def fire(at: int, **kw: Any) -> Detection:
    """A confirmed fire in cell c2: critical, two detectors."""
    fields: dict[str, Any] = {
        "rule_id": "fire",
        "cell": "c2",
        "device": "smoke-7",
        "devices": ("smoke-7", "smoke-8"),
        "severity": Severity.CRITICAL,
        "title": "Fire confirmed in c2",
        "incident": "fire",
    }
    return raise_("c2", at_ms=at, **(fields | kw))


def test_a_critical_fire_during_a_flood_annunciates_on_its_own(
    events: EventManager, store: EventStore
) -> None:
    last = storm(events, 11)
    parent = must(store.open_event(FLOOD_RULE, "s1"))
    at = last + 30_000
    changed = events.handle(fire(at), at)

    burning = must(store.open_event("fire", "c2"))
    assert (burning.parent_id, burning.mode) == (None, Mode.NORMAL)
    assert burning.state is State.ACTIVE_UNACKNOWLEDGED
    assert burning.assignee == "worker-wang"
    assert burning in top_level_open(store)
    assert burning.id not in {c.id for c in store.children(parent.id)}
    trail = [(r.action, r.actor) for r in store.audit_trail(burning.id)]
    assert trail == [
        (Action.RAISE, SYSTEM),
        (Action.ASSIGN, SYSTEM),
        (Action.COMMENT, SYSTEM),
    ]
    assert parent.id in store.audit_trail(burning.id)[-1].note
    # The parent counts and names it, keeps its own severity, and the site is not quiet.
    now = must(store.get(parent.id))
    assert (now.count, now.last_ms) == (2, at)
    assert dict(now.values) == {"events": 11, "apart": 1, "devices": 11}
    assert now.title == "Incident storm at s1: 11 events grouped"
    assert now.message.endswith("latest: Fire confirmed in c2 (shown on its own)")
    assert now.severity is Severity.HIGH
    assert {e.id for e in changed} == {burning.id, parent.id}
    # Noise still joins the storm; the fire never does.
    events.handle(raise_("door-11", at_ms=at + 1), at + 1)
    events.handle(fire(at + 2), at + 2)  # a repeat: only its counter
    assert len(store.children(parent.id)) == 12
    assert must(store.get(burning.id)).mode is Mode.NORMAL
    # The quiet-down counts the fire as activity, and leaves it alone.
    assert events.tick(at + WINDOW - 1) == []
    back = events.tick(at + 1 + WINDOW)
    assert burning.id not in {e.id for e in back}
    assert must(store.get(parent.id)).state is State.RETURNED_UNACKNOWLEDGED


def test_high_events_are_kept_apart_by_configuration(store: EventStore) -> None:
    events = EventManager(
        store,
        workers=WORKERS,
        flood_window_ms=WINDOW,
        flood_exempt={Severity.CRITICAL, Severity.HIGH},
    )
    # Only emergencies: nothing to group, so no parent, every one annunciated.
    storm(events, 11)
    assert store.count_events(EventFilter(rule_id=FLOOD_RULE)) == 0
    assert {e.state for e in top_level_open(store)} == {State.ACTIVE_UNACKNOWLEDGED}
    # The first groupable event opens the flood; it groups the noise alone.
    at = T0 + 11 * 50_000
    events.handle(raise_("held-1", at_ms=at, severity=Severity.MEDIUM), at)
    parent = must(store.open_event(FLOOD_RULE, "s1"))
    assert [c.key for c in store.children(parent.id)] == ["held-1"]
    assert dict(parent.values) == {"events": 1, "apart": 11, "devices": 1}
    assert parent.severity is Severity.MEDIUM
    assert len(top_level_open(store)) == 12


def test_the_parent_summary_stays_current(events: EventManager, store: EventStore) -> None:
    last = storm(events, 16, step=10_000)
    parent = must(store.open_event(FLOOD_RULE, "s1"))
    doors = tuple(f"door-{i}" for i in range(16))
    assert (parent.count, parent.last_ms) == (6, last)  # opened by the 11th, five joined
    assert parent.title == "Incident storm at s1: 16 events grouped"
    assert parent.message == (
        "16 events from 16 devices grouped at s1 (more than 10 new events in 10 min); "
        "latest: Door forced: door-15"
    )
    assert dict(parent.values) == {"events": 16, "apart": 0, "devices": 16}
    assert parent.devices == doors
    assert len(store.children(parent.id)) == 16
    # The outbox carried every update: the last one the sinks saw is the summary above.
    delivered = [i.event for i in store.outbox_due("mqtt", 2**62) if i.event.id == parent.id]
    assert [e.values["events"] for e in delivered] == [11, 12, 13, 14, 15, 16]
    assert delivered[-1].title == parent.title


def test_a_large_storm_names_its_first_devices_only(
    events: EventManager, store: EventStore
) -> None:
    # Each joining child repeats the parent, and every repeat's outbox item carries it:
    # the devices it names are capped, or a storm's cost would grow with its square.
    n = STORM_DEVICES_NAMED + 20
    storm(events, n, step=1_000)
    parent = must(store.open_event(FLOOD_RULE, "s1"))
    assert parent.devices == tuple(f"door-{i}" for i in range(STORM_DEVICES_NAMED))
    assert dict(parent.values) == {
        "events": n,
        "apart": 0,
        "devices": STORM_DEVICES_NAMED,
        "devices_more": True,
    }
    assert parent.message.startswith(f"{n} events from {STORM_DEVICES_NAMED}+ devices grouped")
    assert len(store.children(parent.id)) == n  # every child is still grouped
    sizes = [
        len(i.event.devices)
        for i in store.outbox_due("mqtt", 2**62, 10_000)
        if i.event.id == parent.id
    ]
    assert len(sizes) == n - 10 and max(sizes) == STORM_DEVICES_NAMED


def test_a_suppressed_child_escalated_to_critical_is_unsuppressed(
    events: EventManager, store: EventStore
) -> None:
    last = storm(events, 11)
    at = last + 1
    events.handle(raise_("door-4", at_ms=at, severity=Severity.CRITICAL), at)
    escalated = must(store.open_event("door_forced", "door-4"))
    assert (escalated.severity, escalated.state) == (
        Severity.CRITICAL,
        State.ACTIVE_UNACKNOWLEDGED,
    )
    assert store.audit_trail(escalated.id)[-1].action is Action.UNSUPPRESS


def test_events_outside_the_window_do_not_count(events: EventManager, store: EventStore) -> None:
    storm(events, 11, step=61_000)  # 11 raises over 10 min 10 s
    assert store.count_events(EventFilter(rule_id=FLOOD_RULE)) == 0


def test_a_shelved_event_is_grouped_but_keeps_its_mode(
    events: EventManager, store: EventStore
) -> None:
    first = one(events.handle(raise_("door-shelved", at_ms=T0), T0))
    events.act(first.id, Action.SHELVE, actor="alice", at_ms=T0 + 1, until_ms=T0 + 99 * MIN)
    storm(events, 10, start=T0 + 1_000, step=1_000, device="d")
    parent = must(store.open_event(FLOOD_RULE, "s1"))
    shelved = must(store.get(first.id))
    assert (shelved.parent_id, shelved.mode) == (parent.id, Mode.SHELVED)
    # When the flood ends only the suppressed children come back; the shelve stands.
    events.tick(T0 + 11_000 + WINDOW)
    assert must(store.get(first.id)).mode is Mode.SHELVED
    assert {c.mode for c in store.children(parent.id) if c.id != first.id} == {Mode.NORMAL}


def test_the_parent_returns_when_the_site_goes_quiet(
    events: EventManager, store: EventStore
) -> None:
    last = storm(events, 12)
    parent = must(store.open_event(FLOOD_RULE, "s1"))
    events.handle(clear("door-0", at_ms=last + 1), last + 1)  # one child's condition ended
    assert events.tick(last + WINDOW - 1) == []
    changed = events.tick(last + WINDOW)
    back = changed[0]
    assert (back.id, back.state, back.returned_ms) == (
        parent.id,
        State.RETURNED_UNACKNOWLEDGED,
        last + WINDOW,
    )
    assert store.audit_trail(parent.id)[-1].actor == SYSTEM
    # The flood is over: its children are annunciated again, each in its own state, and
    # stay grouped under the parent.
    children = store.children(parent.id)
    assert {c.id for c in changed[1:]} == {c.id for c in children}
    assert all(c.mode is Mode.NORMAL and c.parent_id == parent.id for c in children)
    states = {c.key: c.state for c in children}
    assert states.pop("door-0") is State.RETURNED_UNACKNOWLEDGED
    assert set(states.values()) == {State.ACTIVE_UNACKNOWLEDGED}
    record = store.audit_trail(children[0].id)[-1]
    assert (record.action, record.actor, record.at_ms) == (
        Action.UNSUPPRESS,
        SYSTEM,
        last + WINDOW,
    )
    assert events.tick(last + 2 * WINDOW) == []
    # Quiet means no new flood: the next event stands alone.
    after = one(events.handle(raise_("door-99", at_ms=last + WINDOW + 1), last + WINDOW + 1))
    assert after.parent_id is None


def test_a_late_tick_returns_the_parent_when_the_site_went_quiet(
    events: EventManager, store: EventStore
) -> None:
    last = storm(events, 11)
    changed = events.tick(last + 3 * WINDOW)
    assert changed[0].rule_id == FLOOD_RULE
    assert {e.updated_ms for e in changed} == {last + WINDOW}
    assert changed[0].returned_ms == last + WINDOW


def test_a_new_event_finds_a_quiet_parent_before_tick_does(
    events: EventManager, store: EventStore
) -> None:
    last = storm(events, 11)
    parent = must(store.open_event(FLOOD_RULE, "s1"))
    at = last + WINDOW + 5 * MIN
    changed = events.handle(raise_("door-99", at_ms=at), at)
    back = must(store.get(parent.id))
    assert (back.state, back.returned_ms) == (State.RETURNED_UNACKNOWLEDGED, last + WINDOW)
    newcomer = must(store.open_event("door_forced", "door-99"))
    assert newcomer.parent_id is None
    assert {e.id for e in changed} == {parent.id, newcomer.id} | {
        c.id for c in store.children(parent.id)
    }
    assert all(c.mode is Mode.NORMAL for c in store.children(parent.id))
    assert events.tick(at) == []


def test_a_new_storm_reopens_a_returned_parent(events: EventManager, store: EventStore) -> None:
    last = storm(events, 11)
    events.tick(last + WINDOW)
    start = last + 2 * WINDOW
    storm(events, 11, start=start, step=1_000, rule_id="tamper")
    parent = must(store.open_event(FLOOD_RULE, "s1"))
    assert parent.active
    assert (parent.count, parent.values["events"]) == (2, 22)
    assert len(store.children(parent.id)) == 22
    assert store.count_events(EventFilter(rule_id=FLOOD_RULE)) == 1


# ---------------------------------------------------------------------- restarts


def test_a_new_manager_keeps_deduplicating(store: EventStore) -> None:
    first = one(manager(store).handle(raise_(at_ms=T0), T0))
    again = one(manager(store).handle(raise_(at_ms=T0 + 1), T0 + 1))
    assert (again.id, again.count) == (first.id, 2)
    assert store.count_events() == 1


def test_a_new_manager_rebuilds_the_flood_window(store: EventStore) -> None:
    last = storm(manager(store), 10)
    restarted = manager(store)
    at = last + 1_000
    restarted.handle(raise_("door-10", at_ms=at), at)
    parent = must(store.open_event(FLOOD_RULE, "s1"))
    assert len(store.children(parent.id)) == 11
    # And a third incarnation still joins new events to the active parent.
    manager(store).handle(raise_("door-11", at_ms=at + 1), at + 1)
    assert len(store.children(parent.id)) == 12
    assert len(top_level_open(store)) == 1


def decided_with_and_without_a_restart(
    store: EventStore, raises: list[tuple[str, float]], restart_before: int
) -> list[bool]:
    """Raise (site, minute) in order, once straight through (sites prefixed "a-") and
    once with a new manager from `restart_before` on ("b-"); per run, per site named
    first, whether a flood parent is open at the end."""
    found: list[bool] = []
    for run in ("a", "b"):
        events = manager(store)
        for i, (site, minute) in enumerate(raises):
            if run == "b" and i == restart_before:
                events = manager(store)  # a restart, or a hand-over to another node
            at = T0 + round(minute * MIN)
            events.handle(raise_(f"{run}-{site}-{i}", at_ms=at, site=f"{run}-{site}"), at)
        found.append(store.open_event(FLOOD_RULE, f"{run}-{raises[0][0]}") is not None)
    return found


def test_a_raise_that_came_late_counts_by_its_time_with_or_without_a_restart(
    store: EventStore,
) -> None:
    """Raises do not come in time order (a late reading, a timer). The oldest here,
    handled second, is 10.2 min before the eleventh: outside its window, so no flood.
    Counted in arrival order, it stayed behind a newer raise where the expiry did not
    reach it and opened a flood, but not after a restart (the window rebuilt from the
    store is in time order)."""
    minutes = [5.0, 0.0, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.2]
    raises = [("s", m) for m in minutes]
    assert decided_with_and_without_a_restart(store, raises, restart_before=10) == [False] * 2


def test_a_site_behind_another_keeps_its_window_through_a_restart(store: EventStore) -> None:
    """Eleven raises at a site within 10 min are a flood, also when another site of the
    same store is 15 min ahead in event time at the restart: the rebuilt window of each
    site ends at its own newest raise (it ended at the store's newest, and lost them)."""
    raises = [("s", float(m)) for m in range(1, 11)] + [("ahead", 25.0), ("s", 10.8)]
    assert decided_with_and_without_a_restart(store, raises, restart_before=11) == [True] * 2


def test_the_hubs_own_health_events_stay_out_of_flood_control(
    events: EventManager, store: EventStore
) -> None:
    """A hub event (its disk, its broker session: `Source.HUB`) is on the hub's clock, not
    the log's, and no field alarm: it neither counts towards a flood nor is grouped."""
    storm(events, 10)  # ten field events: one short of a flood
    hub = raise_("hub-a", at_ms=T0 + 10 * 50_000, rule_id="hub_storage_failing", source=Source.HUB)
    events.handle(hub, T0)
    assert not [e for e in top_level_open(store) if e.rule_id == FLOOD_RULE]
    events.handle(raise_("door-10", at_ms=T0 + 11 * 50_000), T0)  # the 11th field event
    parent = one([e for e in top_level_open(store) if e.rule_id == FLOOD_RULE])
    assert dict(parent.values)["events"] == 11
    (health,) = [e for e in top_level_open(store) if e.rule_id == "hub_storage_failing"]
    assert health.parent_id is None and health.state is State.ACTIVE_UNACKNOWLEDGED
