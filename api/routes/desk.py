"""The event desk: server-rendered pages for operators (Jinja2, plain HTML forms).

No front-end build: every action is a form POST that goes through the same
`api.event_actions.act` as the JSON API and redirects back (POST/redirect/GET). The
session is the API's JWT in an HttpOnly, SameSite=Strict cookie; every form also carries
a CSRF token derived from that session, so another site cannot act with it.

Live: `/static/desk.js` listens to the site's event stream (`api.routes.stream`) and,
when something on the page changed, reads the page again and swaps in the parts marked
`data-live` (rows by id and version, so a row being typed in is left alone until it loses
focus). Without JavaScript the pages are what they were: reload to see changes.

Assignment picks from the site's grid workers (the event's cell's worker first) and the
server refuses anyone else; a flood parent's page acknowledges its children in one form,
each child with its own audit record and version check. `/desk/{site}/kpi` shows the
site's alarm KPIs with server-drawn SVG plots (`api.routes.kpi`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Annotated, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from accounts.roles import Role
from api.deps import ApiDeps, get_deps
from api.event_actions import (
    SKIP_REASONS,
    WorkerChoice,
    acknowledge_children,
    act,
    check_assignee,
    event_detail,
    query_events,
    shelve_until_ms,
    site_workers,
)
from api.problems import ApiError, Forbidden, InvalidInput, to_api_error
from api.roles import SESSION_COOKIE, Principal, check_password_login, issue_token, requires
from api.roles import public as public_marker
from api.routes.kpi import KPI_RANGES, duration, kpi_page_context
from api.schemas.events import EVENT_ID_PATTERN, MAX_SHELVE_S, ActionIn, ShelveFor
from events.model import Action, ForbiddenTransition, Mode, SecurityEvent, State
from events.store import EventFilter, StaleEvent, UnknownEvent

TEMPLATE_DIR: Final = FsPath(__file__).parents[1] / "templates"
DESK_LIMIT: Final = 500
"""Open events shown on a site's page; a site with more is in a flood (grouped)."""
OPEN_STATES: Final[list[State]] = [s for s in State if s is not State.CLOSED]

DeskOperator = Annotated[Principal, Depends(requires(Role.operator, cookie=True))]
SITE_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,128}$"
MAX_BULK: Final = 10_000
"""Children one bulk acknowledge may name (one form field, about 400 KB at most: inside
the default body limit)."""
_SEEN: Final = re.compile(r"^(.{1,128}):(\d{1,9})$")
_SKIPPED: Final = re.compile(r"^[a-z_]{1,32}:\d{1,6}(,[a-z_]{1,32}:\d{1,6}){0,15}$")

router = APIRouter(prefix="/desk", include_in_schema=False)


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def make_templates() -> Jinja2Templates:
    """The desk's templates (one per app; create_app keeps them on app.state)."""
    templates = Jinja2Templates(directory=TEMPLATE_DIR)
    templates.env.filters["when"] = _when
    templates.env.filters["duration"] = duration
    return templates


def _render(request: Request, name: str, context: dict[str, object]) -> Response:
    templates = request.app.state.templates
    assert isinstance(templates, Jinja2Templates)
    return templates.TemplateResponse(request, name, context)


def csrf_token(deps: ApiDeps, request: Request) -> str:
    """Bound to the session: a form from another site cannot know it."""
    session = request.cookies.get(SESSION_COOKIE, "") or request.headers.get("authorization", "")
    return hmac.new(deps.jwt_secret.encode(), session.encode(), hashlib.sha256).hexdigest()[:32]


def _check_csrf(deps: ApiDeps, request: Request, token: str) -> None:
    if not hmac.compare_digest(token, csrf_token(deps, request)):
        raise Forbidden("the form is stale or not from the desk; reload the page")


def _safe_next(target: str | None) -> str:
    """Only our own desk pages: never an open redirect."""
    if target and target.startswith("/desk/") and not target.startswith("//"):
        return target
    return "/desk/"


def desk_order(events: list[SecurityEvent]) -> list[SecurityEvent]:
    """Most severe first, then newest."""
    return sorted(events, key=lambda e: (e.severity.rank, -e.last_ms, e.id))


# ---------------------------------------------------------------------- login


