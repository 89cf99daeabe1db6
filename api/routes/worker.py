"""The grid worker's page (`/desk/worker/`): a phone-sized, server-rendered desk for
one grid worker (网格员).

A worker logs in like an operator (`/desk/login`, the same HttpOnly session cookie)
with an account of role `worker` whose username is their registry Worker id (e.g.
`gridwatch users add w-yy-g01 --role worker`); an account whose name is no known worker
is refused. They see the open events assigned to them, nearest first when the phone
shares its position (else most severe, then newest); accept one (assign it to
themselves, which the audit trail records as theirs, and acknowledge it if nobody has);
see where it is in its cell on a small map; and resolve it with a note and photos
(stored on the hub, `events.attachments`), or add a note and photos while its condition
is still active. Every action goes through the same lifecycle as the desk's, under the
worker's name, and only on events assigned to them.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Final

import sqlalchemy as sa
from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from accounts.roles import Role
from api.deps import ApiDeps, CellArea, get_deps
from api.event_actions import act
from api.problems import ApiError, Forbidden, InvalidInput, NotFound, to_api_error
from api.roles import SESSION_COOKIE, Principal, public, requires
from api.routes.desk import csrf_token, desk_order
from api.routes.field import (
    CellMap,
    Point,
    cell_map,
    cells_of_site,
    distance_m,
    event_photos,
    event_point,
    human_distance,
    read_photos,
    render,
    store_photos,
)
from api.schemas.events import EVENT_ID_PATTERN, ActionIn
from events.migrations import events as events_table
from events.model import (
    Action,
    AuditRecord,
    ForbiddenTransition,
    Mode,
    SecurityEvent,
    transition,
)
from events.store import StaleEvent, UnknownEvent
from registry.errors import NotFound as NoSuchRecord

PREFIX: Final = "/desk/worker"
RESOLVE_PATH: Final = PREFIX + "/events/{event_id}/resolve"
NOTE_PATH: Final = PREFIX + "/events/{event_id}/note"
MY_EVENTS_LIMIT: Final = 200
NEAR_M: Final = 3000.0
"""A worker this close to an event is drawn on its map (farther, only the distance)."""
ACCEPTED_NOTE: Final = "accepted by the grid worker"

FieldWorker = Annotated[Principal, Depends(requires(Role.worker, cookie=True))]
Lat = Annotated[float | None, Query(ge=-90, le=90)]
Lon = Annotated[float | None, Query(ge=-180, le=180)]

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    id: str
    name: str
    phone: str | None


@dataclass(frozen=True, slots=True)
class Job:
    """One assigned event as the worker's page shows it."""

    event: SecurityEvent
    cell: CellArea | None
    point: Point | None
    distance_m: float | None
    accepted: bool

    @property
    def distance(self) -> str:
        return human_distance(self.distance_m)


def identity(deps: ApiDeps, principal: Principal) -> WorkerIdentity:
    """The registry Worker this account acts as (its username is the Worker id); an
    admin acts as themselves."""
    if deps.registry is not None:
        try:
            worker = deps.registry.get_worker(principal.subject)
        except NoSuchRecord:
            pass
        else:
            if worker.retired_ms is None:
                return WorkerIdentity(worker.id, worker.name, worker.phone)
    if any(c.worker == principal.subject for cells in deps.cells.values() for c in cells):
        return WorkerIdentity(principal.subject, principal.subject, None)
    if principal.role is Role.admin:  # passes every guard: sees what is assigned to them
        return WorkerIdentity(principal.subject, principal.subject, None)
    raise NotFound(
        f"no grid worker {principal.subject!r} in the registry: a worker's account is "
        "named after its registry Worker id (ask an administrator)",
        worker=principal.subject,
    )


def accepted(trail: list[AuditRecord], event: SecurityEvent) -> bool:
    """Accepted: the last assignment is the assignee's own (they took the job)."""
    assigns = [r for r in trail if r.action is Action.ASSIGN]
    return bool(assigns) and event.assignee is not None and assigns[-1].actor == event.assignee


def my_event_ids(deps: ApiDeps, worker: str) -> list[str]:
    """The open events assigned to `worker`, newest raised first."""
    c = events_table.c
    query = (
        sa.select(c.id)
        .where(c.assignee == worker, sa.not_(c.closed))
        .order_by(c.raised_ms.desc(), c.id)
        .limit(MY_EVENTS_LIMIT)
    )
    with deps.events.reading() as conn:
        return [str(row[0]) for row in conn.execute(query)]


def _cell_of(deps: ApiDeps, event: SecurityEvent) -> CellArea | None:
    return next((c for c in cells_of_site(deps, event.site) if c.id == event.cell), None)


def job_of(deps: ApiDeps, event: SecurityEvent, me: Point | None) -> Job:
    cell = _cell_of(deps, event)
    point = event_point(deps, event, cell)
    distance = None if me is None or point is None else distance_m(me, point)
    return Job(event, cell, point, distance, accepted(deps.events.audit_trail(event.id), event))


