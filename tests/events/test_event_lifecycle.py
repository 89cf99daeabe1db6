"""The ISA-18.2 lifecycle as `transition` enforces it: pure, no store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from events.model import (
    OPERATOR_ACTIONS,
    SYSTEM,
    Action,
    Detection,
    ForbiddenTransition,
    Mode,
    SecurityEvent,
    Severity,
    State,
    new_event,
    state_of,
    transition,
)

T0 = 1_740_000_000_000


def detection(*, raised: bool = True, at_ms: int = T0, **kw: Any) -> Detection:
    fields: dict[str, Any] = {
        "rule_id": "door_forced",
        "key": "door-1",
        "site": "s1",
        "cell": "c1",
        "device": "door-1",
        "title": "Door forced",
        "message": "forced open",
        "incident": "door_forced",
    }
    return Detection(raised=raised, at_ms=at_ms, **(fields | kw))


def step(event: SecurityEvent, action: Action, **kw: Any) -> SecurityEvent:
    kw.setdefault("at_ms", event.updated_ms + 1)
    kw.setdefault("actor", "op")
    if action is Action.REPEAT:
        kw.setdefault("detection", detection(at_ms=kw["at_ms"]))
    return transition(event, action, **kw)[0]


def raised() -> SecurityEvent:
    return new_event("e1", detection(), T0)[0]


def returned() -> SecurityEvent:
    return step(raised(), Action.RETURN)


# One event in every state, built only through the lifecycle.
MAKE: dict[State, Callable[[], SecurityEvent]] = {
    State.ACTIVE_UNACKNOWLEDGED: raised,
    State.ACTIVE_ACKNOWLEDGED: lambda: step(raised(), Action.ACKNOWLEDGE),
    State.RETURNED_UNACKNOWLEDGED: returned,
    State.CLEARED: lambda: step(returned(), Action.ACKNOWLEDGE),
    State.SHELVED: lambda: step(raised(), Action.SHELVE, until_ms=T0 + 60_000),
    State.SUPPRESSED: lambda: step(raised(), Action.SUPPRESS),
    State.OUT_OF_SERVICE: lambda: step(raised(), Action.REMOVE_FROM_SERVICE),
    State.CLOSED: lambda: step(returned(), Action.CLOSE, note="false alarm"),
}

AU, AA, RU, CL = (
    State.ACTIVE_UNACKNOWLEDGED,
    State.ACTIVE_ACKNOWLEDGED,
    State.RETURNED_UNACKNOWLEDGED,
    State.CLEARED,
)
SH, SU, OOS, CLOSED = State.SHELVED, State.SUPPRESSED, State.OUT_OF_SERVICE, State.CLOSED
SHELVE = {"until_ms": T0 + 3_600_000}
GROUP = {"parent_id": "p1"}
ASSIGN = {"assignee": "worker-7"}
NOTE = {"note": "checked on site"}

ALLOWED: list[tuple[State, Action, dict[str, Any], State]] = [
    (AU, Action.REPEAT, {}, AU),
    (AU, Action.RETURN, {}, RU),
    (AU, Action.ACKNOWLEDGE, {}, AA),
    (AU, Action.ASSIGN, ASSIGN, AU),
    (AU, Action.COMMENT, NOTE, AU),
    (AU, Action.SHELVE, SHELVE, SH),
    (AU, Action.SUPPRESS, {}, SU),
    (AU, Action.REMOVE_FROM_SERVICE, {}, OOS),
    (AU, Action.GROUP, GROUP, AU),
    (AA, Action.REPEAT, {}, AA),
    (AA, Action.RETURN, {}, CL),
    (AA, Action.ASSIGN, ASSIGN, AA),
    (AA, Action.COMMENT, NOTE, AA),
    (AA, Action.SHELVE, SHELVE, SH),
    (AA, Action.SUPPRESS, {}, SU),
    (AA, Action.REMOVE_FROM_SERVICE, {}, OOS),
    (AA, Action.GROUP, GROUP, AA),
    (RU, Action.REPEAT, {}, AU),
    (RU, Action.ACKNOWLEDGE, {}, CL),
    (RU, Action.ASSIGN, ASSIGN, RU),
    (RU, Action.COMMENT, NOTE, RU),
    (RU, Action.SHELVE, SHELVE, SH),
    (RU, Action.SUPPRESS, {}, SU),
    (RU, Action.REMOVE_FROM_SERVICE, {}, OOS),
    (RU, Action.CLOSE, NOTE, CLOSED),
    (RU, Action.GROUP, GROUP, RU),
    (CL, Action.REPEAT, {}, AU),
    (CL, Action.ASSIGN, ASSIGN, CL),
    (CL, Action.COMMENT, NOTE, CL),
    (CL, Action.SHELVE, SHELVE, SH),
    (CL, Action.SUPPRESS, {}, SU),
    (CL, Action.REMOVE_FROM_SERVICE, {}, OOS),
    (CL, Action.CLOSE, NOTE, CLOSED),
    (CL, Action.GROUP, GROUP, CL),
    (SH, Action.REPEAT, {}, SH),
    (SH, Action.RETURN, {}, SH),
    (SH, Action.ASSIGN, ASSIGN, SH),
    (SH, Action.COMMENT, NOTE, SH),
    (SH, Action.UNSHELVE, {}, AU),
    (SH, Action.REMOVE_FROM_SERVICE, {}, OOS),
    (SH, Action.GROUP, GROUP, SH),
    (SU, Action.REPEAT, {}, SU),
    (SU, Action.RETURN, {}, SU),
    (SU, Action.ASSIGN, ASSIGN, SU),
    (SU, Action.COMMENT, NOTE, SU),
    (SU, Action.UNSUPPRESS, {}, AU),
    (SU, Action.REMOVE_FROM_SERVICE, {}, OOS),
    (SU, Action.GROUP, GROUP, SU),
    (OOS, Action.REPEAT, {}, OOS),
    (OOS, Action.RETURN, {}, OOS),
    (OOS, Action.ASSIGN, ASSIGN, OOS),
    (OOS, Action.COMMENT, NOTE, OOS),
    (OOS, Action.RETURN_TO_SERVICE, {}, AU),
    (OOS, Action.GROUP, GROUP, OOS),
    # Escalation steps: only on what operators still have to answer; no fact changes.
    (AU, Action.NOTIFY, NOTE, AU),
    (AU, Action.ESCALATE, NOTE, AU),
    (RU, Action.NOTIFY, NOTE, RU),
    (RU, Action.ESCALATE, NOTE, RU),
]

FORBIDDEN: list[tuple[State, Action, dict[str, Any]]] = [
    (AU, Action.RAISE, {}),
    (AU, Action.CLOSE, NOTE),  # still active
    (AA, Action.CLOSE, NOTE),
    (AA, Action.ACKNOWLEDGE, {}),
    (CL, Action.ACKNOWLEDGE, {}),
    (RU, Action.RETURN, {}),  # not active
    (CL, Action.RETURN, {}),
    (RU, Action.CLOSE, {}),  # no resolution note
    (RU, Action.CLOSE, {"note": "   "}),
    (AU, Action.SHELVE, {}),  # no expiry
    (AU, Action.SHELVE, {"until_ms": T0}),  # expiry not in the future
    (AU, Action.ASSIGN, {}),
    (AU, Action.ASSIGN, {"assignee": ""}),
    (AU, Action.COMMENT, {}),
    (AU, Action.COMMENT, {"note": " "}),
    (AU, Action.GROUP, {}),
    (AU, Action.GROUP, {"parent_id": "e1"}),  # itself
    (AU, Action.UNSHELVE, {}),
    (AU, Action.UNSUPPRESS, {}),
    (AU, Action.RETURN_TO_SERVICE, {}),
    (SH, Action.SHELVE, SHELVE),
    (SH, Action.ACKNOWLEDGE, {}),
    (SH, Action.SUPPRESS, {}),
    (SH, Action.UNSUPPRESS, {}),
    (SU, Action.ACKNOWLEDGE, {}),
    (SU, Action.SHELVE, SHELVE),
    (SU, Action.SUPPRESS, {}),
    (SU, Action.UNSHELVE, {}),
    (OOS, Action.REMOVE_FROM_SERVICE, {}),
    (OOS, Action.ACKNOWLEDGE, {}),
    (OOS, Action.SHELVE, SHELVE),
    (OOS, Action.SUPPRESS, {}),
    (AA, Action.NOTIFY, NOTE),  # acknowledged: nothing to escalate
    (CL, Action.ESCALATE, NOTE),
    (SH, Action.NOTIFY, NOTE),  # set aside: not annunciated
    (SU, Action.ESCALATE, NOTE),
    (OOS, Action.NOTIFY, NOTE),
]


def test_every_state_is_reachable() -> None:
    assert {state_of(make()) for make in MAKE.values()} == set(State)
    for state, make in MAKE.items():
        assert make().state is state


def test_raise_opens_an_active_unacknowledged_event_with_its_audit() -> None:
    event, record = new_event("e1", detection(at_ms=T0 - 5), T0)
    assert event.state is AU
    assert (event.version, event.count, event.raised_ms, event.last_ms) == (1, 1, T0 - 5, T0 - 5)
    assert record.action is Action.RAISE
    assert (record.from_state, record.to_state, record.actor) == (None, AU, SYSTEM)
    assert record.event_id == "e1"


def test_a_clear_cannot_open_an_event() -> None:
    with pytest.raises(ValueError, match="cannot open"):
        new_event("e1", detection(raised=False), T0)


@pytest.mark.parametrize(
    ("start", "action", "kw", "end"),
    ALLOWED,
    ids=[f"{s.value}-{a.value}" for s, a, _, _ in ALLOWED],
)
def test_allowed_transition_writes_one_audit_record(
    start: State, action: Action, kw: dict[str, Any], end: State
) -> None:
    before = MAKE[start]()
    at = before.updated_ms + 10
    extra = dict(kw)
    if action is Action.REPEAT:
        extra["detection"] = detection(at_ms=at)
    after, record = transition(before, action, actor="alice", at_ms=at, **extra)
    assert after.state is end
    assert after.version == before.version + 1
    assert after.updated_ms == at
    assert record.event_id == before.id
    assert (record.action, record.actor, record.at_ms) == (action, "alice", at)
    assert (record.from_state, record.to_state) == (start, end)
    assert record.note == kw.get("note", "")


@pytest.mark.parametrize(
    ("start", "action", "kw"),
    FORBIDDEN,
    ids=[f"{s.value}-{a.value}-{i}" for i, (s, a, _) in enumerate(FORBIDDEN)],
)
def test_forbidden_transition_is_refused(start: State, action: Action, kw: dict[str, Any]) -> None:
    before = MAKE[start]()
    with pytest.raises(ForbiddenTransition) as caught:
        transition(before, action, actor="alice", at_ms=before.updated_ms + 10, **kw)
    assert caught.value.event_id == before.id
    assert caught.value.action is action
    assert caught.value.state is start
    assert isinstance(caught.value, ValueError)


def test_the_tables_cover_every_state_and_action() -> None:
    covered = {(s, a) for s, a, _, _ in ALLOWED} | {(s, a) for s, a, _ in FORBIDDEN}
    assert {s for s, _ in covered} == set(State) - {CLOSED}
    assert {a for _, a in covered} == set(Action)


@pytest.mark.parametrize("action", list(Action))
def test_closed_is_terminal(action: Action) -> None:
    closed = MAKE[CLOSED]()
    kw: dict[str, Any] = {**NOTE, **ASSIGN, **SHELVE, **GROUP, "detection": detection()}
    with pytest.raises(ForbiddenTransition, match="closed"):
        transition(closed, action, actor="alice", at_ms=closed.updated_ms + 1, **kw)


def test_close_needs_a_note_and_an_inactive_condition() -> None:
    with pytest.raises(ForbiddenTransition, match="still active"):
        step(raised(), Action.CLOSE, note="done")
    with pytest.raises(ForbiddenTransition, match="resolution note"):
        step(returned(), Action.CLOSE)
    closed = step(returned(), Action.CLOSE, note="  false alarm ")
    assert (closed.closed, closed.resolution, closed.acknowledged) == (True, "false alarm", True)


def test_shelve_needs_a_future_expiry_and_unshelve_clears_it() -> None:
    event = raised()
    at = event.updated_ms + 1
    for until in (None, at - 1, at):
        with pytest.raises(ForbiddenTransition, match="expiry"):
            transition(event, Action.SHELVE, actor="op", at_ms=at, until_ms=until)
    shelved = step(event, Action.SHELVE, at_ms=at, until_ms=at + 1)
    assert (shelved.mode, shelved.shelved_until_ms) == (Mode.SHELVED, at + 1)
    unshelved = step(shelved, Action.UNSHELVE)
    assert (unshelved.mode, unshelved.shelved_until_ms) == (Mode.NORMAL, None)


def test_repeat_bumps_the_count_and_reannunciates_a_returned_event() -> None:
    event = step(returned(), Action.ACKNOWLEDGE)
    again = step(event, Action.REPEAT, detection=detection(at_ms=T0 + 99, message="again"))
    assert (again.count, again.last_ms, again.message) == (2, T0 + 99, "again")
    assert (again.active, again.acknowledged, again.returned_ms) == (True, False, None)
    with pytest.raises(ValueError, match="needs the detection"):
        transition(event, Action.REPEAT, actor=SYSTEM, at_ms=T0 + 100)


def test_repeat_raises_the_severity_but_never_lowers_it() -> None:
    event = raised()
    assert event.severity is Severity.MEDIUM
    higher = step(event, Action.REPEAT, detection=detection(severity=Severity.CRITICAL))
    assert higher.severity is Severity.CRITICAL
    lower = step(higher, Action.REPEAT, detection=detection(severity=Severity.LOW))
    assert lower.severity is Severity.CRITICAL


def test_group_is_once() -> None:
    grouped = step(raised(), Action.GROUP, parent_id="p1")
    assert grouped.parent_id == "p1"
    with pytest.raises(ForbiddenTransition, match="already grouped"):
        step(grouped, Action.GROUP, parent_id="p2")


def test_operators_cannot_do_what_the_system_does() -> None:
    system_only = {
        Action.RAISE,
        Action.REPEAT,
        Action.RETURN,
        Action.SUPPRESS,
        Action.UNSUPPRESS,
        Action.GROUP,
        Action.NOTIFY,
        Action.ESCALATE,
    }
    assert set(Action) - system_only == OPERATOR_ACTIONS
