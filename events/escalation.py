"""Escalation: an event nobody acknowledges reminds its assignee, then calls in the site's
supervisor, every step an audit record (docs/escalation.md).

Clock: operators' response time, so the wall clock (unlike the rules' event time). The
decisions are pure functions of the event, its audit trail, `now_ms` and the policy
(`next_step`, `rate_limit`); `Escalator.round(now_ms)` applies them to the store, and
`Escalator.run` calls it every `interval_s` with the real clock. Tests drive `round`
with a simulated one.

What is escalated: open events in an unacknowledged, annunciated state (active or
returned unacknowledged, mode normal). Acknowledged, closed, shelved, suppressed (a
flood's children: the storm parent stands for them) and out-of-service events are not.

An *episode* starts when the event enters an unacknowledged state from anywhere else:
its raise, a repeat after it was acknowledged and cleared, the end of a shelve, a
suppression or an out-of-service spell. Within an episode each step happens at most
once, in order:

1. NOTIFY, `notify_after` (per severity) after the episode's start: a reminder to the
   assignee (`worker:<id>`; `desk:<site>` when the event has none);
2. ESCALATE, `escalate_after` (per severity) after that reminder: the site's
   supervisor (`supervisor:<site>`) is called in.

"Already done" is read from the audit trail, never from memory: a restarted escalator
(or a second one racing it: every step is a version-checked write) never sends a step
twice. The step's note ends with a `to:` line naming the addressee and its contact URIs
(`format_note` / `parse_note`), which is what the e-mail sink reads; webhook and MQTT
consumers get the same record.

Start of the clock: the episode's audit time is on the rules' event clock, which can lie
far behind the wall clock (a backlog after an outage, a replay, the demo's replayed
hour). An episode counts from when operators could first see it: its audit time, but no
earlier than `SIGHT_SLACK_MS` before the escalator first saw it (and no later than
that first sight). First sights are kept in the store's snapshot `escalation.seen`, so a
restart does not start the clocks again.

Rate limit: at most `rate_limit` steps per addressee in any `rate_window_ms`. Steps
beyond it are held (not recorded, so not lost) and go out as the window frees, the most
severe and longest-due first; the note of a step that was held says for how long.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import sqlalchemy as sa

from events.escalation_notice import (
    STEPS,
    Notice,
    check_contact,
    format_note,
    parse_note,
)
from events.manager import EventManager
from events.migrations import audit
from events.model import (
    Action,
    AuditRecord,
    ForbiddenTransition,
    SecurityEvent,
    Severity,
    State,
)
from events.store import EventFilter, StaleEvent, UnknownEvent

__all__ = [
    "DEFAULT_DELAYS",
    "SIGHT_SLACK_MS",
    "SNAPSHOT",
    "UNACKNOWLEDGED",
    "Delays",
    "Episode",
    "EscalationPolicy",
    "EscalationRound",
    "Escalator",
    "Step",
    "episode",
    "next_step",
    "rate_limit",
]

log = logging.getLogger(__name__)

UNACKNOWLEDGED: Final = frozenset({State.ACTIVE_UNACKNOWLEDGED, State.RETURNED_UNACKNOWLEDGED})
"""The states escalation acts on: annunciated (mode normal) and not acknowledged."""
SIGHT_SLACK_MS: Final = 30_000
"""An episode's clock starts no earlier than this before the escalator first saw it: the
transit and round delays of a live event, without counting a backlog's age as response
time."""
SNAPSHOT: Final = "escalation.seen"
_PAGE: Final = 500


@dataclass(frozen=True, slots=True)
class Delays:
    """One severity's step delays in ms; None: that step never happens."""

    notify_ms: int | None
    """From the episode's start to the reminder (None: neither step happens)."""
    escalate_ms: int | None
    """From the reminder to the supervisor (None: reminders only)."""


