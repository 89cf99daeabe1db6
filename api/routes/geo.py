"""Map layers for Grafana's Geomap panel: a site's grid cells and its devices as GeoJSON.

Geomap fetches these URLs from the viewer's browser and cannot add an Authorization
header, so besides a bearer token or `X-API-Key` both routes accept the API key as the
`?api_key=` query parameter. Use a key of role `operator` made for the dashboard (read
only; it can do nothing but read the event desk and the registry); rotate it by revoking
it. The routes still declare their roles (operator, integrator; admin passes).

Both layers are paged so a response stays bounded: `limit` (default 5000, at most
10,000) features from `offset`, ordered by id, with the foreign members `total`, `limit`,
`offset` and `truncated` (more follow). Geomap asks without them and gets a whole
ordinary site.

A device's `state` is the worst of the open events that name it and whose condition is
still raised (flood-control parents left out: they only summarise their children).
Annunciated and suppressed events count alike, so a flood never turns a burning cell
`ok`: `alarm` for any security event, else `offline` (device_offline), else
`low_battery`. Events an operator set aside show as such: `out_of_service`, else
`shelved`. Nothing raised: `ok`. A cell's `state` is the same over the events of the
cell, and its `severity` the highest of those that count as raised (null if none).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Final, Literal, TypedDict, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from accounts.roles import Role
from api.deps import get_deps
from api.problems import Unavailable, problem_responses
from api.roles import Principal, requires
from events.manager import FLOOD_RULE
from events.model import Mode, SecurityEvent, State
from events.store import EventFilter, EventStore
from registry.model import Cell, Device, Page
from registry.store import MAX_PAGE, RegistryStore

GEOJSON: Final = "application/geo+json"
IDENT: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
OFFLINE_INCIDENTS: Final = frozenset({"device_offline"})
BATTERY_INCIDENTS: Final = frozenset({"low_battery"})
RAISED_STATES: Final = frozenset(
    {
        State.ACTIVE_UNACKNOWLEDGED,
        State.ACTIVE_ACKNOWLEDGED,
        State.SUPPRESSED,
        State.SHELVED,
        State.OUT_OF_SERVICE,
    }
)
"""Where an event whose condition still holds can be (the last three also hold returned
events: those are sifted out)."""
EVENTS_PAGE: Final = 1000

T = TypeVar("T")
DeviceState = Literal["ok", "alarm", "offline", "low_battery", "out_of_service", "shelved"]
PRECEDENCE: Final[tuple[DeviceState, ...]] = (
    "alarm",
    "offline",
    "low_battery",
    "out_of_service",
    "shelved",
    "ok",
)
"""Worst first: what a device or cell shows when several events name it."""
SET_ASIDE: Final[dict[Mode, DeviceState]] = {
    Mode.OUT_OF_SERVICE: "out_of_service",
    Mode.SHELVED: "shelved",
}


class CellState(TypedDict):
    state: DeviceState
    severity: str | None


SiteId = Annotated[str, Path(pattern=IDENT, description="The site's id")]
MapReader = Annotated[Principal, Depends(requires(Role.operator, Role.integrator, query_key=True))]

LAYER_LIMIT: Final = 5000
"""Features per response by default: a whole layer for any ordinary site."""
LAYER_MAX: Final = 10_000
Limit = Annotated[
    int,
    Query(ge=1, le=LAYER_MAX, description="Features in this response (the layer is paged)"),
]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Features to skip")]

router = APIRouter(prefix="/api/v1/sites", tags=["map"])

_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "A GeoJSON FeatureCollection (RFC 7946)",
        "content": {
            GEOJSON: {
                "schema": {
                    "type": "object",
                    "required": ["type", "features"],
                    "properties": {
                        "type": {"type": "string", "enum": ["FeatureCollection"]},
                        "features": {"type": "array", "items": {"type": "object"}},
                        "total": {"type": "integer", "description": "Features in the layer"},
                        "limit": {"type": "integer"},
                        "offset": {"type": "integer"},
                        "truncated": {
                            "type": "boolean",
                            "description": "More features follow (page with offset)",
                        },
                    },
                }
            }
        },
    },
    **problem_responses(401, 403, 404, 422, 503),
}


def _registry(request: Request) -> RegistryStore:
    store = get_deps(request).registry
    if not isinstance(store, RegistryStore):
        raise Unavailable("this hub runs without a device registry")
    return store


def _collection(
    features: list[dict[str, Any]], *, total: int, limit: int, offset: int
) -> JSONResponse:
    """A FeatureCollection with the paging as foreign members (RFC 7946 §6.1)."""
    body = {
        "type": "FeatureCollection",
        "features": features,
        "total": total,
        "limit": limit,
        "offset": offset,
        "truncated": offset + len(features) < total,
    }
    return JSONResponse(body, media_type=GEOJSON)


def _window(fetch: Callable[[int, int], Page[T]], limit: int, offset: int) -> tuple[list[T], int]:
    """`limit` records from `offset`, in the registry's pages; and how many there are."""
    found: list[T] = []
    total = 0
    while len(found) < limit:
        page = fetch(min(MAX_PAGE, limit - len(found)), offset + len(found))
        found += page.items
        total = page.total
        if len(page.items) == 0 or offset + len(found) >= total:
            break
    return found, total


