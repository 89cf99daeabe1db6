"""What the grid worker's page (`api.routes.worker`) and the residents' page
(`api.routes.resident`) share: reading uploaded photos within the limits, serving them
back to operators, the events' places, and a small inline-SVG map of grid cells.

Photos are read from the multipart form at most one byte past the limit, every one of
them checked (size, then type by its first bytes) before any is stored, so a refused
upload leaves nothing behind. They are served at `/desk/photos/{id}` with the type they
were sniffed as, `nosniff`, a `Repr-Digest` (RFC 9530) of their SHA-256, and never from
a path a client named.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from accounts.roles import Role
from api.deps import ApiDeps, CellArea, get_deps
from api.problems import ApiError, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from api.roles import Principal, public, requires
from events.attachments import (
    Attachment,
    AttachmentStore,
    CorruptAttachment,
    PhotoTooLarge,
    UnsupportedPhoto,
    check_photo,
)
from events.model import SecurityEvent
from registry.errors import NotFound as NoSuchRecord
from sites.geometry import haversine_m

FORM_SLACK_BYTES: Final = 64 * 1024
"""Room for a form's text fields and multipart framing around its photos."""
PHOTO_PATH: Final = "/desk/photos/{attachment_id}"
ATTACHMENT_ID_PATTERN: Final = r"^[0-9a-f]{32}$"
PhotoViewer = Annotated[Principal, Depends(requires(Role.operator, Role.worker, cookie=True))]
Point = tuple[float, float]
"""(lon, lat)."""


class UnsupportedMediaType(ApiError):
    """An upload that is not a type the route takes (judged by its bytes)."""

    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


def upload_body_limit(photos: int, max_photo_bytes: int) -> int:
    """The request body a form with `photos` photos may need."""
    return photos * max_photo_bytes + FORM_SLACK_BYTES


