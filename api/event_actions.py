"""Reading and working events, shared by the JSON routes (`api.routes.events`) and the
desk pages (`api.routes.desk`).

Every action goes through `EventManager.act` (the lifecycle in `events.model.transition`),
so the API can only do what the lifecycle allows, and every allowed one leaves an audit
record with the caller as actor.
"""

from __future__ import annotations

from datetime import UTC, datetime

from api.deps import ApiDeps
from api.problems import InvalidInput, NotFound
from api.roles import Principal
from api.schemas.events import (
    MAX_SHELVE_S,
    ActionIn,
    AuditOut,
    EventDetail,
    EventOut,
    ShelveFor,
    ShelveIn,
)
from events.model import Action, SecurityEvent
from events.store import EventFilter, EventStore


def epoch_ms(moment: datetime | None) -> int | None:
    """Milliseconds since the epoch; a naive datetime is taken as UTC."""
    if moment is None:
        return None
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def query_events(
    store: EventStore, where: EventFilter, *, limit: int, offset: int
) -> tuple[list[SecurityEvent], int]:
    """One page and the total for the same filter."""
    return store.list_events(where, limit=limit, offset=offset), store.count_events(where)


def event_detail(deps: ApiDeps, event_id: str) -> EventDetail:
    """The event with its audit trail and children; 404 if there is none."""
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
    """When a shelve expires: now plus `for_s`, or the `until` given, at most
    MAX_SHELVE_S ahead like `for_s` (422 beyond). An `until` in the past is the
    lifecycle's refusal (409, "expiry in the future"), as for any state."""
    now = deps.clock_ms()
    if isinstance(body, ShelveFor):
        return now + body.for_s * 1000
    until = epoch_ms(body.until)
    assert until is not None
    if until > now + MAX_SHELVE_S * 1000:
        raise InvalidInput(
            f"until must be at most {MAX_SHELVE_S // 86400} days ahead",
            [{"loc": ["body", "until"], "msg": f"more than {MAX_SHELVE_S} s ahead"}],
        )
    return until