DEFAULT_DELAYS: Final[Mapping[Severity, Delays]] = {
    Severity.CRITICAL: Delays(2 * 60_000, 3 * 60_000),
    Severity.HIGH: Delays(5 * 60_000, 10 * 60_000),
    Severity.MEDIUM: Delays(15 * 60_000, 30 * 60_000),
    Severity.LOW: Delays(None, None),
}


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """When steps happen, whom they reach, and how many an addressee gets."""

    delays: Mapping[Severity, Delays] = field(default_factory=lambda: dict(DEFAULT_DELAYS))
    contacts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Assignee (worker id) -> contact URIs; `*` for every assignee not listed (and for
    the desk of an unassigned event)."""
    supervisors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Site -> the supervisor's contact URIs; `*` for every site not listed."""
    rate_limit: int = 5
    """Steps per addressee within `rate_window_ms`; the rest are held."""
    rate_window_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.rate_limit < 1 or self.rate_window_ms < 1:
            raise ValueError("rate_limit and rate_window_ms must be positive")
        for contacts in (*self.contacts.values(), *self.supervisors.values()):
            for contact in contacts:
                check_contact(contact)

    def delays_for(self, severity: Severity) -> Delays:
        return self.delays.get(severity, Delays(None, None))

    @property
    def escalated_severities(self) -> frozenset[Severity]:
        return frozenset(s for s in Severity if self.delays_for(s).notify_ms is not None)

    def notice(self, event: SecurityEvent, action: Action) -> Notice:
        """Whom `action` on `event` reaches."""
        if action is Action.NOTIFY:
            if event.assignee:
                contacts = self.contacts.get(event.assignee, self.contacts.get("*", ()))
                return Notice(f"worker:{quote(event.assignee, safe='')}", tuple(contacts))
            return Notice(f"desk:{quote(event.site, safe='')}", tuple(self.contacts.get("*", ())))
        if action is Action.ESCALATE:
            contacts = self.supervisors.get(event.site, self.supervisors.get("*", ()))
            return Notice(f"supervisor:{quote(event.site, safe='')}", tuple(contacts))
        raise ValueError(f"{action.value} is not an escalation step")


def _duration(ms: int) -> str:
    seconds = max(0, round(ms / 1000))
    if seconds < 120:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


# ---------------------------------------------------------------------- decisions (pure)


@dataclass(frozen=True, slots=True)
class Episode:
    """The current unacknowledged spell of an event, from its audit trail."""

    start_ms: int
    """Audit time of the record that made the event unacknowledged (event clock)."""
    notified_ms: int | None = None
    """When this episode's NOTIFY was recorded (wall clock), if it was."""
    escalated_ms: int | None = None


def episode(trail: Sequence[AuditRecord]) -> Episode | None:
    """The episode the trail ends in; None if it does not end unacknowledged."""
    if not trail or trail[-1].to_state not in UNACKNOWLEDGED:
        return None
    start = 0
    for i, record in enumerate(trail):
        if record.to_state in UNACKNOWLEDGED and record.from_state not in UNACKNOWLEDGED:
            start = i
    notified = escalated = None
    for record in trail[start + 1 :]:
        if record.action is Action.NOTIFY and notified is None:
            notified = record.at_ms
        elif record.action is Action.ESCALATE and escalated is None:
            escalated = record.at_ms
    return Episode(trail[start].at_ms, notified, escalated)


def clock_start(episode_start_ms: int, seen_ms: int | None) -> int:
    """When an episode's response time starts counting (module doc, "Start of the clock")."""
    if seen_ms is None:
        return episode_start_ms
    return min(max(episode_start_ms, seen_ms - SIGHT_SLACK_MS), seen_ms)


@dataclass(frozen=True, slots=True)
class Step:
    """A step due on an event, decided on `event` as read (its version is checked on write)."""

    event: SecurityEvent
    action: Action
    due_ms: int
    since_ms: int
    """When the episode's clock started."""
    notice: Notice
    notified_ms: int | None = None
    """For ESCALATE: when the assignee was reminded."""

    @property
    def key(self) -> tuple[str, int, Action]:
        """Identifies the step across rounds: event, episode, action."""
        return (self.event.id, self.since_ms, self.action)

    def note(self, now_ms: int, *, held_ms: int = 0, policy: EscalationPolicy | None = None) -> str:
        """The audit note recorded at `now_ms` (`held_ms`: how long the rate limit held it)."""
        severity = self.event.severity.value
        waited = _duration(now_ms - self.since_ms)
        if self.action is Action.NOTIFY:
            text = f"reminder to {self.notice.who}: {severity} event unacknowledged for {waited}"
        else:
            text = f"escalated to {self.notice.who}: {severity} event unacknowledged for {waited}"
            if self.notified_ms is not None:
                text += f", reminder sent {_duration(now_ms - self.notified_ms)} ago"
        if not self.notice.contacts:
            text += " (no contact configured: webhook and MQTT only)"
        if held_ms > 0 and policy is not None:
            window = _duration(policy.rate_window_ms)
            text += (
                f" (held {_duration(held_ms)} by the rate limit: {policy.rate_limit} per "
                f"{window} to {self.notice.addressee})"
            )
        return format_note(text, self.notice)


def next_step(
    event: SecurityEvent,
    trail: Sequence[AuditRecord],
    *,
    now_ms: int,
    policy: EscalationPolicy,
    seen_ms: int | None = None,
) -> Step | None:
    """The step due on `event` at `now_ms`, or None. Pure: the trail says what was done,
    `seen_ms` is when the escalator first saw this episode (None: trust the trail)."""
    if event.closed or event.acknowledged or event.state not in UNACKNOWLEDGED:
        return None
    current = episode(trail)
    if current is None:
        return None
    delays = policy.delays_for(event.severity)
    if delays.notify_ms is None:
        return None
    since = clock_start(current.start_ms, seen_ms)
    if current.notified_ms is None:
        due = since + delays.notify_ms
        if due > now_ms:
            return None
        return Step(event, Action.NOTIFY, due, since, policy.notice(event, Action.NOTIFY))
    if delays.escalate_ms is None or current.escalated_ms is not None:
        return None
    due = current.notified_ms + delays.escalate_ms
    if due > now_ms:
        return None
    notice = policy.notice(event, Action.ESCALATE)
    return Step(event, Action.ESCALATE, due, since, notice, notified_ms=current.notified_ms)