def human_bytes(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    if size >= 1024:
        return f"{size / 1024:.0f} kB"
    return f"{size} bytes"


@dataclass(frozen=True, slots=True)
class Photo:
    """An uploaded photo, read and checked, not stored yet."""

    data: bytes
    name: str


def read_photos(uploads: Sequence[UploadFile], *, most: int, max_bytes: int) -> list[Photo]:
    """The photos of a form, each checked; raise 413/415/422 before anything is stored.

    A file input left empty arrives as a part without a name or bytes: it is no photo.
    """
    chosen = [u for u in uploads if u.filename or (u.size or 0) > 0]
    if len(chosen) > most:
        detail = f"{len(chosen)} photos sent; at most {most} at a time"
        if most == 0:
            detail = "this form takes no photos"
        raise InvalidInput(detail, [{"loc": ["body", "photos"], "msg": detail}])
    photos = []
    for index, upload in enumerate(chosen, start=1):
        name = (upload.filename or f"photo {index}")[-80:]
        data = upload.file.read(max_bytes + 1)
        try:
            check_photo(data, max_bytes)
        except PhotoTooLarge as exc:
            raise PayloadTooLarge(
                f"{name} is larger than {human_bytes(max_bytes)}, the most a photo may be: "
                "send a smaller one (a lower camera resolution)",
                max_bytes,
            ) from exc
        except UnsupportedPhoto as exc:
            what = "is empty" if not data else "is not a JPEG, PNG or WebP photo"
            raise UnsupportedMediaType(
                f"{name} {what} (judged by its bytes, whatever its name or type says); "
                "nothing was saved"
            ) from exc
        photos.append(Photo(data, name))
    return photos


def store_photos(
    deps: ApiDeps, event_id: str, photos: Sequence[Photo], *, uploader: str, source: str
) -> list[Attachment]:
    if not photos:
        return []
    store = attachment_store(deps)
    return [
        store.add(
            event_id,
            photo.data,
            uploader=uploader,
            source=source,
            max_bytes=deps.config.max_photo_bytes,
        )
        for photo in photos
    ]


def attachment_store(deps: ApiDeps) -> AttachmentStore:
    if deps.attachments is None:
        raise Unavailable("this hub keeps no photos (no attachment store is configured)")
    return deps.attachments


def event_photos(request: Request, event_id: str) -> list[Attachment]:
    """The event's photos, for templates (the desk's event page shows them)."""
    deps = get_deps(request)
    return [] if deps.attachments is None else deps.attachments.of_event(event_id)


def install_templates(templates: Jinja2Templates) -> None:
    """What the field pages and the photos section of the desk's event page use."""
    templates.env.globals["event_photos"] = event_photos
    templates.env.filters["human_bytes"] = human_bytes


def render(
    request: Request, name: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    templates = request.app.state.templates
    assert isinstance(templates, Jinja2Templates)
    return templates.TemplateResponse(request, name, context, status_code=status_code)


# ---------------------------------------------------------------------- places


def cells_of_site(deps: ApiDeps, site: str) -> list[CellArea]:
    """The site's cells: the registry's when it knows the site, else the site files'."""
    if deps.registry is not None:
        found = [
            CellArea(site, c.id, c.name, c.worker or "", tuple(c.polygon))
            for c in deps.registry.all_cells(site=site)
        ]
        if found:
            return found
    return list(deps.cells.get(site, ()))


def centroid(polygon: Sequence[Point]) -> Point:
    """The vertices' mean: inside the small convex-ish cells a site has."""
    return (
        sum(p[0] for p in polygon) / len(polygon),
        sum(p[1] for p in polygon) / len(polygon),
    )


def event_point(deps: ApiDeps, event: SecurityEvent, cell: CellArea | None) -> Point | None:
    """Where an event is: its own location, else its device's, else its cell's middle."""
    if event.location is not None:
        return (event.location.lon, event.location.lat)
    if event.device and deps.registry is not None:
        try:
            device = deps.registry.get_device(event.device)
        except NoSuchRecord:
            pass
        else:
            return (device.location.lon, device.location.lat)
    if cell is not None and cell.polygon:
        return centroid(cell.polygon)
    return None


def distance_m(a: Point, b: Point) -> float:
    return haversine_m(a[0], a[1], b[0], b[1])


def human_distance(metres: float | None) -> str:
    if metres is None or math.isnan(metres):
        return ""
    if metres < 1000:
        return f"{round(metres / 10) * 10:.0f} m"
    return f"{metres / 1000:.1f} km"


# ---------------------------------------------------------------------- the map


@dataclass(frozen=True, slots=True)
class MapView:
    """A planar projection of a small area onto SVG user units (as `wall.js` draws):
    x east, y south, longitude scaled by the cosine of the middle latitude."""

    min_lon: float
    max_lat: float
    kx: float
    scale: float
    view_box: str

    def xy(self, point: Point) -> tuple[float, float]:
        lon, lat = point
        return ((lon - self.min_lon) * self.kx * self.scale, (self.max_lat - lat) * self.scale)

    def points(self, polygon: Sequence[Point]) -> str:
        """An SVG `points` attribute."""
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in map(self.xy, polygon))


VIEW_W: Final = 1000.0


def map_view(points: Sequence[Point], pad: float = 0.06) -> MapView | None:
    """The view that frames `points` with a margin; None without points."""
    if not points:
        return None
    lons, lats = [p[0] for p in points], [p[1] for p in points]
    min_lon, max_lat, min_lat = min(lons), max(lats), min(lats)
    kx = math.cos(math.radians((max_lat + min_lat) / 2))
    width = (max(lons) - min_lon) * kx or 1e-6
    height = (max_lat - min_lat) or 1e-6
    scale = VIEW_W / width
    view_h = height * scale
    margin = pad * max(VIEW_W, view_h)
    box = f"{-margin:.1f} {-margin:.1f} {VIEW_W + 2 * margin:.1f} {view_h + 2 * margin:.1f}"
    return MapView(min_lon, max_lat, kx, scale, box)


@dataclass(frozen=True, slots=True)
class MapCell:
    id: str
    name: str
    points: str
    focus: bool


@dataclass(frozen=True, slots=True)
class MapMarker:
    kind: str
    """CSS class: `target` (the event), `me` (the worker), `pin` (a resident's point)."""
    x: float
    y: float
    label: str


@dataclass(frozen=True, slots=True)
class CellMap:
    """What a template needs to draw cells and markers as inline SVG."""

    view: MapView
    cells: tuple[MapCell, ...]
    markers: tuple[MapMarker, ...]
    radius: float


def cell_map(
    cells: Sequence[CellArea],
    *,
    focus: str | None = None,
    markers: Sequence[tuple[str, Point, str]] = (),
    frame: Sequence[Point] | None = None,
) -> CellMap | None:
    """The cells (`focus` highlighted) framed on `frame` (default: every cell)."""
    outline = [p for c in cells for p in c.polygon]
    view = map_view(list(frame) if frame else outline)
    if view is None:
        return None
    drawn = tuple(MapCell(c.id, c.name, view.points(c.polygon), c.id == focus) for c in cells)
    pins = tuple(MapMarker(kind, *view.xy(at), label) for kind, at, label in markers)
    box = [float(v) for v in view.view_box.split()]
    return CellMap(view, drawn, pins, radius=max(box[2], box[3]) / 60)


# ---------------------------------------------------------------------- routes

router = APIRouter(include_in_schema=False)


@router.get(PHOTO_PATH)
def photo(
    request: Request,
    principal: PhotoViewer,
    attachment_id: Annotated[str, Path(pattern=ATTACHMENT_ID_PATTERN)],
) -> Response:
    """A photo of an event, for operators, and for the worker the event is assigned to."""
    deps = get_deps(request)
    store = attachment_store(deps)
    found = store.get(attachment_id)
    if found is None:
        raise NotFound(f"no photo {attachment_id}", attachment_id=attachment_id)
    if principal.role is Role.worker:
        event = deps.events.get(found.event_id)
        if event is None or event.assignee != principal.subject:
            raise NotFound(f"no photo {attachment_id}", attachment_id=attachment_id)
    try:
        data = store.read(found)
    except CorruptAttachment as exc:
        raise Unavailable(str(exc)) from exc
    digest = base64.b64encode(binascii.unhexlify(found.sha256)).decode()
    return Response(
        data,
        media_type=found.media_type.value,
        headers={
            "Content-Disposition": f'inline; filename="{found.id}.{found.media_type.extension}"',
            "Repr-Digest": f"sha-256=:{digest}:",
            "ETag": f'"{found.sha256}"',
        },
    )


@router.get("/worker", dependencies=[Depends(public())])
def worker_shortcut() -> Response:
    """A short address for the phone's home screen."""
    return RedirectResponse("/desk/worker/", status_code=303)