def nearest_first(jobs: list[Job]) -> list[Job]:
    """By distance (placeless events last), then most severe, then newest; without the
    worker's position, most severe then newest (the desk's order)."""
    ranked = {e.id: i for i, e in enumerate(desk_order([j.event for j in jobs]))}
    far = float("inf")
    return sorted(
        jobs,
        key=lambda j: (far if j.distance_m is None else j.distance_m, ranked[j.event.id]),
    )


def _position(lat: float | None, lon: float | None) -> Point | None:
    return None if lat is None or lon is None else (lon, lat)


def _assigned(deps: ApiDeps, worker: WorkerIdentity, event_id: str) -> SecurityEvent:
    """The event if it is assigned to this worker; 404 otherwise (others' are not theirs
    to see)."""
    event = deps.events.get(event_id)
    if event is None or event.assignee != worker.id:
        raise NotFound(f"no event {event_id} assigned to {worker.id}", event_id=event_id)
    return event


def _check_csrf(deps: ApiDeps, request: Request, token: str) -> None:
    if not hmac.compare_digest(token, csrf_token(deps, request)):
        raise Forbidden("the form is stale or not from this page; reload it")


def _where_query(lat: float | None, lon: float | None) -> str:
    return "" if lat is None or lon is None else f"?lat={lat:.6f}&lon={lon:.6f}"


# ---------------------------------------------------------------------- pages


@router.get("/", response_class=HTMLResponse)
def my_events(
    request: Request, principal: FieldWorker, lat: Lat = None, lon: Lon = None
) -> Response:
    deps = get_deps(request)
    try:
        worker = identity(deps, principal)
    except NotFound as exc:  # a page that says so, rather than a bare refusal
        unknown = WorkerIdentity(principal.subject, principal.subject, None)
        context = {"worker": unknown, "jobs": [], "located": False, "where": ""}
        return render(request, "worker_events.html", {**context, "error": exc.detail}, 404)
    me = _position(lat, lon)
    events = [e for e in map(deps.events.get, my_event_ids(deps, worker.id)) if e is not None]
    jobs = nearest_first([job_of(deps, e, me) for e in events])
    return render(
        request,
        "worker_events.html",
        {
            "worker": worker,
            "jobs": jobs,
            "located": me is not None,
            "where": _where_query(lat, lon),
            "csrf": csrf_token(deps, request),
        },
    )


@router.get("", dependencies=[Depends(public())])
def no_slash() -> Response:
    return RedirectResponse(PREFIX + "/", status_code=303)


def event_page(
    request: Request,
    principal: Principal,
    event_id: str,
    *,
    lat: float | None = None,
    lon: float | None = None,
    error: str | None = None,
    notice: str | None = None,
    note: str = "",
    status_code: int = 200,
) -> Response:
    deps = get_deps(request)
    worker = identity(deps, principal)
    event = _assigned(deps, worker, event_id)
    me = _position(lat, lon)
    job = job_of(deps, event, me)
    return render(
        request,
        "worker_event.html",
        {
            "worker": worker,
            "job": job,
            "e": event,
            "map": _job_map(deps, job, me),
            "photos": event_photos(request, event.id),
            "trail": deps.events.audit_trail(event.id)[-8:],
            "csrf": csrf_token(deps, request),
            "where": _where_query(lat, lon),
            "lat": lat,
            "lon": lon,
            "error": error,
            "notice": notice,
            "note": note,
            "max_photos": deps.config.max_worker_photos,
            "max_photo_bytes": deps.config.max_photo_bytes,
            "can_accept": not event.closed and not job.accepted,
        },
        status_code=status_code,
    )


def _job_map(deps: ApiDeps, job: Job, me: Point | None) -> CellMap | None:
    cells = cells_of_site(deps, job.event.site)
    frame = list(job.cell.polygon) if job.cell is not None else []
    markers: list[tuple[str, Point, str]] = []
    if job.point is not None:
        frame.append(job.point)
        markers.append(("target", job.point, job.event.title or job.event.rule_id))
    if me is not None and job.distance_m is not None and job.distance_m <= NEAR_M:
        frame.append(me)
        markers.append(("me", me, "you"))
    if not frame:
        return None
    return cell_map(cells, focus=job.event.cell, markers=markers, frame=frame)