@router.get("/login", dependencies=[Depends(public_marker())], response_class=HTMLResponse)
def login_form(
    request: Request,
    next: Annotated[str | None, Query(max_length=512)] = None,  # the form's name
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    return _render(request, "login.html", {"next": _safe_next(next), "error": error})


@router.post("/login", dependencies=[Depends(public_marker())])
def login(
    request: Request,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
    next: Annotated[str, Form(max_length=512)] = "/desk/",  # the form's name
) -> Response:
    deps = get_deps(request)
    try:
        user = check_password_login(request, username, password)
    except ApiError as exc:
        query = urlencode({"next": _safe_next(next), "error": exc.detail})
        return RedirectResponse(f"/desk/login?{query}", status_code=303)
    token, lifetime = issue_token(deps, user.username, user.role)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=lifetime,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/desk",
    )
    return response


@router.post("/logout")
def logout(_: DeskOperator) -> Response:
    response = RedirectResponse("/desk/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/desk")
    return response


# ---------------------------------------------------------------------- pages


@router.get("/", response_class=HTMLResponse)
def sites(request: Request, principal: DeskOperator) -> Response:
    deps = get_deps(request)
    return _render(
        request,
        "sites.html",
        {"sites": sorted(deps.cells), "principal": principal, "csrf": csrf_token(deps, request)},
    )


@router.get("/events/{event_id}", response_class=HTMLResponse)
def event_page(
    request: Request,
    principal: DeskOperator,
    event_id: Annotated[str, Path(pattern=EVENT_ID_PATTERN)],
    error: Annotated[str | None, Query(max_length=500)] = None,
    acked: Annotated[int | None, Query(ge=0, le=MAX_BULK)] = None,
    skipped: Annotated[str | None, Query(max_length=600)] = None,
) -> Response:
    deps = get_deps(request)
    detail = event_detail(deps, event_id)
    event = deps.events.get(event_id)
    assert event is not None  # event_detail found it
    children = deps.events.children(event_id)
    pending = [c for c in children if not c.closed and not c.acknowledged]
    return _render(
        request,
        "event.html",
        {
            "e": event,
            "detail": detail,
            "principal": principal,
            "csrf": csrf_token(deps, request),
            "error": error,
            "choices": site_workers(deps, event.site, event.cell),
            "back": f"/desk/events/{event_id}",
            "children": children,
            "pending": pending,
            "ackable": [c for c in pending if c.mode is Mode.NORMAL],
            "seen": ",".join(f"{c.id}:{c.version}" for c in pending),
            "bulk": _bulk_result(acked, skipped),
            "stream": f"/desk/{event.site}/stream",
        },
    )


def _bulk_result(acked: int | None, skipped: str | None) -> list[str] | None:
    """The sentences that report a bulk acknowledge (from its redirect's query)."""
    if acked is None:
        return None
    lines = [f"Acknowledged {acked} grouped event{'' if acked == 1 else 's'}."]
    if skipped and _SKIPPED.match(skipped):
        for part in skipped.split(","):
            reason, _, count = part.partition(":")
            if reason in SKIP_REASONS:
                lines.append(f"Not acknowledged: {count} {SKIP_REASONS[reason]}.")
    return lines


