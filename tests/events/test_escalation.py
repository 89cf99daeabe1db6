"""Escalation on a simulated clock: reminders, escalation, what stops it, dedup across
restarts (read from the audit trail), the rate limit; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from events.escalation import (
    SNAPSHOT,
    Delays,
    EscalationPolicy,
    Escalator,
    Step,
    episode,
    next_step,
    rate_limit,
)
from events.escalation_notice import (
    Notice,
    check_contact,
    email_addresses,
    format_note,
    parse_note,
)
from events.manager import EventManager
from events.model import (
    SYSTEM,
    Action,
    AuditRecord,
    Detection,
    ForbiddenTransition,
    Severity,
    State,
    new_event,
    transition,
)
from events.render import event_json, event_point
from events.store import EventStore, StaleEvent

T0 = 1_740_000_000_000
S = 1_000
MIN = 60 * S
WORKERS = {"c1": "w-li", "c2": "w-wang"}
SINKS = ("mqtt", "webhook-0")
LI = "mailto:li@example.org"
CHIEF = "mailto:chief@example.org"
POLICY = EscalationPolicy(
    contacts={"w-li": (LI, "tel:+8613800000001")},
    supervisors={"s1": (CHIEF,)},
)


def raise_(key: str = "door-1", at_ms: int = T0, **kw: Any) -> Detection:
    fields: dict[str, Any] = {
        "rule_id": "door_forced",
        "site": "s1",
        "cell": "c1",
        "device": key,
        "severity": Severity.CRITICAL,
        "title": f"Door forced: {key}",
        "message": "opened without access",
        "incident": "door_forced",
    }
    return Detection(key=key, raised=True, at_ms=at_ms, **(fields | kw))


@pytest.fixture
def store(event_db_url: str) -> Iterator[EventStore]:
    with EventStore(event_db_url) as s:
        s.migrate()
        yield s


@pytest.fixture
def manager(store: EventStore) -> EventManager:
    return EventManager(store, workers=WORKERS, sinks=SINKS)


def escalator(manager: EventManager, policy: EscalationPolicy = POLICY, **kw: Any) -> Escalator:
    return Escalator(manager, policy, clock_ms=lambda: T0, **kw)


def raised(manager: EventManager, key: str = "door-1", at_ms: int = T0, **kw: Any) -> str:
    changed = manager.handle(raise_(key, at_ms, **kw), at_ms)
    return changed[0].id


def steps(store: EventStore, event_id: str) -> list[tuple[Action, int, str]]:
    """(action, at, first line of the note) of the escalation steps in the trail."""
    return [
        (r.action, r.at_ms, r.note.splitlines()[0])
        for r in store.audit_trail(event_id)
        if r.action in (Action.NOTIFY, Action.ESCALATE)
    ]


# ---------------------------------------------------------------------- the steps


def test_reminds_the_assignee_then_escalates_to_the_supervisor(
    manager: EventManager, store: EventStore
) -> None:
    saved: list[int] = []
    esc = escalator(manager, on_saved=lambda: saved.append(1))
    event_id = raised(manager)
    assert esc.round(T0).sent == ()
    assert esc.round(T0 + 2 * MIN - 1).sent == ()  # critical: 2 min
    done = esc.round(T0 + 2 * MIN)
    assert [(s.action, s.event.id) for s in done.sent] == [(Action.NOTIFY, event_id)]
    assert saved == [1]
    trail = store.audit_trail(event_id)
    notify = trail[-1]
    assert (notify.action, notify.actor, notify.at_ms) == (Action.NOTIFY, SYSTEM, T0 + 2 * MIN)
    assert (notify.from_state, notify.to_state) == (
        State.ACTIVE_UNACKNOWLEDGED,
        State.ACTIVE_UNACKNOWLEDGED,
    )
    assert notify.note.splitlines()[0] == (
        "reminder to grid worker w-li: critical event unacknowledged for 2 min"
    )
    assert parse_note(notify.note) == Notice("worker:w-li", (LI, "tel:+8613800000001"))
    # The facts are unchanged; only the version (and the audit trail) moved on.
    event = store.get(event_id)
    assert event is not None
    assert (event.state, event.acknowledged, event.assignee) == (
        State.ACTIVE_UNACKNOWLEDGED,
        False,
        "w-li",
    )

    # A further 3 min after the reminder: the site's supervisor.
    assert esc.round(T0 + 5 * MIN - 1).sent == ()
    done = esc.round(T0 + 5 * MIN)
    assert [s.action for s in done.sent] == [Action.ESCALATE]
    escalate = store.audit_trail(event_id)[-1]
    assert escalate.note.splitlines()[0] == (
        "escalated to the supervisor of s1: critical event unacknowledged for 5 min, "
        "reminder sent 3 min ago"
    )
    assert parse_note(escalate.note) == Notice("supervisor:s1", (CHIEF,))
    # Nothing more, ever.
    for later in (6 * MIN, 60 * MIN, 24 * 60 * MIN):
        assert esc.round(T0 + later).sent == ()
    assert [a for a, _, _ in steps(store, event_id)] == [Action.NOTIFY, Action.ESCALATE]
    assert (esc.stats.notified, esc.stats.escalated) == (1, 1)


def test_every_step_goes_to_every_sink_through_the_outbox(
    manager: EventManager, store: EventStore
) -> None:
    esc = escalator(manager)
    raised(manager)
    esc.round(T0)
    esc.round(T0 + 2 * MIN)
    esc.round(T0 + 5 * MIN)
    for sink in SINKS:
        items = store.outbox_due(sink, 2**62)
        assert [i.audit.action for i in items] == [
            Action.RAISE,
            Action.ASSIGN,
            Action.NOTIFY,
            Action.ESCALATE,
        ]
    # The renderers every sink and the API use take the new actions.
    notify = store.outbox_due("mqtt", 2**62)[2]
    doc = event_json(notify.event, notify.audit)
    assert doc["transition"] == {
        "action": "notify",
        "actor": SYSTEM,
        "at": "2025-02-19T21:22:00.000Z",
        "from_state": "active_unacknowledged",
        "to_state": "active_unacknowledged",
        "note": notify.audit.note,
    }
    assert ",action=notify," in event_point(notify.event, notify.audit)


def test_per_severity_delays_and_low_never(manager: EventManager, store: EventStore) -> None:
    esc = escalator(manager)
    high = raised(manager, "d-high", severity=Severity.HIGH)
    medium = raised(manager, "d-medium", severity=Severity.MEDIUM)
    low = raised(manager, "d-low", severity=Severity.LOW)
    esc.round(T0)
    assert esc.round(T0 + 5 * MIN - 1).sent == ()
    assert [s.event.id for s in esc.round(T0 + 5 * MIN).sent] == [high]
    assert [s.event.id for s in esc.round(T0 + 15 * MIN).sent] == [high, medium]  # 5 + 10
    assert [s.event.id for s in esc.round(T0 + 45 * MIN).sent] == [medium]  # 15 + 30
    assert esc.round(T0 + 7 * 24 * 60 * MIN).sent == ()
    assert steps(store, low) == []


def test_an_unassigned_event_reminds_the_desk(manager: EventManager, store: EventStore) -> None:
    policy = EscalationPolicy(contacts={"*": ("mailto:desk@example.org",)})
    esc = escalator(manager, policy)
    event_id = raised(manager, cell="c9")  # no grid worker there
    esc.round(T0)
    esc.round(T0 + 2 * MIN)
    (notify,) = [r for r in store.audit_trail(event_id) if r.action is Action.NOTIFY]
    assert parse_note(notify.note) == Notice("desk:s1", ("mailto:desk@example.org",))
    esc.round(T0 + 5 * MIN)
    (escalate,) = [r for r in store.audit_trail(event_id) if r.action is Action.ESCALATE]
    # No supervisor configured: still recorded (webhooks and MQTT get it), and said so.
    assert parse_note(escalate.note) == Notice("supervisor:s1", ())
    assert "no contact configured" in escalate.note


# ---------------------------------------------------------------------- what stops it


def test_no_escalation_once_acknowledged(manager: EventManager, store: EventStore) -> None:
    esc = escalator(manager)
    early = raised(manager, "d-early")
    late = raised(manager, "d-late")
    esc.round(T0)
    manager.act(early, Action.ACKNOWLEDGE, actor="op", at_ms=T0 + MIN)
    assert [s.event.id for s in esc.round(T0 + 2 * MIN).sent] == [late]
    # Acknowledged after the reminder: the supervisor is never called in.
    manager.act(late, Action.ACKNOWLEDGE, actor="op", at_ms=T0 + 3 * MIN)
    for at in (5 * MIN, 30 * MIN, 600 * MIN):
        assert esc.round(T0 + at).sent == ()
    assert steps(store, early) == []
    assert [a for a, _, _ in steps(store, late)] == [Action.NOTIFY]


def test_shelved_suppressed_out_of_service_and_closed_events_are_left_alone(
    manager: EventManager, store: EventStore
) -> None:
    esc = escalator(manager)
    shelved = raised(manager, "d-shelved")
    out = raised(manager, "d-out")
    suppressed = raised(manager, "d-suppressed")
    closed = raised(manager, "d-closed")
    manager.act(shelved, Action.SHELVE, actor="op", at_ms=T0 + S, until_ms=T0 + 60 * MIN)
    manager.act(out, Action.REMOVE_FROM_SERVICE, actor="op", at_ms=T0 + S)
    event = store.get(suppressed)
    assert event is not None
    store.save([transition(event, Action.SUPPRESS, actor=SYSTEM, at_ms=T0 + S)])
    manager.handle(Detection("door_forced", "d-closed", False, T0 + S, "s1"), T0 + S)
    manager.act(closed, Action.CLOSE, actor="op", at_ms=T0 + 2 * S, note="checked")
    esc.round(T0)
    for at in (2 * MIN, 5 * MIN, 50 * MIN):
        assert esc.round(T0 + at).sent == ()
    # The shelve runs out at 60 min: annunciated again, a new episode from there.
    manager.tick(T0 + 60 * MIN)
    assert esc.round(T0 + 60 * MIN + S).sent == ()
    assert esc.round(T0 + 62 * MIN - 1).sent == ()
    assert [s.event.id for s in esc.round(T0 + 62 * MIN).sent] == [shelved]
    for event_id in (out, suppressed, closed):
        assert steps(store, event_id) == []


def test_a_returned_unacknowledged_event_escalates_and_a_repeat_after_clearing_starts_over(
    manager: EventManager, store: EventStore
) -> None:
    esc = escalator(manager)
    event_id = raised(manager)
    manager.handle(Detection("door_forced", "door-1", False, T0 + 30 * S, "s1"), T0 + 30 * S)
    esc.round(T0)
    assert [s.action for s in esc.round(T0 + 2 * MIN).sent] == [Action.NOTIFY]
    manager.act(event_id, Action.ACKNOWLEDGE, actor="op", at_ms=T0 + 3 * MIN)  # cleared
    # The condition comes back: annunciated again, so reminded again (a new episode).
    manager.handle(raise_(at_ms=T0 + 10 * MIN), T0 + 10 * MIN)
    esc.round(T0 + 10 * MIN)
    assert esc.round(T0 + 12 * MIN - 1).sent == ()
    assert [s.action for s in esc.round(T0 + 12 * MIN).sent] == [Action.NOTIFY]
    assert [(a, at) for a, at, _ in steps(store, event_id)] == [
        (Action.NOTIFY, T0 + 2 * MIN),
        (Action.NOTIFY, T0 + 12 * MIN),
    ]


def test_a_flood_escalates_its_parent_not_its_suppressed_children(store: EventStore) -> None:
    manager = EventManager(store, workers=WORKERS, sinks=SINKS, flood_limit=2)
    esc = escalator(manager)
    ids = [raised(manager, f"d{i}", T0 + i * S, severity=Severity.HIGH) for i in range(4)]
    esc.round(T0)
    sent = esc.round(T0 + 6 * MIN).sent
    assert len(sent) == 1
    (step,) = sent
    assert step.event.rule_id == "flood_control"
    assert step.notice.addressee == "desk:s1"  # a storm parent has no grid worker
    for event_id in ids:
        assert steps(store, event_id) == []


# ---------------------------------------------------------------------- dedup, restarts


def test_a_restarted_escalator_never_repeats_a_step(
    manager: EventManager, store: EventStore
) -> None:
    first = escalator(manager)
    event_id = raised(manager)
    first.round(T0)
    assert [s.action for s in first.round(T0 + 2 * MIN).sent] == [Action.NOTIFY]
    # The hub restarts: a new manager and escalator, nothing kept in memory.
    again = EventManager(store, workers=WORKERS, sinks=SINKS)
    second = escalator(again)
    assert second.round(T0 + 2 * MIN).sent == ()
    assert second.round(T0 + 4 * MIN).sent == ()
    # The escalation counts from the reminder the trail records, not from the restart.
    assert [s.action for s in second.round(T0 + 5 * MIN).sent] == [Action.ESCALATE]
    third = escalator(EventManager(store, workers=WORKERS, sinks=SINKS))
    for at in (5 * MIN, 6 * MIN, 600 * MIN):
        assert third.round(T0 + at).sent == ()
    assert [a for a, _, _ in steps(store, event_id)] == [Action.NOTIFY, Action.ESCALATE]
    assert store.outbox_pending() == {sink: 4 for sink in SINKS}


def test_two_escalators_racing_record_a_step_once(manager: EventManager, store: EventStore) -> None:
    event_id = raised(manager)
    a, b = escalator(manager), escalator(EventManager(store, workers=WORKERS, sinks=SINKS))
    a.round(T0)
    b.round(T0)
    event = store.get(event_id)
    assert event is not None
    trail = store.audit_trail(event_id)
    # Both decide on the same read ...
    step_a = next_step(event, trail, now_ms=T0 + 2 * MIN, policy=POLICY, seen_ms=T0)
    step_b = next_step(event, trail, now_ms=T0 + 2 * MIN, policy=POLICY, seen_ms=T0)
    assert step_a is not None and step_b is not None
    manager.record_escalation(
        event_id, Action.NOTIFY, at_ms=T0 + 2 * MIN, note="a", expected_version=event.version
    )
    # ... the second write finds the event changed, and a fresh round finds it done.
    with pytest.raises(StaleEvent):
        b.manager.record_escalation(
            event_id, Action.NOTIFY, at_ms=T0 + 2 * MIN, note="b", expected_version=event.version
        )
    assert b.round(T0 + 2 * MIN).sent == ()
    assert [n for _, _, n in steps(store, event_id)] == ["a"]


def test_a_step_on_an_event_acknowledged_meanwhile_is_refused(
    manager: EventManager, store: EventStore
) -> None:
    event_id = raised(manager)
    acked = manager.act(event_id, Action.ACKNOWLEDGE, actor="op", at_ms=T0 + MIN)
    with pytest.raises(ForbiddenTransition, match="already acknowledged"):
        manager.record_escalation(
            event_id, Action.NOTIFY, at_ms=T0 + 2 * MIN, note="x", expected_version=acked.version
        )
    with pytest.raises(ValueError, match="not an escalation step"):
        manager.record_escalation(
            event_id, Action.COMMENT, at_ms=T0 + 2 * MIN, note="x", expected_version=acked.version
        )


def test_a_backlog_counts_from_first_sight_and_a_restart_keeps_it(
    manager: EventManager, store: EventStore
) -> None:
    now = T0 + 60 * MIN
    # Raised an hour ago on the event clock (a backlog, a replay): operators see it now.
    event_id = raised(manager, at_ms=T0)
    esc = escalator(manager)
    assert esc.round(now).sent == ()
    assert json.loads(store.get_snapshot(SNAPSHOT) or b"{}") == {event_id: [T0, now]}
    # The clock starts 30 s before first sight: reminded 90 s after it, not at once.
    restarted = escalator(EventManager(store, workers=WORKERS, sinks=SINKS))
    assert restarted.round(now + 89 * S).sent == ()
    assert [s.action for s in restarted.round(now + 90 * S).sent] == [Action.NOTIFY]
    # Acknowledged: its first sight is forgotten.
    manager.act(event_id, Action.ACKNOWLEDGE, actor="op", at_ms=now + 100 * S)
    restarted.round(now + 101 * S)
    assert json.loads(store.get_snapshot(SNAPSHOT) or b"{}") == {}


# ---------------------------------------------------------------------- rate limit


def test_the_rate_limit_holds_steps_and_sends_them_as_the_window_frees(
    manager: EventManager, store: EventStore
) -> None:
    policy = EscalationPolicy(
        contacts=POLICY.contacts, supervisors=POLICY.supervisors, rate_limit=2
    )
    esc = escalator(manager, policy)
    ids = [raised(manager, f"d{i}", T0 + i) for i in range(5)]  # all for w-li
    other = raised(manager, "d-other", T0 + 9, cell="c2")  # w-wang has a budget of his own
    esc.round(T0 + 10)  # first sight: due in the order raised
    first = esc.round(T0 + 2 * MIN + 10)
    assert [s.event.id for s in first.sent] == [ids[0], ids[1], other]
    assert [s.event.id for s in first.held] == ids[2:]
    assert esc.round(T0 + 2 * MIN + 30 * S).sent == ()  # the window is still full
    assert esc.stats.held == 3
    # A restart does not reset the budget: it is read back from the audit trail.
    esc = escalator(EventManager(store, workers=WORKERS, sinks=SINKS), policy)
    assert esc.round(T0 + 2 * MIN + 40 * S).sent == ()
    second = esc.round(T0 + 3 * MIN + 11)
    assert [s.event.id for s in second.sent] == ids[2:4]
    third = esc.round(T0 + 4 * MIN + 11)
    assert [s.event.id for s in third.sent] == ids[4:]
    (note,) = [n for _, _, n in steps(store, ids[4])]
    assert "rate limit" in note and "to worker:w-li" in note
    # Nothing was dropped: every event got its reminder exactly once.
    for event_id in (*ids, other):
        assert [a for a, _, _ in steps(store, event_id)] == [Action.NOTIFY]


def test_rate_limit_sends_the_most_severe_first() -> None:
    policy = EscalationPolicy(rate_limit=1)
    notice = Notice("worker:w-li")

    def step(event_id: str, severity: Severity, due: int) -> Step:
        event, _ = new_event(event_id, raise_(event_id, severity=severity), T0)
        return Step(event, Action.NOTIFY, due, T0, notice)

    early_high = step("a", Severity.HIGH, T0)
    late_critical = step("b", Severity.CRITICAL, T0 + MIN)
    send, hold = rate_limit(
        [early_high, late_critical], {"worker:w-li": []}, now_ms=T0 + 2 * MIN, policy=policy
    )
    assert (send, hold) == ([late_critical], [early_high])
    # Sent within the window counts; older does not.
    send, hold = rate_limit(
        [early_high], {"worker:w-li": [T0 + MIN + 1]}, now_ms=T0 + 2 * MIN, policy=policy
    )
    assert send == []
    send, _ = rate_limit([early_high], {"worker:w-li": [T0]}, now_ms=T0 + 2 * MIN, policy=policy)
    assert send == [early_high]


# ---------------------------------------------------------------------- pure parts


def test_episode_starts_where_the_event_became_unacknowledged() -> None:
    def rec(action: Action, at: int, before: State | None, after: State) -> AuditRecord:
        return AuditRecord("e1", at, SYSTEM, action, before, after)

    au, ru, cl = State.ACTIVE_UNACKNOWLEDGED, State.RETURNED_UNACKNOWLEDGED, State.CLEARED
    trail = [
        rec(Action.RAISE, T0, None, au),
        rec(Action.NOTIFY, T0 + 2 * MIN, au, au),
        rec(Action.RETURN, T0 + 3 * MIN, au, ru),  # still the same episode
    ]
    current = episode(trail)
    assert current is not None
    assert (current.start_ms, current.notified_ms) == (T0, T0 + 2 * MIN)
    acked = [*trail, rec(Action.ACKNOWLEDGE, T0 + 4 * MIN, ru, cl)]
    assert episode(acked) is None
    again = [*acked, rec(Action.REPEAT, T0 + 9 * MIN, cl, au)]
    current = episode(again)
    assert current is not None
    assert (current.start_ms, current.notified_ms, current.escalated_ms) == (
        T0 + 9 * MIN,
        None,
        None,
    )


def test_notes_carry_the_addressee_and_contacts() -> None:
    notice = Notice("supervisor:s1", (CHIEF, "tel:+861", "mailto:two@example.org"))
    note = format_note("escalated to the supervisor of s1", notice)
    assert note == (
        "escalated to the supervisor of s1\n"
        "to: supervisor:s1 mailto:chief@example.org tel:+861 mailto:two@example.org"
    )
    assert parse_note(note) == notice
    assert email_addresses(notice) == ("chief@example.org", "two@example.org")
    assert parse_note("an operator's comment") is None


@pytest.mark.parametrize(
    "bad",
    [
        "chief@example.org",  # no scheme
        "mailto:a@b\r\nBcc: everyone@example.org",  # header injection
        "mailto:a b@example.org",
        "mailto:a@b,c@d",
        "mailto:nobody",
        "tel:",
    ],
)
def test_contacts_must_be_clean_uris(bad: str) -> None:
    with pytest.raises(ValueError, match="contact"):
        check_contact(bad)
    with pytest.raises(ValueError):
        EscalationPolicy(supervisors={"s1": (bad,)})


def test_delays_of_a_severity_can_be_turned_off() -> None:
    policy = EscalationPolicy(delays={Severity.CRITICAL: Delays(MIN, None)})
    assert policy.escalated_severities == {Severity.CRITICAL}
    assert policy.delays_for(Severity.HIGH) == Delays(None, None)


# ---------------------------------------------------------------------- the loop, settings


async def test_the_loop_runs_rounds_on_its_clock(manager: EventManager, store: EventStore) -> None:
    event_id = raised(manager)
    woken = asyncio.Event()
    now = [T0]
    esc = Escalator(manager, POLICY, clock_ms=lambda: now[0], interval_s=0.01, on_saved=woken.set)
    task = asyncio.create_task(esc.run())
    try:
        await asyncio.sleep(0.05)
        now[0] = T0 + 2 * MIN
        await asyncio.wait_for(woken.wait(), 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [a for a, _, _ in steps(store, event_id)] == [Action.NOTIFY]


async def test_settings_build_the_policy_and_the_events_side_wires_it(tmp_path: Path) -> None:
    from hub.settings import (
        ApiSettings,
        EmailSettings,
        EscalationSettings,
        EventsSettings,
        HubSettings,
        Settings,
        SpoolSettings,
    )
    from hub.wiring import build_events, build_writer, escalation_policy

    cfg = EscalationSettings(
        notify_high_s=60,
        escalate_high_s=0,
        contacts={"w-li": LI},  # one contact, or a list
        supervisors={"*": [CHIEF, "tel:+861"]},
        rate_limit=3,
        rate_window_s=120,
    )
    policy = escalation_policy(cfg)
    assert policy.delays_for(Severity.CRITICAL) == Delays(120_000, 180_000)
    assert policy.delays_for(Severity.HIGH) == Delays(60_000, None)
    assert policy.delays_for(Severity.LOW) == Delays(None, None)
    assert policy.contacts == {"w-li": (LI,)}
    assert policy.supervisors == {"*": (CHIEF, "tel:+861")}
    assert (policy.rate_limit, policy.rate_window_ms) == (3, 120_000)
    # "auto": on only when someone is named.
    assert cfg.active and not EscalationSettings().active
    assert EscalationSettings(enabled=True).active
    assert not EscalationSettings(enabled=False, supervisors={"s1": [CHIEF]}).active
    with pytest.raises(ValueError, match="login off loopback"):
        EmailSettings(host="smtp.example.org", username="u", security="none")

    def settings(name: str, **sections: Any) -> Settings:
        return Settings(
            hub=HubSettings(data_dir=tmp_path / name),
            spool=SpoolSettings(directory=tmp_path / f"spool-{name}"),
            events=EventsSettings(publish_mqtt=False, write_influx=False),
            api=ApiSettings(enabled=False),
            **sections,
        )

    on = settings("on", escalation=cfg, email=EmailSettings(enabled=True, security="none"))
    writer = build_writer(on)
    try:
        side = build_events(on, None, writer)
        try:
            assert side.escalator is not None
            assert side.escalator.policy == policy
            assert side.escalator.interval_s == cfg.interval_s
            assert "email" in side.dispatcher.stats()
            assert "email" in side.service.manager.sinks
        finally:
            side.store.close()
        side = build_events(settings("off"), None, writer)
        try:
            assert side.escalator is None
            assert "email" not in side.dispatcher.stats()
        finally:
            side.store.close()
    finally:
        await writer.aclose()