@router.get("/events/{event_id}", response_class=HTMLResponse)
def event_view(
    request: Request,
    principal: FieldWorker,
    event_id: Annotated[str, Path(pattern=EVENT_ID_PATTERN)],
    lat: Lat = None,
    lon: Lon = None,
    done: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    notices = {
        "accepted": "Accepted: the control room sees that you are on it.",
        "resolved": "Resolved: thank you. The control room sees your note and photos.",
        "noted": "Your note (and photos) are with the control room.",
    }
    return event_page(
        request, principal, event_id, lat=lat, lon=lon, notice=notices.get(done or "")
    )


# ---------------------------------------------------------------------- actions


def _refused(
    request: Request,
    principal: Principal,
    event_id: str,
    exc: Exception,
    *,
    note: str = "",
    lat: float | None = None,
    lon: float | None = None,
) -> Response:
    """The event page again, with the refusal and what the worker typed."""
    error = to_api_error(exc)
    if error is None:
        raise exc
    return event_page(
        request,
        principal,
        event_id,
        lat=lat,
        lon=lon,
        error=error.detail,
        note=note,
        status_code=error.status,
    )


@router.post("/events/{event_id}/accept")
def accept(
    request: Request,
    principal: FieldWorker,
    event_id: Annotated[str, Path(pattern=EVENT_ID_PATTERN)],
    csrf: Annotated[str, Form(max_length=64)],
    lat: Annotated[float | None, Form(ge=-90, le=90)] = None,
    lon: Annotated[float | None, Form(ge=-180, le=180)] = None,
) -> Response:
    """Take the job: assign it to oneself (audited as the worker's), and acknowledge it
    when nobody has yet (someone is on it)."""
    deps = get_deps(request)
    _check_csrf(deps, request, csrf)
    worker = identity(deps, principal)
    try:
        event = _assigned(deps, worker, event_id)
        event = act(
            deps, principal, event_id, Action.ASSIGN, ActionIn(note=ACCEPTED_NOTE),
            assignee=worker.id,
        )  # fmt: skip
        if not event.acknowledged and event.mode is Mode.NORMAL and not event.closed:
            act(deps, principal, event_id, Action.ACKNOWLEDGE, ActionIn(note=ACCEPTED_NOTE))
    except (ApiError, ForbiddenTransition, StaleEvent, UnknownEvent) as exc:
        return _refused(request, principal, event_id, exc, lat=lat, lon=lon)
    return _back(event_id, "accepted", lat, lon)


def _back(event_id: str, done: str, lat: float | None, lon: float | None) -> Response:
    where = _where_query(lat, lon)
    sep = "&" if where else "?"
    return RedirectResponse(f"{PREFIX}/events/{event_id}{where}{sep}done={done}", 303)


Photos = Annotated[list[UploadFile], File()]


@router.post("/events/{event_id}/resolve")
def resolve(
    request: Request,
    principal: FieldWorker,
    event_id: Annotated[str, Path(pattern=EVENT_ID_PATTERN)],
    csrf: Annotated[str, Form(max_length=64)],
    note: Annotated[str, Form(max_length=2000)] = "",
    photos: Photos = [],  # noqa: B006  # FastAPI copies defaults per request
    lat: Annotated[float | None, Form(ge=-90, le=90)] = None,
    lon: Annotated[float | None, Form(ge=-180, le=180)] = None,
) -> Response:
    """Close the event with a note and photos: the photos are checked first, the
    lifecycle's consent is asked next, and only then is anything stored."""
    return _report(request, principal, event_id, csrf, note, photos, lat, lon, close=True)


@router.post("/events/{event_id}/note")
def add_note(
    request: Request,
    principal: FieldWorker,
    event_id: Annotated[str, Path(pattern=EVENT_ID_PATTERN)],
    csrf: Annotated[str, Form(max_length=64)],
    note: Annotated[str, Form(max_length=2000)] = "",
    photos: Photos = [],  # noqa: B006  # FastAPI copies defaults per request
    lat: Annotated[float | None, Form(ge=-90, le=90)] = None,
    lon: Annotated[float | None, Form(ge=-180, le=180)] = None,
) -> Response:
    """A note and photos on an event that cannot be closed yet (its condition is active)."""
    return _report(request, principal, event_id, csrf, note, photos, lat, lon, close=False)


def _report(
    request: Request,
    principal: Principal,
    event_id: str,
    csrf: str,
    note: str,
    uploads: list[UploadFile],
    lat: float | None,
    lon: float | None,
    *,
    close: bool,
) -> Response:
    deps = get_deps(request)
    _check_csrf(deps, request, csrf)
    worker = identity(deps, principal)
    typed = note.strip()
    try:
        event = _assigned(deps, worker, event_id)
        photos = read_photos(
            uploads, most=deps.config.max_worker_photos, max_bytes=deps.config.max_photo_bytes
        )
        if not typed and (close or not photos):
            why = "resolving needs a note: write what you found and did" if close else ""
            raise InvalidInput(
                why or "write a note or add a photo", [{"loc": ["body", "note"], "msg": "empty"}]
            )
        note = typed or f"{len(photos)} photo(s) from the grid worker"
        action = Action.CLOSE if close else Action.COMMENT
        # The lifecycle's verdict before anything is stored (e.g. the condition still
        # active): a refused resolution leaves no orphan photos.
        transition(event, action, actor=worker.id, at_ms=deps.clock_ms(), note=note)
        store_photos(deps, event_id, photos, uploader=worker.id, source="worker")
        act(deps, principal, event_id, action, ActionIn(note=note))
    except (ApiError, ForbiddenTransition, StaleEvent, UnknownEvent) as exc:
        return _refused(request, principal, event_id, exc, note=typed, lat=lat, lon=lon)
    return _back(event_id, "resolved" if close else "noted", lat, lon)


@router.post("/logout")
def logout(_: FieldWorker) -> Response:
    response = RedirectResponse(f"/desk/login?next={PREFIX}/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/desk")
    return response
