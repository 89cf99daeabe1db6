"""The residents' pages: report an incident from a phone without an account, and follow
it by a private link.

`/resident/{site}` is a phone-sized form: what (a category and a description), where (a
grid cell, or a point tapped on the site's map or the phone's own position) and
optionally a photo. It files the report through the same path as `POST /api/v1/reports`
(`api.routes.reports.file_report`): an event from source `report` in its grid cell,
assigned to the cell's worker, on the desk and the wall like any other. The photo is
stored on the hub with the event (`events.attachments`).

No login, so abuse limits instead: reports per client address and in all per window
(429), photo size (413) and type (415), the body size before it is read (`api.hardening`),
and a form ticket signed for the client's address, so another site cannot post the form
from its visitors' browsers. Nothing of anyone else is shown: the reporter gets a status
link with an unguessable token (`/resident/status/{token}`, only its hash is stored),
which shows that report's status and nothing more.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import deque
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, File, Form, Path, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from accounts.roles import Role
from api.deps import ApiDeps, get_deps
from api.problems import ApiError, Forbidden, InvalidInput, NotFound, TooManyRequests
from api.roles import Principal, public
from api.routes.field import (
    attachment_store,
    cell_map,
    cells_of_site,
    human_bytes,
    read_photos,
    render,
    store_photos,
)
from api.routes.reports import SEVERITY_OF, file_report
from api.routes.worker import accepted
from api.schemas.reports import Coordinates, ReportIn
from events.attachments import TOKEN_PATTERN
from events.model import SecurityEvent
from registry.errors import NotFound as NoSuchRecord

PREFIX: Final = "/resident"
REPORT_PATH: Final = PREFIX + "/{site}"
SITE_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,128}$"
PUBLIC_REPORTER: Final = "(public report page)"
"""The reporter of every report filed here: no username can look like it (usernames are
letters, digits and `._@-`), so no resident account ever lists these reports."""
TICKET_TTL_S: Final = 6 * 3600
TABLE_BOUND: Final = 10_000
CATEGORIES: Final = tuple(SEVERITY_OF)
NO_STORE: Final = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}

router = APIRouter(prefix=PREFIX, include_in_schema=False, dependencies=[Depends(public())])


class ReportLimiter:
    """Reports (tries included) per client address and in all, in a sliding window;
    in memory, like the login limits (a restart forgets)."""

    def __init__(self, per_client: int, total: int, window_s: float) -> None:
        self.per_client, self.total, self.window_s = per_client, total, window_s
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def check(self, client: str, now: float) -> None:
        """Count this try, or raise TooManyRequests when it is one too many."""
        mine = self._recent(client, now)
        _expire(self._all, now - self.window_s)
        if len(mine) >= self.per_client:
            retry = max(1, int(mine[0] + self.window_s - now) + 1)
            raise TooManyRequests(
                f"too many reports from your address ({self.per_client} per "
                f"{_span(self.window_s)}); try again later or call the control room",
                retry,
            )
        if len(self._all) >= self.total:
            retry = max(1, int(self._all[0] + self.window_s - now) + 1)
            raise TooManyRequests(
                "the report page is busy; try again later or call the control room", retry
            )
        mine.append(now)
        self._all.append(now)

    def _recent(self, client: str, now: float) -> deque[float]:
        if client not in self._clients and len(self._clients) >= TABLE_BOUND:
            for stale in [
                k for k, v in self._clients.items() if not v or v[-1] <= now - self.window_s
            ]:
                del self._clients[stale]
            if len(self._clients) >= TABLE_BOUND:  # all recent: forget the oldest tenth
                oldest = sorted(self._clients, key=lambda k: self._clients[k][-1])
                for key in oldest[: TABLE_BOUND // 10]:
                    del self._clients[key]
        times = self._clients.setdefault(client, deque())
        _expire(times, now - self.window_s)
        return times


def _expire(times: deque[float], before: float) -> None:
    while times and times[0] <= before:
        times.popleft()


def _span(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return "hour" if hours == 1 else f"{hours} hours"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} minutes"
    return f"{seconds:g} s"


def report_limiter(request: Request) -> ReportLimiter:
    limiter = request.app.state.report_limiter
    assert isinstance(limiter, ReportLimiter)
    return limiter


def client_of(request: Request) -> str:
    """The client's address (the proxy's X-Forwarded-For only from trusted proxies)."""
    return request.client.host if request.client else "?"


# ---------------------------------------------------------------------- form tickets


def ticket(deps: ApiDeps, client: str, now_s: int) -> str:
    """A form ticket for this client: its issue time, signed with the client's address."""
    return f"{now_s}.{_signature(deps, client, now_s)}"


