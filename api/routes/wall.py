"""The wall: a kiosk page with the site's grid map and its newest events, kept live.

`/desk/{site}/wall` is a static shell (`wall.html`, `/static/wall.js`, `/static/wall.css`;
nothing from elsewhere, the desk's CSP holds). The script reads `state.json` (cells with
their polygons, worker and worst open event; devices with their map state; the open
events, newest first), draws the map as inline SVG, and re-reads the state whenever the
site's event stream (`api.routes.stream`) reports a change. Both live under `/desk`, so
the desk's session cookie is what authenticates them; the JSON map layers under
`/api/v1` never take cookies.

Cell and device states are the map layers' (`api.routes.geo`): the same events count,
so the wall, the GeoJSON and Grafana's Geomap never disagree.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, TypeVar

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from accounts.roles import Role
from api.deps import ApiDeps, get_deps
from api.problems import NotFound
from api.roles import Principal, requires
from api.routes.geo import cell_states, device_states
from api.routes.stream import SITE_PATTERN, event_summary
from events.manager import FLOOD_RULE
from events.model import SecurityEvent, State
from events.store import EventFilter, EventStore
from registry.errors import NotFound as NoSuchRecord
from registry.model import Cell, Device, Worker
from registry.store import MAX_PAGE, RegistryStore

WALL_EVENTS: Final = 300
"""Open events the wall gets (newest first); the list shows the top-level ones."""
EVENTS_PAGE: Final = 1000
OPEN_STATES: Final = [s for s in State if s is not State.CLOSED]

T = TypeVar("T")
WallOperator = Annotated[Principal, Depends(requires(Role.operator, cookie=True))]
SiteId = Annotated[str, Path(pattern=SITE_PATTERN)]

router = APIRouter(prefix="/desk", include_in_schema=False)


@router.get("/{site}/wall", response_class=HTMLResponse)
def wall_page(request: Request, principal: WallOperator, site: SiteId) -> Response:
    templates = request.app.state.templates
    assert isinstance(templates, Jinja2Templates)
    return templates.TemplateResponse(request, "wall.html", {"site": site, "principal": principal})


@router.get("/{site}/wall/state.json")
async def wall_state_json(request: Request, _: WallOperator, site: SiteId) -> JSONResponse:
    """Everything the wall draws, in one read."""
    return JSONResponse(await asyncio.to_thread(wall_state, get_deps(request), site))


def wall_state(deps: ApiDeps, site: str) -> dict[str, Any]:
    """The site's cells, devices and open events as the wall draws them."""
    layout = _layout(deps, site)
    if layout is None:
        raise NotFound(f"no site {site}", entity="site", id=site)
    name, timezone, cells, devices, workers = layout
    open_events = _open_events(deps.events, site)
    raised = [e for e in open_events if e.active and e.rule_id != FLOOD_RULE]
    by_cell = cell_states(raised)
    by_device = device_states(devices, raised)
    counts: dict[str, int] = {}
    for event in open_events:
        if event.cell is not None and event.parent_id is None:
            counts[event.cell] = counts.get(event.cell, 0) + 1
    return {
        "site": site,
        "name": name,
        "timezone": timezone,
        "cells": [
            {
                "id": cell.id,
                "name": cell.name,
                "polygon": [list(p) for p in cell.polygon],
                "worker": _worker_json(cell.worker, workers),
                "open": counts.get(cell.id, 0),
                **by_cell.get(cell.id, {"state": "ok", "severity": None}),
            }
            for cell in cells
        ],
        "devices": [
            {
                "id": device.id,
                "kind": device.kind,
                "cell": device.cell,
                "lon": device.location.lon,
                "lat": device.location.lat,
                "label": device.location.label,
                "state": by_device[device.id],
            }
            for device in devices
        ],
        "events": [event_summary(e) for e in open_events[:WALL_EVENTS]],
        "open_total": len(open_events),
    }


Layout = tuple[str, str | None, list[Cell], list[Device], dict[str, Worker]]


def _layout(deps: ApiDeps, site: str) -> Layout | None:
    """The site from the registry, else its cells from the site files (no devices)."""
    store = deps.registry
    if isinstance(store, RegistryStore):
        try:
            found = store.get_site(site)
        except NoSuchRecord:
            pass  # not registered: the site files may still have it
        else:
            cells = store.all_cells(site=site)
            devices = _all(lambda n, o: store.list_devices(site=site, limit=n, offset=o).items)
            workers = _all(lambda n, o: store.list_workers(limit=n, offset=o).items)
            return found.name, found.timezone, cells, devices, {w.id: w for w in workers}
    areas = deps.cells.get(site)
    if areas is None:
        return None
    cells = [Cell(a.id, a.site, a.name, a.polygon, a.worker) for a in areas]
    return site, None, cells, [], {}


def _all(fetch: Callable[[int, int], Sequence[T]], page: int = MAX_PAGE) -> list[T]:
    """Every record of a paged registry listing."""
    found: list[T] = []
    while True:
        batch = fetch(page, len(found))
        found += batch
        if len(batch) < page:
            return found


def _worker_json(ident: str | None, workers: dict[str, Worker]) -> dict[str, Any] | None:
    if ident is None:
        return None
    worker = workers.get(ident)
    if worker is None:
        return {"id": ident, "name": ident, "phone": None}
    return {"id": worker.id, "name": worker.name, "phone": worker.phone}


def _open_events(store: EventStore, site: str) -> list[SecurityEvent]:
    """Every open event of the site, newest raised first."""
    where = EventFilter(site=site, states=OPEN_STATES)
    found: list[SecurityEvent] = []
    while True:
        batch = store.list_events(where, limit=EVENTS_PAGE, offset=len(found))
        found += batch
        if len(batch) < EVENTS_PAGE:
            return found