def rate_limit(
    steps: Iterable[Step],
    sent: Mapping[str, Sequence[int]],
    *,
    now_ms: int,
    policy: EscalationPolicy,
) -> tuple[list[Step], list[Step]]:
    """Split due steps into (send now, hold): at most `policy.rate_limit` per addressee
    in the window ending at `now_ms`, counting `sent` (addressee -> times of steps
    already recorded). Most severe first, then the longest due."""
    since = now_ms - policy.rate_window_ms
    used = {who: sum(1 for t in times if since < t <= now_ms) for who, times in sent.items()}
    send: list[Step] = []
    hold: list[Step] = []
    for step in sorted(steps, key=lambda s: (s.event.severity.rank, s.due_ms, s.event.id)):
        who = step.notice.addressee
        if used.get(who, 0) < policy.rate_limit:
            used[who] = used.get(who, 0) + 1
            send.append(step)
        else:
            hold.append(step)
    return send, hold


# ---------------------------------------------------------------------- the loop


@dataclass(frozen=True, slots=True)
class EscalationRound:
    """What one round did."""

    now_ms: int
    sent: tuple[Step, ...] = ()
    """Steps recorded (and so queued for every sink)."""
    held: tuple[Step, ...] = ()
    """Steps due but held by the rate limit."""


@dataclass(slots=True)
class EscalationStats:
    rounds: int = 0
    notified: int = 0
    escalated: int = 0
    held: int = 0
    """Held in the last round."""
    lost_races: int = 0
    """Steps not recorded because the event changed meanwhile (decided again next round)."""