@router.get(
    "/{site_id}/cells.geojson",
    response_class=JSONResponse,
    responses=_RESPONSES,
    summary="The site's grid cells as Polygon features (id, name, worker)",
)
async def cells_geojson(
    request: Request,
    _: MapReader,
    site_id: SiteId,
    limit: Limit = LAYER_LIMIT,
    offset: Offset = 0,
) -> JSONResponse:
    store = _registry(request)
    await asyncio.to_thread(store.get_site, site_id)  # 404 for an unknown site

    def fetch(size: int, start: int) -> Page[Cell]:
        return store.list_cells(site=site_id, limit=size, offset=start)

    cells, total = await asyncio.to_thread(_window, fetch, limit, offset)
    raised = await asyncio.to_thread(_raised_events, get_deps(request).events, site_id)
    by_cell = cell_states(raised)
    features = [
        {
            "type": "Feature",
            "id": cell.id,
            "geometry": {
                "type": "Polygon",
                # RFC 7946: a closed ring, exterior counter-clockwise.
                "coordinates": [_ring(cell.polygon)],
            },
            "properties": {
                "id": cell.id,
                "name": cell.name,
                "worker": cell.worker,
                **by_cell.get(cell.id, {"state": "ok", "severity": None}),
            },
        }
        for cell in cells
    ]
    return _collection(features, total=total, limit=limit, offset=offset)


@router.get(
    "/{site_id}/devices.geojson",
    response_class=JSONResponse,
    responses=_RESPONSES,
    summary="The site's active devices as Point features (id, kind, cell, state)",
)
async def devices_geojson(
    request: Request,
    _: MapReader,
    site_id: SiteId,
    limit: Limit = LAYER_LIMIT,
    offset: Offset = 0,
) -> JSONResponse:
    store = _registry(request)
    await asyncio.to_thread(store.get_site, site_id)

    def fetch(size: int, start: int) -> Page[Device]:
        return store.list_devices(site=site_id, limit=size, offset=start)

    devices, total = await asyncio.to_thread(_window, fetch, limit, offset)
    raised = await asyncio.to_thread(_raised_events, get_deps(request).events, site_id)
    states = device_states(devices, raised)
    features = [
        {
            "type": "Feature",
            "id": device.id,
            "geometry": {
                "type": "Point",
                "coordinates": [device.location.lon, device.location.lat],
            },
            "properties": {
                "id": device.id,
                "kind": device.kind,
                "cell": device.cell,
                "state": states[device.id],
                "label": device.location.label,
            },
        }
        for device in devices
    ]
    return _collection(features, total=total, limit=limit, offset=offset)


def _raised_events(events: EventStore, site: str) -> list[SecurityEvent]:
    """The site's open events whose condition still holds, flood parents left out."""
    where = EventFilter(site=site, states=RAISED_STATES)
    found: list[SecurityEvent] = []
    offset = 0
    while True:
        batch = events.list_events(where, limit=EVENTS_PAGE, offset=offset)
        offset += len(batch)
        found += [e for e in batch if e.active and e.rule_id != FLOOD_RULE]
        if len(batch) < EVENTS_PAGE:
            return found


def event_state(event: SecurityEvent) -> DeviceState:
    """What one raised event makes of the devices it names (suppressed counts as raised:
    flood control hides it from the desk, not from the map)."""
    if event.mode in SET_ASIDE:
        return SET_ASIDE[event.mode]
    if event.incident in OFFLINE_INCIDENTS:
        return "offline"
    if event.incident in BATTERY_INCIDENTS:
        return "low_battery"
    return "alarm"


def worst(states: Iterable[DeviceState]) -> DeviceState:
    return min(states, key=PRECEDENCE.index, default="ok")


def device_states(devices: list[Device], raised: list[SecurityEvent]) -> dict[str, DeviceState]:
    """Each device's map state: the worst of the raised events naming it (see PRECEDENCE)."""
    named: dict[str, list[DeviceState]] = {}
    for event in raised:
        for device in {event.device, *event.devices}:
            if device is not None:
                named.setdefault(device, []).append(event_state(event))
    return {device.id: worst(named.get(device.id, ())) for device in devices}


def cell_states(raised: list[SecurityEvent]) -> dict[str, CellState]:
    """Each cell's map state (as a device's) and the highest severity of its raised
    events that are not set aside."""
    by_cell: dict[str, list[SecurityEvent]] = {}
    for event in raised:
        if event.cell is not None:
            by_cell.setdefault(event.cell, []).append(event)
    out: dict[str, CellState] = {}
    for cell, events in by_cell.items():
        counted = [e.severity for e in events if e.mode not in SET_ASIDE]
        severity = min(counted, key=lambda s: s.rank) if counted else None
        out[cell] = {
            "state": worst(event_state(e) for e in events),
            "severity": None if severity is None else severity.value,
        }
    return out


def _ring(polygon: tuple[tuple[float, float], ...]) -> list[list[float]]:
    points = [list(p) for p in polygon]
    area2 = sum(
        x0 * y1 - x1 * y0
        for (x0, y0), (x1, y1) in zip(polygon, [*polygon[1:], polygon[0]], strict=True)
    )
    if area2 < 0:  # clockwise: reverse to the right-hand rule
        points.reverse()
    return [*points, points[0]]
