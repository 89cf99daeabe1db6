"""Security events after ISA-18.2: what rules and detectors say, and the event lifecycle.

A rule or detector emits a `Detection` (raise or clear a condition under a dedup key).
The event manager turns detections into `SecurityEvent`s; operators act on them. Every
change of an event goes through `transition`, a pure function that refuses what the
lifecycle forbids and returns the audit record of what it allowed, so the store, the
API and the sinks can never disagree about how an event got where it is.

State is derived from four facts, as ISA-18.2 draws it: is the condition active, has an
operator acknowledged it, is the event in a special mode (shelved by an operator,
suppressed by design, out of service), and is it closed with a resolution note.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from sensors.base import FieldValue

SYSTEM: Final = "system"
"""Actor of transitions nobody typed: raise, return to normal, shelve expiry."""


class Severity(StrEnum):
    """Priority, highest first (ISA-18.2 calls it priority)."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for critical … 3 for low: sorts the most severe first."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK: Final = {s: i for i, s in enumerate(Severity)}


class Mode(StrEnum):
    """Why an event is set aside; `normal` when it is not."""

    NORMAL = "normal"
    SHELVED = "shelved"
    """By an operator, with an expiry: a nuisance set aside for a while."""
    SUPPRESSED = "suppressed"
    """By design: e.g. a child of a flood group, or a detector in self-test."""
    OUT_OF_SERVICE = "out_of_service"
    """The device is under maintenance; its events are kept but not annunciated."""


class State(StrEnum):
    """The state an operator sees, derived from the event's facts (see `state_of`)."""

    ACTIVE_UNACKNOWLEDGED = "active_unacknowledged"
    ACTIVE_ACKNOWLEDGED = "active_acknowledged"
    RETURNED_UNACKNOWLEDGED = "returned_unacknowledged"
    """The condition went away before anyone acknowledged it."""
    CLEARED = "cleared"
    """Returned to normal and acknowledged: waiting to be closed."""
    SHELVED = "shelved"
    SUPPRESSED = "suppressed"
    OUT_OF_SERVICE = "out_of_service"
    CLOSED = "closed"


class Action(StrEnum):
    """Everything that can happen to an event; each is one audit record."""

    RAISE = "raise"
    REPEAT = "repeat"
    """Same rule and key while not closed: the counter goes up (and a returned event
    becomes active and unacknowledged again)."""
    RETURN = "return"
    """The condition cleared (system)."""
    ACKNOWLEDGE = "acknowledge"
    ASSIGN = "assign"
    COMMENT = "comment"
    SHELVE = "shelve"
    UNSHELVE = "unshelve"
    SUPPRESS = "suppress"
    UNSUPPRESS = "unsuppress"
    REMOVE_FROM_SERVICE = "remove_from_service"
    RETURN_TO_SERVICE = "return_to_service"
    CLOSE = "close"
    """Resolve with a note: only once the condition is no longer active."""
    GROUP = "group"
    """Flood control made this event a child of a parent event."""
    NOTIFY = "notify"
    """Escalation (system): the event stayed unacknowledged, its assignee was reminded.
    The note names who and how (`events.escalation`); the event's facts do not change."""
    ESCALATE = "escalate"
    """Escalation (system): still unacknowledged after the reminder, the site's
    supervisor was called in. The note names who and how; the facts do not change."""


class Source(StrEnum):
    RULE = "rule"
    ANOMALY = "anomaly"
    REPORT = "report"
    HUB = "hub"
    """The hub's own health (its disk, its broker session): not a field alarm, so
    outside flood control (and raised on the hub's clock, not the log's)."""
    """A resident's report through the API."""


@dataclass(frozen=True, slots=True)
class Location:
    lon: float
    lat: float