@router.get("/{site}", response_class=HTMLResponse)
def site_page(
    request: Request,
    principal: DeskOperator,
    site: Annotated[str, Path(pattern=SITE_PATTERN)],
    error: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    deps = get_deps(request)
    where = EventFilter(site=site, states=OPEN_STATES, top_level_only=True)
    events, total = query_events(deps.events, where, limit=DESK_LIMIT, offset=0)
    pickers: dict[str | None, list[WorkerChoice]] = {}
    for e in events:
        if e.cell not in pickers:
            pickers[e.cell] = site_workers(deps, site, e.cell)
    rows = [(e, pickers[e.cell]) for e in desk_order(events)]
    return _render(
        request,
        "site.html",
        {
            "site": site,
            "rows": rows,
            "total": total,
            "principal": principal,
            "csrf": csrf_token(deps, request),
            "error": error,
            "back": f"/desk/{site}",
            "stream": f"/desk/{site}/stream",
        },
    )


@router.get("/{site}/kpi", response_class=HTMLResponse)
def kpi_page(
    request: Request,
    principal: DeskOperator,
    site: Annotated[str, Path(pattern=SITE_PATTERN)],
    hours: Annotated[int, Query(description="The range: this many hours up to now")] = 24,
) -> Response:
    """The site's alarm KPIs (ISA-18.2 / EEMUA 191) over the last `hours`, with plots."""
    if hours not in KPI_RANGES:
        raise InvalidInput(
            f"hours must be one of {', '.join(map(str, KPI_RANGES))}",
            [{"loc": ["query", "hours"], "msg": "not an offered range"}],
        )
    deps = get_deps(request)
    context = kpi_page_context(deps, site, hours)
    return _render(request, "kpi.html", {**context, "principal": principal, "error": None})


# ---------------------------------------------------------------------- actions

_FORM_ACTIONS: Final = {
    "acknowledge": Action.ACKNOWLEDGE,
    "assign": Action.ASSIGN,
    "comment": Action.COMMENT,
    "shelve": Action.SHELVE,
    "unshelve": Action.UNSHELVE,
    "resolve": Action.CLOSE,
}


@router.post("/events/{event_id}/{action}")
def event_action(
    request: Request,
    principal: DeskOperator,
    event_id: Annotated[str, Path(pattern=EVENT_ID_PATTERN)],
    action: Annotated[str, Path(pattern="^(" + "|".join(_FORM_ACTIONS) + ")$")],
    csrf: Annotated[str, Form(max_length=64)],
    note: Annotated[str, Form(max_length=2000)] = "",
    assignee: Annotated[str, Form(max_length=128)] = "",
    for_s: Annotated[int, Form(ge=1, le=MAX_SHELVE_S)] = 3600,
    expected_version: Annotated[int, Form(ge=0)] = 0,
    back: Annotated[str, Form(max_length=512)] = "",
) -> Response:
    deps = get_deps(request)
    _check_csrf(deps, request, csrf)
    target = _safe_next(back or f"/desk/events/{event_id}")
    body = ActionIn(note=note, expected_version=expected_version or None)
    try:
        match _FORM_ACTIONS[action]:
            case Action.ASSIGN:
                event = deps.events.get(event_id)
                if event is None:
                    raise UnknownEvent(event_id)
                check_assignee(deps, event, assignee)
                act(deps, principal, event_id, Action.ASSIGN, body, assignee=assignee)
            case Action.SHELVE:
                until = shelve_until_ms(deps, ShelveFor(for_s=for_s, note=note))
                act(deps, principal, event_id, Action.SHELVE, body, until_ms=until)
            case other:
                act(deps, principal, event_id, other, body)
    except (ApiError, ForbiddenTransition, StaleEvent, UnknownEvent) as exc:
        return _refused(target, exc)
    return RedirectResponse(target, status_code=303)


def _refused(target: str, exc: Exception) -> Response:
    """Back to the page, with the refusal as its message."""
    error = to_api_error(exc)
    assert error is not None
    sep = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{sep}{urlencode({'error': error.detail})}", 303)


@router.post("/events/{event_id}/children/acknowledge")
def acknowledge_group(
    request: Request,
    principal: DeskOperator,
    event_id: Annotated[str, Path(pattern=EVENT_ID_PATTERN)],
    csrf: Annotated[str, Form(max_length=64)],
    seen: Annotated[str, Form(max_length=MAX_BULK * 160)] = "",
) -> Response:
    """Acknowledge the grouped events the operator saw unacknowledged (`seen`: the page's
    `id:version` list), then report what was done and what was skipped, and why."""
    deps = get_deps(request)
    _check_csrf(deps, request, csrf)
    target = f"/desk/events/{event_id}"
    try:
        versions = _parse_seen(seen)
        outcome = acknowledge_children(deps, principal, event_id, versions)
    except ApiError as exc:
        return _refused(target, exc)
    query = {"acked": str(len(outcome.acknowledged))}
    if counts := outcome.counts():
        query["skipped"] = ",".join(f"{reason}:{n}" for reason, n in counts.items())
    return RedirectResponse(f"{target}?{urlencode(query)}#bulk-result", status_code=303)


def _parse_seen(text: str) -> dict[str, int]:
    """`id:version,id:version,...` (what the flood parent's page lists) as a mapping."""
    seen: dict[str, int] = {}
    for part in filter(None, text.split(",")):
        match = _SEEN.match(part)
        if match is None or len(seen) >= MAX_BULK:
            raise InvalidInput(
                "the list of grouped events is garbled; reload the page",
                [{"loc": ["body", "seen"], "msg": "expected id:version pairs"}],
            )
        seen[match.group(1)] = int(match.group(2))
    return seen
