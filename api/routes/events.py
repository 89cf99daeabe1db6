"""The events desk API: find events, read one with its audit trail, and work it.

Every action goes through `EventManager.act` (the lifecycle in `events.model.transition`),
so the API can only do what the lifecycle allows; a refused action is a 409 problem
naming the event's state, and every allowed one leaves an audit record with the
caller as actor.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from accounts.roles import Role
from api.deps import ApiDeps, get_deps
from api.problems import InvalidInput, NotFound, problem_responses
from api.roles import Principal, requires
from events.model import Action, AuditRecord, SecurityEvent, Severity, State
from events.store import EventFilter, EventStore

F = TypeVar("F", bound=Callable[..., Any])
MAX_PAGE: Final = 500
EVENT_ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,128}$"

EventId = Annotated[str, Path(pattern=EVENT_ID_PATTERN, description="The event's id")]
Operator = Annotated[Principal, Depends(requires(Role.operator))]

# ---------------------------------------------------------------------- models

_EVENT_EXAMPLE: Final[dict[str, Any]] = {
    "id": "7d0c5b3e9a1f4e2b8c6d5a4f3e2d1c0b",
    "version": 3,
    "rule_id": "smoke_alarm",
    "key": "yy-smoke-012",
    "site": "yingyang",
    "cell": "c03",
    "device": "yy-smoke-012",
    "severity": "high",
    "state": "active_acknowledged",
    "title": "Smoke alarm",
    "message": "obscuration 4.1 %/ft",
    "incident": "fire",
    "source": "rule",
    "raised_ms": 1764450000000,
    "last_ms": 1764450060000,
    "updated_ms": 1764450100000,
    "count": 2,
    "active": True,
    "acknowledged": True,
    "mode": "normal",
    "shelved_until_ms": None,
    "closed": False,
    "resolution": "",
    "assignee": "w-li",
    "parent_id": None,
    "values": {"obscuration": 4.1},
    "devices": [],
    "location": {"lon": 121.47, "lat": 31.23},
    "returned_ms": None,
}


class LocationOut(BaseModel):
    lon: float
    lat: float


class EventOut(BaseModel):
    """An event as operators see it: its facts and the state derived from them."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EVENT_EXAMPLE]})

    id: str
    version: int
    rule_id: str
    key: str
    site: str
    cell: str | None
    device: str | None
    severity: Severity
    state: State
    title: str
    message: str
    incident: str
    source: str
    raised_ms: int
    last_ms: int
    updated_ms: int
    count: int
    active: bool
    acknowledged: bool
    mode: str
    shelved_until_ms: int | None
    closed: bool
    resolution: str
    assignee: str | None
    parent_id: str | None
    values: dict[str, bool | int | float | str]
    devices: list[str]
    location: LocationOut | None
    returned_ms: int | None

    @classmethod
    def of(cls, event: SecurityEvent) -> EventOut:
        return cls(
            id=event.id,
            version=event.version,
            rule_id=event.rule_id,
            key=event.key,
            site=event.site,
            cell=event.cell,
            device=event.device,
            severity=event.severity,
            state=event.state,
            title=event.title,
            message=event.message,
            incident=event.incident,
            source=event.source.value,
            raised_ms=event.raised_ms,
            last_ms=event.last_ms,
            updated_ms=event.updated_ms,
            count=event.count,
            active=event.active,
            acknowledged=event.acknowledged,
            mode=event.mode.value,
            shelved_until_ms=event.shelved_until_ms,
            closed=event.closed,
            resolution=event.resolution,
            assignee=event.assignee,
            parent_id=event.parent_id,
            values=dict(event.values),
            devices=list(event.devices),
            location=(
                None
                if event.location is None
                else LocationOut(lon=event.location.lon, lat=event.location.lat)
            ),
            returned_ms=event.returned_ms,
        )


class AuditOut(BaseModel):
    at_ms: int
    actor: str
    action: Action
    from_state: State | None
    to_state: State
    note: str

    @classmethod
    def of(cls, record: AuditRecord) -> AuditOut:
        return cls(
            at_ms=record.at_ms,
            actor=record.actor,
            action=record.action,
            from_state=record.from_state,
            to_state=record.to_state,
            note=record.note,
        )


