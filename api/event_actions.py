"""Reading and working events, shared by the JSON routes (`api.routes.events`) and the
desk pages (`api.routes.desk`).

Every action goes through `EventManager.act` (the lifecycle in `events.model.transition`),
so the API can only do what the lifecycle allows, and every allowed one leaves an audit
record with the caller as actor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

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
from events.model import Action, ForbiddenTransition, Mode, SecurityEvent
from events.store import EventFilter, EventStore, StaleEvent, UnknownEvent
from registry.errors import NotFound as NoSuchRecord


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


# ---------------------------------------------------------------------- assignment


@dataclass(frozen=True, slots=True)
class WorkerChoice:
    """A grid worker an event of the site may be assigned to, and the cells they answer for."""

    id: str
    name: str
    cells: tuple[str, ...]
    """Names of the site's cells this worker looks after."""
    own: bool = False
    """The worker of the event's own cell."""

    @property
    def label(self) -> str:
        """What the desk's picker shows: the name, then whose cell it is or which cells."""
        return f"{self.name} · " + ("this cell" if self.own else ", ".join(self.cells))


@dataclass(frozen=True, slots=True)
class _Post:
    worker: str
    name: str
    cell: str
    cell_name: str


def _posts(deps: ApiDeps, site: str) -> list[_Post]:
    """Who looks after which cell of the site: the registry when it holds the site (active
    cells and workers, with names), else the site files the hub was started with."""
    registry = deps.registry
    if registry is not None:
        try:
            registry.get_site(site)
        except NoSuchRecord:
            pass  # not registered: the site files may still have it
        else:
            posts = []
            names: dict[str, str | None] = {}
            for cell in registry.all_cells(site=site):
                if cell.worker is None:
                    continue
                if cell.worker not in names:
                    names[cell.worker] = _active_worker_name(deps, cell.worker)
                name = names[cell.worker]
                if name is not None:
                    posts.append(_Post(cell.worker, name, cell.id, cell.name))
            return posts
    return [_Post(a.worker, a.worker, a.id, a.name) for a in deps.cells.get(site, ()) if a.worker]


def _active_worker_name(deps: ApiDeps, ident: str) -> str | None:
    """The worker's name, or None when the registry has no active worker by that id."""
    assert deps.registry is not None
    try:
        worker = deps.registry.get_worker(ident)
    except NoSuchRecord:
        return None
    return None if worker.retired_ms is not None else worker.name


def site_workers(deps: ApiDeps, site: str, cell: str | None) -> list[WorkerChoice]:
    """The grid workers of the site's cells, the worker of `cell` first, then by cell."""
    by_worker: dict[str, list[_Post]] = {}
    for post in sorted(_posts(deps, site), key=lambda p: p.cell):
        by_worker.setdefault(post.worker, []).append(post)
    choices = [
        WorkerChoice(
            id=ident,
            name=posts[0].name,
            cells=tuple(p.cell_name for p in posts),
            own=cell is not None and any(p.cell == cell for p in posts),
        )
        for ident, posts in by_worker.items()
    ]
    return sorted(choices, key=lambda c: not c.own)  # stable: by cell otherwise


def check_assignee(deps: ApiDeps, event: SecurityEvent, assignee: str) -> None:
    """Refuse anyone who is not a grid worker of the event's site (422)."""
    if assignee not in {c.id for c in site_workers(deps, event.site, event.cell)}:
        raise InvalidInput(
            f"{assignee!r} is not a grid worker of {event.site}: pick one from the list",
            [{"loc": ["body", "assignee"], "msg": "not a grid worker of the event's site"}],
        )


# ---------------------------------------------------------------------- bulk acknowledge

SKIP_REASONS: Final = {
    "acknowledged": "already acknowledged",
    "closed": "closed",
    "suppressed": "suppressed while the flood lasts (acknowledge once it is over)",
    "shelved": "shelved",
    "out_of_service": "out of service",
    "changed": "changed since the page was read",
    "new": "joined the group after the page was read",
    "refused": "refused by the lifecycle",
}
"""Why a child of a flood group was not acknowledged, by key."""


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    """What one bulk acknowledge did: each child acknowledged, or skipped and why."""

    acknowledged: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    """(event id, key of `SKIP_REASONS`)."""

    def counts(self) -> dict[str, int]:
        """Skipped children per reason, in the order of `SKIP_REASONS`."""
        found: dict[str, int] = {}
        for _, reason in self.skipped:
            found[reason] = found.get(reason, 0) + 1
        return {r: found[r] for r in SKIP_REASONS if r in found}


def acknowledge_children(
    deps: ApiDeps, principal: Principal, parent_id: str, seen: Mapping[str, int], note: str = ""
) -> BulkOutcome:
    """Acknowledge every unacknowledged child of a flood group that the operator saw, each
    at the version they saw (`seen`: child id -> version on their page).

    One `act` per child, so each gets its own audit record under the caller's name and
    its own optimistic check; all in one store transaction (a child that fails its check
    is skipped, the others still commit). Children that joined after the page was read
    are left alone: nobody looked at them yet.
    """
    parent = deps.events.get(parent_id)
    if parent is None:
        raise NotFound(f"no event {parent_id}", event_id=parent_id)
    acknowledged: list[str] = []
    skipped: list[tuple[str, str]] = []
    body_note = note or f"acknowledged with the other events of group {parent_id}"
    with deps.manager.batch():
        for child in deps.events.children(parent_id):
            if child.id not in seen:
                if not (child.closed or child.acknowledged):
                    skipped.append((child.id, "new"))
                continue
            reason = _skip_reason(child, seen[child.id])
            if reason is not None:
                skipped.append((child.id, reason))
                continue
            body = ActionIn(note=body_note, expected_version=seen[child.id])
            try:
                act(deps, principal, child.id, Action.ACKNOWLEDGE, body)
            except StaleEvent:
                skipped.append((child.id, "changed"))
            except (ForbiddenTransition, UnknownEvent):
                skipped.append((child.id, "refused"))
            else:
                acknowledged.append(child.id)
    return BulkOutcome(tuple(acknowledged), tuple(skipped))


def _skip_reason(child: SecurityEvent, version_seen: int) -> str | None:
    """Why a child the operator saw unacknowledged is not acknowledged now (None: do it)."""
    if child.closed:
        return "closed"
    if child.acknowledged:
        return "acknowledged"
    if child.mode is not Mode.NORMAL:
        return child.mode.value
    if child.version != version_seen:
        return "changed"
    return None