def _signature(deps: ApiDeps, client: str, issued_s: int) -> str:
    message = f"resident-form|{client}|{issued_s}".encode()
    return hmac.new(deps.jwt_secret.encode(), message, hashlib.sha256).hexdigest()[:32]


def check_ticket(deps: ApiDeps, client: str, value: str, now_s: int) -> None:
    issued, _, signature = value.partition(".")
    fresh = issued.isdigit() and 0 <= now_s - int(issued) <= TICKET_TTL_S
    if not fresh or not hmac.compare_digest(signature, _signature(deps, client, int(issued))):
        raise Forbidden("the form was stale or from elsewhere: check it and send it again")


# ---------------------------------------------------------------------- pages


def _sites(deps: ApiDeps) -> list[str]:
    known = set(deps.cells)
    if deps.registry is not None:
        known |= {s.id for s in deps.registry.all_sites() if s.retired_ms is None}
    return sorted(known)


@router.get("/", response_class=HTMLResponse)
def choose_site(request: Request) -> Response:
    sites = _sites(get_deps(request))
    if len(sites) == 1:
        return RedirectResponse(f"{PREFIX}/{sites[0]}", status_code=303)
    return render(request, "resident_sites.html", {"sites": sites})


def form_page(
    request: Request,
    site: str,
    *,
    form: dict[str, Any] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    deps = get_deps(request)
    cells = cells_of_site(deps, site)
    if not cells:
        raise NotFound(f"no site {site}", entity="site", id=site)
    blank = {"category": "", "description": "", "cell": "", "lon": None, "lat": None}
    values: dict[str, Any] = blank | (form or {})
    pin: list[tuple[str, tuple[float, float], str]] = []
    if values.get("lon") is not None and values.get("lat") is not None:
        pin = [("pin", (float(values["lon"]), float(values["lat"])), "your point")]
    return render(
        request,
        "resident_report.html",
        {
            "site": site,
            "site_name": _site_name(deps, site),
            "cells": cells,
            "map": cell_map(cells, markers=pin, frame=[p for c in cells for p in c.polygon]),
            "categories": CATEGORIES,
            "form": values,
            "error": error,
            "ticket": ticket(deps, client_of(request), int(time.time())),
            "max_photos": deps.config.max_report_photos,
            "max_photo": human_bytes(deps.config.max_photo_bytes),
        },
        status_code=status_code,
    )


def _site_name(deps: ApiDeps, site: str) -> str:
    if deps.registry is not None:
        try:
            return deps.registry.get_site(site).name
        except NoSuchRecord:
            pass
    return site


@router.get("/{site}", response_class=HTMLResponse)
def report_form(request: Request, site: Annotated[str, Path(pattern=SITE_PATTERN)]) -> Response:
    return form_page(request, site)


Photos = Annotated[list[UploadFile], File()]


@router.post("/{site}")
def submit(
    request: Request,
    site: Annotated[str, Path(pattern=SITE_PATTERN)],
    ticket_: Annotated[str, Form(alias="ticket", max_length=80)],
    category: Annotated[str, Form(max_length=40)],
    description: Annotated[str, Form(max_length=4000)] = "",
    cell: Annotated[str, Form(max_length=128)] = "",
    lon: Annotated[float | None, Form(ge=-180, le=180)] = None,
    lat: Annotated[float | None, Form(ge=-90, le=90)] = None,
    photo: Photos = [],  # noqa: B006  # FastAPI copies defaults per request
) -> Response:
    deps = get_deps(request)
    client = client_of(request)
    form = {"category": category, "description": description, "cell": cell, "lon": lon, "lat": lat}
    try:
        check_ticket(deps, client, ticket_, int(time.time()))  # a forged post costs no quota
        report_limiter(request).check(client, time.monotonic())
        photos = read_photos(
            photo, most=deps.config.max_report_photos, max_bytes=deps.config.max_photo_bytes
        )
        if photos:
            attachment_store(deps)  # 503 before the report is filed, not after
        report = _report_in(site, form)
        filed = file_report(deps, Principal(PUBLIC_REPORTER, Role.resident, via="public"), report)
        store_photos(deps, filed.event_id, photos, uploader=PUBLIC_REPORTER, source="resident")
        token = attachment_store(deps).new_report_token(filed.id)
    except ApiError as exc:
        response = form_page(request, site, form=form, error=exc.detail, status_code=exc.status)
        response.headers.update(exc.headers)
        return response
    return RedirectResponse(f"{PREFIX}/status/{token}", status_code=303, headers=NO_STORE)


def _report_in(site: str, form: dict[str, Any]) -> ReportIn:
    located = form["lon"] is not None and form["lat"] is not None
    try:
        return ReportIn.model_validate(
            {
                "site": site,
                "cell": form["cell"] or None,
                "location": Coordinates(lon=form["lon"], lat=form["lat"]) if located else None,
                "category": form["category"],
                "description": form["description"].strip(),
            }
        )
    except ValidationError as exc:
        problems = [{"loc": ["body", *map(str, e["loc"])], "msg": e["msg"]} for e in exc.errors()]
        fields = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
        raise InvalidInput(f"please check: {fields}", problems) from exc


STATUS_WORDS: Final = {
    "received": "Received: the control room has your report.",
    "seen": "Seen: the control room is looking at it.",
    "in_hand": "In hand: a grid worker is on it.",
    "resolved": "Resolved: the grid worker has closed it. Thank you.",
}


def status_of(deps: ApiDeps, event: SecurityEvent) -> str:
    if event.closed:
        return "resolved"
    if accepted(deps.events.audit_trail(event.id), event):
        return "in_hand"
    return "seen" if event.acknowledged else "received"


@router.get("/status/{token}", response_class=HTMLResponse)
def report_status(request: Request, token: Annotated[str, Path(pattern=TOKEN_PATTERN)]) -> Response:
    """That report's status and nothing else; an unknown token is a plain 404."""
    deps = get_deps(request)
    store = attachment_store(deps)
    report_id = store.report_of_token(token)
    link = deps.users.get_report(report_id) if report_id is not None else None
    event = deps.events.get(link.event_id) if link is not None else None
    if link is None or event is None:
        response = render(request, "resident_status.html", {"status": None}, status_code=404)
        response.headers.update(NO_STORE)
        return response
    cell = next((c for c in cells_of_site(deps, event.site) if c.id == event.cell), None)
    status = status_of(deps, event)
    mine = [a for a in store.of_event(event.id) if a.uploader == PUBLIC_REPORTER]
    response = render(
        request,
        "resident_status.html",
        {
            "status": status,
            "words": STATUS_WORDS[status],
            "category": link.category,
            "description": event.message,
            "site": event.site,
            "cell": cell.name if cell is not None else (event.cell or ""),
            "filed_ms": link.created_ms,
            "updated_ms": event.updated_ms,
            "photos": len(mine),
            "self_url": f"{PREFIX}/status/{token}",
        },
    )
    response.headers.update(NO_STORE)
    return response