class Escalator:
    """Applies the policy to the store: reads the unacknowledged events and their trails,
    records due steps through `EventManager.record_escalation` (the manager's sinks
    deliver them), and keeps first sights in a store snapshot."""

    def __init__(
        self,
        manager: EventManager,
        policy: EscalationPolicy,
        *,
        clock_ms: Callable[[], int],
        interval_s: float = 5.0,
        on_saved: Callable[[], None] | None = None,
    ) -> None:
        """`on_saved`: called after a round recorded steps (the outbox dispatcher's wake)."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.manager = manager
        self.store = manager.store
        self.policy = policy
        self.interval_s = interval_s
        self.stats = EscalationStats()
        self._clock_ms = clock_ms
        self._on_saved = on_saved
        self._restored = False
        self._seen: dict[str, tuple[int, int]] = {}
        """Event id -> (episode start, first seen), for the episodes now open."""
        self._sent: defaultdict[str, deque[int]] = defaultdict(deque)
        """Addressee -> times of recorded steps within the rate window."""
        self._held: dict[tuple[str, int, Action], int] = {}
        """Step key -> when it was first held."""
        self._holding: set[str] = set()
        """Addressees with steps held in the last round."""

    async def run(self) -> None:
        """A round every `interval_s` of the wall clock, until cancelled."""
        while True:
            await asyncio.to_thread(self.round, self._clock_ms())
            await asyncio.sleep(self.interval_s)

    def round(self, now_ms: int) -> EscalationRound:
        """Record every step due at `now_ms` that the rate limit lets through."""
        if not self._restored:
            self._restore(now_ms)
        candidates = self._candidates()
        trails = self._trails([e.id for e in candidates])
        seen_before = dict(self._seen)
        seen: dict[str, tuple[int, int]] = {}
        due: list[Step] = []
        for event in candidates:
            trail = trails.get(event.id, [])
            current = episode(trail)
            if current is None:
                continue
            start, first = self._seen.get(event.id, (current.start_ms, now_ms))
            if start != current.start_ms:  # a new episode since
                start, first = current.start_ms, now_ms
            seen[event.id] = (start, first)
            step = next_step(event, trail, now_ms=now_ms, policy=self.policy, seen_ms=first)
            if step is not None:
                due.append(step)
        self._seen = seen
        if seen != seen_before:
            self._save_seen(now_ms)
        self._forget_sent(now_ms)
        send, hold = rate_limit(due, self._sent, now_ms=now_ms, policy=self.policy)
        recorded = [step for step in send if self._record(step, now_ms)]
        held_keys = {step.key for step in hold}
        holding: dict[str, int] = {}
        for step in hold:
            self._held.setdefault(step.key, now_ms)
            holding[step.notice.addressee] = holding.get(step.notice.addressee, 0) + 1
        for who in sorted(holding.keys() - self._holding):  # once per spell, not per round
            log.warning(
                "escalation: rate limit reached for %s (%d per %s): %d step(s) held",
                who,
                self.policy.rate_limit,
                _duration(self.policy.rate_window_ms),
                holding[who],
            )
        self._holding = set(holding)
        self._held = {k: v for k, v in self._held.items() if k in held_keys}
        self.stats.rounds += 1
        self.stats.held = len(hold)
        if recorded and self._on_saved is not None:
            self._on_saved()
        return EscalationRound(now_ms, tuple(recorded), tuple(hold))

    # ------------------------------------------------------------------ internals

    def _record(self, step: Step, now_ms: int) -> bool:
        held_since = self._held.pop(step.key, None)
        held_ms = 0 if held_since is None else now_ms - held_since
        note = step.note(now_ms, held_ms=held_ms, policy=self.policy)
        try:
            self.manager.record_escalation(
                step.event.id,
                step.action,
                at_ms=now_ms,
                note=note,
                expected_version=step.event.version,
            )
        except (StaleEvent, ForbiddenTransition, UnknownEvent) as exc:
            # Changed since it was read (acknowledged, shelved, another step...): the
            # next round decides again on the fresh trail.
            self.stats.lost_races += 1
            log.debug(
                "escalation: %s on %s not recorded: %s", step.action.value, step.event.id, exc
            )
            return False
        self._sent[step.notice.addressee].append(now_ms)
        if step.action is Action.NOTIFY:
            self.stats.notified += 1
        else:
            self.stats.escalated += 1
        log.info(
            "escalation: %s %s event %s (%s): %s",
            step.action.value,
            step.event.severity.value,
            step.event.id,
            step.event.title or step.event.rule_id,
            note.splitlines()[0],
        )
        return True

    def _candidates(self) -> list[SecurityEvent]:
        severities = self.policy.escalated_severities
        if not severities:
            return []
        where = EventFilter(states=UNACKNOWLEDGED, severity=severities)
        found: list[SecurityEvent] = []
        while page := self.store.list_events(where, limit=_PAGE, offset=len(found)):
            found += page
            if len(page) < _PAGE:
                break
        return found

    def _trails(self, ids: Sequence[str]) -> dict[str, list[AuditRecord]]:
        """The audit trails of these events, in order (one query per `_PAGE` events)."""
        trails: dict[str, list[AuditRecord]] = {}
        with self.store.reading() as conn:
            for i in range(0, len(ids), _PAGE):
                query = (
                    audit.select()
                    .where(audit.c.event_id.in_(list(ids[i : i + _PAGE])))
                    .order_by(audit.c.event_id, audit.c.seq)
                )
                for row in conn.execute(query).mappings():
                    record = _audit_record(row)
                    trails.setdefault(record.event_id, []).append(record)
        return trails

    def _restore(self, now_ms: int) -> None:
        """First sights from the snapshot; the steps recorded within the rate window."""
        data = self.store.get_snapshot(SNAPSHOT)
        if data is not None:
            try:
                raw = json.loads(data)
                self._seen = {str(k): (int(v[0]), int(v[1])) for k, v in raw.items()}
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                log.warning(
                    "escalation: snapshot %s unreadable, starting afresh: %s", SNAPSHOT, exc
                )
                self._seen = {}
        since = now_ms - self.policy.rate_window_ms
        query = sa.select(audit.c.at_ms, audit.c.note).where(
            audit.c.action.in_([a.value for a in STEPS]), audit.c.at_ms > since
        )
        with self.store.reading() as conn:
            rows = conn.execute(query).all()
        for at_ms, note in sorted((int(r[0]), str(r[1])) for r in rows):
            notice = parse_note(note)
            if notice is not None:
                self._sent[notice.addressee].append(at_ms)
        self._restored = True

    def _save_seen(self, now_ms: int) -> None:
        data = json.dumps({k: list(v) for k, v in sorted(self._seen.items())}).encode()
        self.store.put_snapshot(SNAPSHOT, data, now_ms)

    def _forget_sent(self, now_ms: int) -> None:
        since = now_ms - self.policy.rate_window_ms
        for who in list(self._sent):
            times = self._sent[who]
            while times and times[0] <= since:
                times.popleft()
            if not times:
                del self._sent[who]


def _audit_record(row: Mapping[Any, Any]) -> AuditRecord:
    return AuditRecord(
        event_id=str(row["event_id"]),
        at_ms=int(row["at_ms"]),
        actor=str(row["actor"]),
        action=Action(row["action"]),
        from_state=None if row["from_state"] is None else State(row["from_state"]),
        to_state=State(row["to_state"]),
        note=str(row["note"]),
    )