class EventDetail(BaseModel):
    event: EventOut
    audit: list[AuditOut]
    children: list[EventOut]


class EventPage(BaseModel):
    items: list[EventOut]
    total: int
    limit: int
    offset: int


class ActionIn(BaseModel):
    """Common to every action: an optional note and the version the operator saw."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "on my way", "expected_version": 3}]},
    )

    note: str = Field(default="", max_length=2000)
    expected_version: int | None = Field(
        default=None,
        ge=1,
        description="Refuse (409) if the event changed since this version was read.",
    )


class AssignIn(ActionIn):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"assignee": "w-li", "note": "your cell"}]}
    )

    assignee: str = Field(min_length=1, max_length=128)


class CommentIn(ActionIn):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"note": "camera shows nobody there"}]}
    )

    note: str = Field(min_length=1, max_length=2000)


class ShelveUntil(ActionIn):
    """Set a nuisance aside until a time."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"until": "2026-01-01T08:00:00Z", "note": "cleaning"}]},
    )

    until: datetime = Field(description="When the shelve expires")


class ShelveFor(ActionIn):
    """Set a nuisance aside for a number of seconds."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"for_s": 3600, "note": "detector being cleaned"}]},
    )

    for_s: int = Field(ge=1, le=30 * 86400, description="How long, in seconds")


ShelveIn = ShelveUntil | ShelveFor


class ResolveIn(ActionIn):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "false alarm: cooking smoke, detector cleaned"}]},
    )

    note: str = Field(min_length=1, max_length=2000, description="The resolution note")


# ---------------------------------------------------------------------- queries


def _ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def query_events(
    store: EventStore, where: EventFilter, *, limit: int, offset: int
) -> tuple[list[SecurityEvent], int]:
    """One page and the total for the same filter."""
    return store.list_events(where, limit=limit, offset=offset), store.count_events(where)


# ---------------------------------------------------------------------- routes

router = APIRouter(prefix="/api/v1/events", tags=["events"])
_READ = problem_responses(401, 403, 404, 422)
_ACT = problem_responses(401, 403, 404, 409, 422)


@router.get("", responses=problem_responses(401, 403, 422), summary="List events, newest first")
def list_events(
    request: Request,
    _: Operator,
    state: Annotated[list[State] | None, Query(description="Any of these states")] = None,
    site: Annotated[str | None, Query(max_length=128)] = None,
    cell: Annotated[str | None, Query(max_length=128)] = None,
    severity: Annotated[list[Severity] | None, Query(description="Any of these")] = None,
    rule: Annotated[str | None, Query(max_length=128, description="Rule id")] = None,
    since: Annotated[datetime | None, Query(description="Raised at or after")] = None,
    until: Annotated[datetime | None, Query(description="Raised before")] = None,
    top_level: Annotated[bool, Query(description="Hide children of flood groups")] = False,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> EventPage:
    since_ms, until_ms = _ms(since), _ms(until)
    if since_ms is not None and until_ms is not None and since_ms >= until_ms:
        raise InvalidInput(
            "since must be before until", [{"loc": ["query", "since"], "msg": "after until"}]
        )
    where = EventFilter(
        site=site,
        cell=cell,
        states=state,
        severity=severity,
        rule_id=rule,
        since_ms=since_ms,
        until_ms=until_ms,
        top_level_only=top_level,
    )
    items, total = query_events(get_deps(request).events, where, limit=limit, offset=offset)
    return EventPage(items=[EventOut.of(e) for e in items], total=total, limit=limit, offset=offset)


@router.get("/{event_id}", responses=_READ, summary="One event with its audit trail and children")
def get_event(request: Request, _: Operator, event_id: EventId) -> EventDetail:
    return event_detail(get_deps(request), event_id)


def event_detail(deps: ApiDeps, event_id: str) -> EventDetail:
    event = deps.events.get(event_id)
    if event is None:
        raise NotFound(f"no event {event_id}", event_id=event_id)
    return EventDetail(
        event=EventOut.of(event),
        audit=[AuditOut.of(r) for r in deps.events.audit_trail(event_id)],
        children=[EventOut.of(c) for c in deps.events.children(event_id)],
    )


def act(
    deps: ApiDeps,
    principal: Principal,
    event_id: str,
    action: Action,
    body: ActionIn,
    *,
    assignee: str | None = None,
    until_ms: int | None = None,
) -> SecurityEvent:
    """Apply one operator action, audited under the caller's name, and count it."""
    outcome = "refused"
    try:
        event = deps.manager.act(
            event_id,
            action,
            actor=principal.subject,
            at_ms=deps.clock_ms(),
            note=body.note,
            assignee=assignee,
            until_ms=until_ms,
            expected_version=body.expected_version,
        )
        outcome = "ok"
        return event
    finally:
        deps.metrics.actions.labels(action=action.value, outcome=outcome).inc()


