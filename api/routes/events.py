"""The events desk API: find events, read one with its audit trail, and work it.

Every action goes through `api.event_actions.act`, hence `EventManager.act` (the
lifecycle in `events.model.transition`), so the API can only do what the lifecycle
allows; a refused action is a 409 problem
naming the event's state, and every allowed one leaves an audit record with the
caller as actor.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Body, Depends, Path, Query, Request

from accounts.roles import Role
from api.deps import get_deps
from api.event_actions import act, epoch_ms, event_detail, query_events, shelve_until_ms
from api.problems import InvalidInput, problem_responses
from api.roles import Principal, requires
from api.schemas.events import (
    EVENT_ID_PATTERN,
    ActionIn,
    AssignIn,
    CommentIn,
    EventDetail,
    EventOut,
    EventPage,
    ResolveIn,
    ShelveIn,
)
from events.model import Action, Severity, State
from events.store import EventFilter

F = TypeVar("F", bound=Callable[..., Any])
MAX_PAGE: Final = 500

EventId = Annotated[str, Path(pattern=EVENT_ID_PATTERN, description="The event's id")]
Operator = Annotated[Principal, Depends(requires(Role.operator))]

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
    since_ms, until_ms = epoch_ms(since), epoch_ms(until)
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