@dataclass(frozen=True, slots=True)
class Detection:
    """What a rule or detector says at one instant: a condition raised or cleared.

    `(rule_id, key)` identifies the condition: the same pair raised again while its
    event is open bumps that event's counter instead of opening another.
    """

    rule_id: str
    key: str
    raised: bool
    """True: the condition holds (raise or repeat). False: it cleared."""
    at_ms: int
    """When the condition changed, on the clock that drives the rules (device time)."""
    site: str
    cell: str | None = None
    device: str | None = None
    severity: Severity = Severity.MEDIUM
    title: str = ""
    message: str = ""
    incident: str = ""
    """The incident kind the rule names (`fire`, `door_forced`, …): what scoring matches."""
    source: Source = Source.RULE
    values: Mapping[str, FieldValue] = field(default_factory=dict)
    """The readings or features that drove it (shown to operators, stored as JSON)."""
    devices: tuple[str, ...] = ()
    """Every device involved, when more than one (a confirmed fire, a cloned card)."""
    location: Location | None = None


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One incident as operators work it. Immutable: `transition` returns a new one."""

    id: str
    rule_id: str
    key: str
    site: str
    cell: str | None
    device: str | None
    severity: Severity
    title: str
    message: str
    incident: str
    source: Source
    raised_ms: int
    """When the condition was first detected (the detection's clock)."""
    last_ms: int
    """Last raise or repeat."""
    updated_ms: int
    """Last transition of any kind."""
    count: int = 1
    active: bool = True
    acknowledged: bool = False
    mode: Mode = Mode.NORMAL
    shelved_until_ms: int | None = None
    closed: bool = False
    resolution: str = ""
    assignee: str | None = None
    parent_id: str | None = None
    values: Mapping[str, FieldValue] = field(default_factory=dict)
    devices: tuple[str, ...] = ()
    location: Location | None = None
    returned_ms: int | None = None
    """When the condition cleared (None while active)."""
    version: int = 1
    """Bumped by every transition: the store refuses a stale write (optimistic lock)."""

    @property
    def state(self) -> State:
        return state_of(self)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One transition: who did what to which event, when, from which state to which."""

    event_id: str
    at_ms: int
    actor: str
    action: Action
    from_state: State | None
    """None for the raise that created the event."""
    to_state: State
    note: str = ""


class ForbiddenTransition(ValueError):
    """The lifecycle does not allow this action in the event's current state."""

    def __init__(self, event: SecurityEvent, action: Action, why: str) -> None:
        super().__init__(f"cannot {action.value} event {event.id} ({event.state.value}): {why}")
        self.event_id = event.id
        self.action = action
        self.state = event.state


def state_of(event: SecurityEvent) -> State:
    """The ISA-18.2 state from the event's facts."""
    if event.closed:
        return State.CLOSED
    if event.mode is Mode.SHELVED:
        return State.SHELVED
    if event.mode is Mode.SUPPRESSED:
        return State.SUPPRESSED
    if event.mode is Mode.OUT_OF_SERVICE:
        return State.OUT_OF_SERVICE
    if event.active:
        return State.ACTIVE_ACKNOWLEDGED if event.acknowledged else State.ACTIVE_UNACKNOWLEDGED
    return State.CLEARED if event.acknowledged else State.RETURNED_UNACKNOWLEDGED


def event_id(rule_id: str, key: str, raised_at_ms: int) -> str:
    """The id of the event that a raise of `(rule_id, key)` at `raised_at_ms` opens: 32 hex.

    A function of the detection, not a random draw, so replaying a detection finds the
    event it opened the first time instead of opening another.
    """
    # Length-prefixed fields: ("a:b", "c") and ("a", "b:c") must not hash alike.
    parts = [part.encode() for part in (rule_id, key, str(raised_at_ms))]
    data = b"".join(b"%d:%b;" % (len(part), part) for part in parts)
    return hashlib.blake2b(data, digest_size=16, person=b"gridwatch-event").hexdigest()


def new_event(event_id: str, detection: Detection, at_ms: int) -> tuple[SecurityEvent, AuditRecord]:
    """The event a first detection opens, and the audit record of its raise."""
    if not detection.raised:
        raise ValueError(f"a clear of {detection.rule_id}/{detection.key} cannot open an event")
    event = SecurityEvent(
        id=event_id,
        rule_id=detection.rule_id,
        key=detection.key,
        site=detection.site,
        cell=detection.cell,
        device=detection.device,
        severity=detection.severity,
        title=detection.title,
        message=detection.message,
        incident=detection.incident,
        source=detection.source,
        raised_ms=detection.at_ms,
        last_ms=detection.at_ms,
        updated_ms=at_ms,
        values=dict(detection.values),
        devices=detection.devices,
        location=detection.location,
    )
    audit = AuditRecord(event_id, at_ms, SYSTEM, Action.RAISE, None, event.state, detection.message)
    return event, audit


def transition(
    event: SecurityEvent,
    action: Action,
    *,
    actor: str,
    at_ms: int,
    note: str = "",
    assignee: str | None = None,
    until_ms: int | None = None,
    parent_id: str | None = None,
    detection: Detection | None = None,
) -> tuple[SecurityEvent, AuditRecord]:
    """Apply one action; raise `ForbiddenTransition` when the lifecycle refuses it.

    `assignee` goes with ASSIGN, `until_ms` with SHELVE, `parent_id` with GROUP,
    `detection` with REPEAT (its title, message and values replace the event's, its
    devices are added to the event's, its severity raises the event's if higher).
    """
    before = event.state
    if event.closed:
        raise ForbiddenTransition(event, action, "the event is closed")
    changes: dict[str, object] = {}
    match action:
        case Action.RAISE:
            raise ForbiddenTransition(event, action, "an event is raised once; repeats bump it")
        case Action.REPEAT:
            if detection is None:
                raise ValueError("REPEAT needs the detection that repeated")
            changes = {
                "count": event.count + 1,
                "last_ms": max(event.last_ms, detection.at_ms),
                "title": detection.title or event.title,
                "message": detection.message or event.message,
                "values": dict(detection.values) or event.values,
                # Every device involved so far: a repeat names who is involved now.
                "devices": tuple(dict.fromkeys((*event.devices, *detection.devices))),
                # Priority only goes up: a repeat at a higher severity (or a more severe
                # child joining a flood group) must not stay hidden under the first, lower one.
                "severity": min(event.severity, detection.severity, key=lambda s: s.rank),
            }
            if not event.active:
                # Back from normal: ISA-18.2 wants it annunciated (unacknowledged) again.
                changes |= {"active": True, "acknowledged": False, "returned_ms": None}
        case Action.RETURN:
            if not event.active:
                raise ForbiddenTransition(event, action, "the condition is not active")
            changes = {"active": False, "returned_ms": at_ms}
        case Action.ACKNOWLEDGE:
            if event.acknowledged:
                raise ForbiddenTransition(event, action, "already acknowledged")
            if event.mode is not Mode.NORMAL:
                raise ForbiddenTransition(event, action, f"the event is {event.mode.value}")
            changes = {"acknowledged": True}
        case Action.ASSIGN:
            if not assignee:
                raise ForbiddenTransition(event, action, "no assignee given")
            changes = {"assignee": assignee}
        case Action.COMMENT:
            if not note.strip():
                raise ForbiddenTransition(event, action, "a comment needs text")
        case Action.SHELVE:
            if event.mode is not Mode.NORMAL:
                raise ForbiddenTransition(event, action, f"the event is {event.mode.value}")
            if until_ms is None or until_ms <= at_ms:
                raise ForbiddenTransition(event, action, "shelving needs an expiry in the future")
            changes = {"mode": Mode.SHELVED, "shelved_until_ms": until_ms}
        case Action.UNSHELVE:
            _require_mode(event, action, Mode.SHELVED)
            changes = {"mode": Mode.NORMAL, "shelved_until_ms": None}
        case Action.SUPPRESS:
            if event.mode is not Mode.NORMAL:
                raise ForbiddenTransition(event, action, f"the event is {event.mode.value}")
            changes = {"mode": Mode.SUPPRESSED}
        case Action.UNSUPPRESS:
            _require_mode(event, action, Mode.SUPPRESSED)
            changes = {"mode": Mode.NORMAL}
        case Action.REMOVE_FROM_SERVICE:
            if event.mode is Mode.OUT_OF_SERVICE:
                raise ForbiddenTransition(event, action, "already out of service")
            changes = {"mode": Mode.OUT_OF_SERVICE, "shelved_until_ms": None}
        case Action.RETURN_TO_SERVICE:
            _require_mode(event, action, Mode.OUT_OF_SERVICE)
            changes = {"mode": Mode.NORMAL}
        case Action.CLOSE:
            if event.active:
                why = "the condition is still active (shelve it, or wait for it to clear)"
                raise ForbiddenTransition(event, action, why)
            if not note.strip():
                raise ForbiddenTransition(event, action, "closing needs a resolution note")
            changes = {"closed": True, "resolution": note.strip(), "acknowledged": True}
        case Action.NOTIFY | Action.ESCALATE:
            # Only what operators still have to answer: an annunciated, unacknowledged event.
            if event.acknowledged:
                raise ForbiddenTransition(event, action, "already acknowledged")
            if event.mode is not Mode.NORMAL:
                raise ForbiddenTransition(event, action, f"the event is {event.mode.value}")
        case Action.GROUP:
            if not parent_id or parent_id == event.id:
                raise ForbiddenTransition(event, action, "grouping needs another event as parent")
            if event.parent_id is not None:
                raise ForbiddenTransition(event, action, "already grouped")
            changes = {"parent_id": parent_id}
    after = dataclasses.replace(event, updated_ms=at_ms, version=event.version + 1, **changes)  # type: ignore[arg-type]
    return after, AuditRecord(event.id, at_ms, actor, action, before, after.state, note)


def _require_mode(event: SecurityEvent, action: Action, mode: Mode) -> None:
    if event.mode is not mode:
        raise ForbiddenTransition(event, action, f"the event is not {mode.value}")


OPERATOR_ACTIONS: Final = frozenset(
    {
        Action.ACKNOWLEDGE,
        Action.ASSIGN,
        Action.COMMENT,
        Action.SHELVE,
        Action.UNSHELVE,
        Action.REMOVE_FROM_SERVICE,
        Action.RETURN_TO_SERVICE,
        Action.CLOSE,
    }
)
"""What a person may do through the API; the rest belongs to the system."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One transition waiting to be delivered to one sink (InfluxDB, MQTT, a webhook).

    Written in the same store transaction as the transition, so a sink being down
    delays delivery but never loses it.
    """

    id: int
    sink: str
    event: SecurityEvent
    audit: AuditRecord
    attempts: int = 0
    next_attempt_ms: int = 0
    last_error: str = ""