def shelve_until_ms(deps: ApiDeps, body: ShelveIn) -> int:
    if isinstance(body, ShelveFor):
        return deps.clock_ms() + body.for_s * 1000
    until = _ms(body.until)
    assert until is not None
    return until


def _post(path: str, summary: str) -> Callable[[F], F]:
    return router.post(path, responses=_ACT, summary=summary)


@_post("/{event_id}/acknowledge", "Acknowledge: someone is on it")
def acknowledge(
    request: Request,
    principal: Operator,
    event_id: EventId,
    body: Annotated[ActionIn, Body()] = ActionIn(),  # noqa: B008  # immutable default
) -> EventOut:
    deps = get_deps(request)
    return EventOut.of(act(deps, principal, event_id, Action.ACKNOWLEDGE, body))


@_post("/{event_id}/assign", "Assign to a person (usually the cell's grid worker)")
def assign(request: Request, principal: Operator, event_id: EventId, body: AssignIn) -> EventOut:
    deps = get_deps(request)
    return EventOut.of(act(deps, principal, event_id, Action.ASSIGN, body, assignee=body.assignee))


@_post("/{event_id}/comment", "Add a comment to the audit trail")
def comment(request: Request, principal: Operator, event_id: EventId, body: CommentIn) -> EventOut:
    return EventOut.of(act(get_deps(request), principal, event_id, Action.COMMENT, body))


@_post("/{event_id}/shelve", "Shelve a nuisance until an expiry")
def shelve(
    request: Request, principal: Operator, event_id: EventId, body: Annotated[ShelveIn, Body()]
) -> EventOut:
    deps = get_deps(request)
    until = shelve_until_ms(deps, body)
    return EventOut.of(act(deps, principal, event_id, Action.SHELVE, body, until_ms=until))


@_post("/{event_id}/unshelve", "Take a shelved event back before its expiry")
def unshelve(
    request: Request,
    principal: Operator,
    event_id: EventId,
    body: Annotated[ActionIn, Body()] = ActionIn(),  # noqa: B008  # immutable default
) -> EventOut:
    return EventOut.of(act(get_deps(request), principal, event_id, Action.UNSHELVE, body))


@_post("/{event_id}/resolve", "Resolve (close) with a note, once the condition has cleared")
def resolve(request: Request, principal: Operator, event_id: EventId, body: ResolveIn) -> EventOut:
    return EventOut.of(act(get_deps(request), principal, event_id, Action.CLOSE, body))


@_post("/{event_id}/remove-from-service", "The device is under maintenance: set its event aside")
def remove_from_service(
    request: Request,
    principal: Operator,
    event_id: EventId,
    body: Annotated[ActionIn, Body()] = ActionIn(),  # noqa: B008  # immutable default
) -> EventOut:
    deps = get_deps(request)
    return EventOut.of(act(deps, principal, event_id, Action.REMOVE_FROM_SERVICE, body))


@_post("/{event_id}/return-to-service", "Maintenance is over")
def return_to_service(
    request: Request,
    principal: Operator,
    event_id: EventId,
    body: Annotated[ActionIn, Body()] = ActionIn(),  # noqa: B008  # immutable default
) -> EventOut:
    deps = get_deps(request)
    return EventOut.of(act(deps, principal, event_id, Action.RETURN_TO_SERVICE, body))
