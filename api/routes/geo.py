"""Map layers for Grafana's Geomap panel: a site's grid cells and its devices as GeoJSON.

Geomap fetches these URLs from the viewer's browser and cannot add an Authorization
header, so besides a bearer token or `X-API-Key` both routes accept the API key as the
`?api_key=` query parameter. Use a key of role `operator` made for the dashboard (read
only; it can do nothing but read the event desk and the registry); rotate it by revoking
it. The routes still declare their roles (operator, integrator; admin passes).

A device's `state` comes from the event store's active events (not closed, condition
still raised, not shelved or suppressed) that name it: `alarm` for any security event,
else `offline` (device_offline), else `low_battery`, else `ok`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from accounts.roles import Role
from api.deps import get_deps
from api.problems import Unavailable, problem_responses
from api.roles import Principal, requires
from events.model import SecurityEvent, State
from events.store import EventFilter, EventStore
from registry.model import Device
from registry.store import RegistryStore

GEOJSON: Final = "application/geo+json"
IDENT: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
OFFLINE_INCIDENTS: Final = frozenset({"device_offline"})
BATTERY_INCIDENTS: Final = frozenset({"low_battery"})
ACTIVE_STATES: Final = (State.ACTIVE_UNACKNOWLEDGED, State.ACTIVE_ACKNOWLEDGED)
EVENTS_PAGE: Final = 1000

DeviceState = Literal["ok", "alarm", "offline", "low_battery"]
SiteId = Annotated[str, Path(pattern=IDENT, description="The site's id")]
MapReader = Annotated[Principal, Depends(requires(Role.operator, Role.integrator, query_key=True))]

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


def _collection(features: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"type": "FeatureCollection", "features": features}, media_type=GEOJSON)


@router.get(
    "/{site_id}/cells.geojson",
    response_class=JSONResponse,
    responses=_RESPONSES,
    summary="The site's grid cells as Polygon features (id, name, worker)",
)
async def cells_geojson(request: Request, _: MapReader, site_id: SiteId) -> JSONResponse:
    store = _registry(request)
    await asyncio.to_thread(store.get_site, site_id)  # 404 for an unknown site
    cells = await asyncio.to_thread(store.all_cells, site=site_id)
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
    return _collection(features)


@router.get(
    "/{site_id}/devices.geojson",
    response_class=JSONResponse,
    responses=_RESPONSES,
    summary="The site's active devices as Point features (id, kind, cell, state)",
)
async def devices_geojson(request: Request, _: MapReader, site_id: SiteId) -> JSONResponse:
    store = _registry(request)
    await asyncio.to_thread(store.get_site, site_id)
    page = await asyncio.to_thread(store.all_devices)
    devices = [d for d in page if d.site == site_id]
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
    return _collection(features)


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
