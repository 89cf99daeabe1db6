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

A device's `state` comes from the event store's active events (not closed, condition
still raised, not shelved or suppressed) that name it: `alarm` for any security event,
else `offline` (device_offline), else `low_battery`, else `ok`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from accounts.roles import Role
from api.deps import get_deps
from api.problems import Unavailable, problem_responses
from api.roles import Principal, requires
from events.model import SecurityEvent, State
from events.store import EventFilter, EventStore
from registry.model import Cell, Device, Page
from registry.store import MAX_PAGE, RegistryStore

GEOJSON: Final = "application/geo+json"
IDENT: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
OFFLINE_INCIDENTS: Final = frozenset({"device_offline"})
BATTERY_INCIDENTS: Final = frozenset({"low_battery"})
ACTIVE_STATES: Final = (State.ACTIVE_UNACKNOWLEDGED, State.ACTIVE_ACKNOWLEDGED)
EVENTS_PAGE: Final = 1000

T = TypeVar("T")
DeviceState = Literal["ok", "alarm", "offline", "low_battery"]
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
    features = [
        {
            "type": "Feature",
            "id": cell.id,
            "geometry": {
                "type": "Polygon",
                # RFC 7946: a closed ring, exterior counter-clockwise.
                "coordinates": [_ring(cell.polygon)],
            },
            "properties": {"id": cell.id, "name": cell.name, "worker": cell.worker},
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
    events = get_deps(request).events
    active = await asyncio.to_thread(_active_events, events, site_id)
    states = device_states(devices, active)
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


def _active_events(events: EventStore, site: str) -> list[SecurityEvent]:
    where = EventFilter(site=site, states=ACTIVE_STATES)
    found: list[SecurityEvent] = []
    while True:
        batch = events.list_events(where, limit=EVENTS_PAGE, offset=len(found))
        found += batch
        if len(batch) < EVENTS_PAGE:
            return found


def device_states(devices: list[Device], active: list[SecurityEvent]) -> dict[str, DeviceState]:
    """Each device's map state from the active events naming it (precedence: alarm,
    offline, low_battery, ok)."""
    incidents: dict[str, set[str]] = {}
    for event in active:
        for named in {event.device, *event.devices}:
            if named is not None:
                incidents.setdefault(named, set()).add(event.incident)
    out: dict[str, DeviceState] = {}
    for device in devices:
        found = incidents.get(device.id, set())
        if found - OFFLINE_INCIDENTS - BATTERY_INCIDENTS:
            out[device.id] = "alarm"
        elif found & OFFLINE_INCIDENTS:
            out[device.id] = "offline"
        elif found & BATTERY_INCIDENTS:
            out[device.id] = "low_battery"
        else:
            out[device.id] = "ok"
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
