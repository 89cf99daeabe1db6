"""The site file: one community's grid cells, devices and door schedules (YAML).

Simulators and scenarios run on a `Site`; the hub reads the same file (or the registry
imported from it) to know where a device is and whom to dispatch. Operators write these
files by hand, so the models are strict (unknown keys, wrong types and dangling
references are errors) and `load_site` reports every problem with its path and line.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, Literal, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from sensors.base import Identifier
from sensors.parking import LotName
from sensors.topics import is_topic_segment
from sensors.yaml_doc import (
    DocumentError,
    Loc,
    Problem,
    SafeDumper,
    compose,
    error_message,
    format_loc,
    locate,
)
from sites.geometry import haversine_m, point_in_polygon, signed_area

DEMO_SITES: Final = ("yingyang", "melbourne_bays")

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(max_length=2000)]
Unit = Annotated[str, StringConstraints(min_length=1, max_length=32)]
Phone = Annotated[str, StringConstraints(pattern=r"^[+0-9A-Za-z() .-]{2,32}$")]
Longitude = Annotated[float, Field(ge=-180, le=180)]
Latitude = Annotated[float, Field(ge=-90, le=90)]
ClockTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-4]):[0-5][0-9]$")]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Room = Literal[
    "kitchen", "bathroom", "bedroom", "living", "corridor", "stairwell", "plant", "garage"
]
Kind = Literal["access", "smoke", "parking"]

WEEKDAYS: Final[tuple[Day, ...]] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# Loc of a value in the file: keys and list indexes from the document root.


class _Strict(BaseModel):
    """Operator-written config: unknown keys are typos, and a loaded site never changes."""

    # strict: YAML already typed every scalar; "yes" for a bool or "12" for an int is a
    # mistake to report, not to guess at.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Worker(_Strict):
    """The grid worker (网格员) dispatched to events in a cell."""

    id: Identifier
    name: Name
    phone: Phone | None = None


class Location(_Strict):
    """Where a device is (WGS 84), optionally which floor and a label for the map."""

    lon: Longitude
    lat: Latitude
    floor: int | None = Field(default=None, ge=-10, le=300)
    label: Name | None = None


class Cell(_Strict):
    """A grid cell (网格): a polygon with one responsible worker."""

    id: Identifier
    name: Name
    worker: Worker
    polygon: list[tuple[Longitude, Latitude]]
    """(lon, lat) vertices; the closing vertex is optional and dropped when given."""

    @field_validator("polygon", mode="before")
    @classmethod
    def _pairs_as_tuples(cls, value: object) -> object:
        """Accept YAML's `[lon, lat]` lists as the (lon, lat) pairs they mean."""
        if isinstance(value, list):
            return [tuple(p) if isinstance(p, list) else p for p in value]
        return value

    @field_validator("polygon")
    @classmethod
    def _a_real_polygon(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """Drop the closing vertex; refuse fewer than 3 distinct vertices or zero area."""
        if len(value) > 1 and value[0] == value[-1]:
            value = value[:-1]
        if len(set(value)) < 3:
            raise ValueError("a polygon needs at least 3 distinct (lon, lat) points")
        if len(set(value)) != len(value):
            raise ValueError("polygon repeats a vertex (only the closing one may repeat)")
        if signed_area(value) == 0:
            raise ValueError("polygon has zero area (all points on one line)")
        return value

    def contains(self, location: Location) -> bool:
        """Whether a location lies strictly inside this cell (see `point_in_polygon`)."""
        return point_in_polygon((location.lon, location.lat), self.polygon)


class AccessAttributes(_Strict):
    """A door controller's door and what kind of door it is."""

    door: Identifier
    """Door id on the controller: the `door` tag of its readings."""
    schedule: Identifier | None = None
    """Name of the site schedule of opening hours; none means always open (no after-hours)."""
    emergency_exit: bool = False
    elderly_resident: bool = False
    """The flat door of an elderly resident living alone: no movement for long is an event."""
    unit: Unit | None = None
    """Flat or office behind the door, for the worker's dispatch."""

    @model_validator(mode="after")
    def _consistent(self) -> AccessAttributes:
        """An elderly resident's flat door is a flat door with a known flat."""
        if self.elderly_resident and self.emergency_exit:
            raise ValueError("a door is not both an emergency exit and an elderly resident's flat")
        if self.elderly_resident and self.unit is None:
            raise ValueError("elderly_resident needs unit: the flat the grid worker visits")
        return self


class SmokeAttributes(_Strict):
    """Which room a detector watches: kitchens and bathrooms make nuisance alarms."""

    room: Room
    unit: Unit | None = None


class ParkingAttributes(_Strict):
    """Exactly one shape: an in-ground bay sensor, or a car-park entrance counter."""

    bay_id: Identifier | None = None
    zone: Identifier | None = None
    fire_lane: bool = False
    reserved: bool = False
    lot: LotName | None = None
    capacity: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_shape(self) -> ParkingAttributes:
        """Refuse a mix of bay and lot attributes, naming both sides."""
        bay = [n for n in ("bay_id", "zone", "fire_lane", "reserved") if getattr(self, n)]
        lot = [n for n in ("lot", "capacity") if getattr(self, n) is not None]
        if bay and lot:
            raise ValueError(
                f"parking attributes mix bay fields {bay} with lot fields {lot}: "
                "a device is a bay sensor (bay_id, zone, fire_lane, reserved) "
                "or a lot counter (lot, capacity)"
            )
        if not lot and self.bay_id is None:
            raise ValueError(
                "parking attributes need bay_id (bay sensor) or lot+capacity (lot counter)"
            )
        if lot and (self.lot is None or self.capacity is None):
            raise ValueError("a lot counter needs both lot and capacity")
        return self

    @property
    def is_bay(self) -> bool:
        return self.bay_id is not None


class _Device(_Strict):
    id: Identifier
    """MQTT topic segment and `device` tag: unique within the site."""
    cell: Identifier
    location: Location


class AccessDevice(_Device):
    kind: Literal["access"]
    attributes: AccessAttributes


class SmokeDevice(_Device):
    kind: Literal["smoke"]
    attributes: SmokeAttributes


class ParkingDevice(_Device):
    kind: Literal["parking"]
    attributes: ParkingAttributes


Device = Annotated[AccessDevice | SmokeDevice | ParkingDevice, Field(discriminator="kind")]


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


MAX_ZONE_NAME: Final = 64
"""No IANA zone name is longer (the longest is about 30 characters)."""


def known_zone(value: str) -> str:
    """`value` when it names a zone of the tz database; ValueError (with a message for
    people) otherwise. Every schedule would be silently wrong in a wrong zone.

    `ZoneInfo` raises more than ValueError for names that are not zones: a folder of
    the database (`America`) raises IsADirectoryError, a name too long for the file
    system OSError, a missing one ZoneInfoNotFoundError (a KeyError): all are refused."""
    if len(value) > MAX_ZONE_NAME:
        raise ValueError(
            f"a time zone name is at most {MAX_ZONE_NAME} characters (e.g. Asia/Shanghai)"
        )
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown IANA time zone {value!r}") from exc
    return value


class ScheduleRule(_Strict):
    """Open from `open` (inclusive) to `close` (exclusive) on the given days.

    Overnight hours (22:00-06:00) are two rules: one to 24:00, one from 00:00.
    """

    days: list[Day] = Field(min_length=1)
    open: ClockTime
    close: ClockTime

    @field_validator("open", "close", mode="before")
    @classmethod
    def _quoted(cls, value: object) -> object:
        """Explain YAML 1.1's base-60 trap: unquoted 18:00 loads as the integer 1080."""
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(
                f"times must be quoted strings like '18:00' "
                f"(YAML read an unquoted time as the number {value})"
            )
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleRule:
        """Refuse repeated days, 24:xx other than 24:00, and close not after open."""
        if len(set(self.days)) != len(self.days):
            raise ValueError(f"days repeat: {self.days}")
        for clock in (self.open, self.close):
            if clock.startswith("24") and clock != "24:00":
                raise ValueError(f"{clock} is not a time of day (24:00 is the latest)")
        if self.open == "24:00":
            raise ValueError("open 24:00 is the end of the day; use 00:00 of the next day")
        if _minutes(self.close) <= _minutes(self.open):
            raise ValueError(
                f"close {self.close} must be after open {self.open} "
                "(split overnight hours into two rules)"
            )
        return self

    @property
    def minutes(self) -> tuple[int, int]:
        """Open and close as minutes of the day (close may be 1440)."""
        return _minutes(self.open), _minutes(self.close)

    def covers(self, day: Day, minute: float) -> bool:
        return day in self.days and _minutes(self.open) <= minute < _minutes(self.close)


class Schedule(_Strict):
    """Opening hours of doors: outside them an access is after-hours."""

    description: Text | None = None
    rules: list[ScheduleRule] = Field(min_length=1)

    def is_open(self, when: datetime) -> bool:
        """Whether the door is open at this local wall-clock time (tz already applied)."""
        day = WEEKDAYS[when.weekday()]
        minute = when.hour * 60 + when.minute + (when.second + when.microsecond / 1e6) / 60
        return any(rule.covers(day, minute) for rule in self.rules)

    def is_always_open(self) -> bool:
        """Whether the rules cover the whole week: such a door has no after-hours."""
        for day in WEEKDAYS:
            reached = 0
            for start, end in sorted(r.minutes for r in self.rules if day in r.days):
                if start > reached:
                    return False
                reached = max(reached, end)
            if reached < 24 * 60:
                return False
        return True


class SiteProblems(ValueError):
    """Cross-reference problems of a site, each with the loc of the offending value."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{format_loc(loc)}: {message}" for loc, message in problems))


RESERVED_SITE_IDS: Final = frozenset({"events", "login", "logout", "photos", "status", "worker"})
"""Names the desk's and the residents' own pages take where a site id goes in a URL
(`/desk/worker/`, `/desk/photos/<id>`, `/resident/status/<token>`, ...): a site with one
of them would have pages that never show (checked by a test against the API's routes)."""


def _not_reserved(value: str) -> str:
    if value in RESERVED_SITE_IDS:
        raise ValueError(
            f"site id {value!r} is reserved for the desk's own pages "
            f"({', '.join(sorted(RESERVED_SITE_IDS))}); choose another"
        )
    return value


SiteId = Annotated[Identifier, AfterValidator(_not_reserved)]
"""A site's id: an `Identifier` that is none of `RESERVED_SITE_IDS`."""


class Site(_Strict):
    """One community: where its cells are, which devices it has, when doors open."""

    site: SiteId
    """MQTT topic segment and `site` tag."""
    name: Name
    timezone: str
    """IANA zone name (e.g. Asia/Shanghai): schedules are in this local time."""
    description: Text | None = None
    cells: list[Cell] = Field(min_length=1)
    devices: list[Device]
    schedules: dict[Identifier, Schedule] = Field(default_factory=dict)

    _cells: dict[str, Cell] = PrivateAttr(default_factory=dict)
    _devices: dict[str, AccessDevice | SmokeDevice | ParkingDevice] = PrivateAttr(
        default_factory=dict
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_zone(value)

    @model_validator(mode="after")
    def _references(self) -> Site:
        """Check ids are unique and references resolve; report all problems at once."""
        problems: list[tuple[Loc, str]] = []
        cells: dict[str, Cell] = {}
        for i, cell in enumerate(self.cells):
            if cell.id in cells:
                problems.append((("cells", i, "id"), f"duplicate cell id {cell.id!r}"))
            cells.setdefault(cell.id, cell)
        devices: dict[str, AccessDevice | SmokeDevice | ParkingDevice] = {}
        bays: dict[str, str] = {}
        for i, device in enumerate(self.devices):
            at: Loc = ("devices", i)
            if device.id in devices:
                problems.append(((*at, "id"), f"duplicate device id {device.id!r}"))
            devices.setdefault(device.id, device)
            if not is_topic_segment(device.id):
                problems.append(((*at, "id"), f"{device.id!r} is not an MQTT topic segment"))
            home = cells.get(device.cell)
            if home is None:
                problems.append(((*at, "cell"), f"unknown cell {device.cell!r}"))
            elif not home.contains(device.location):
                problems.append(
                    (
                        (*at, "location"),
                        f"({device.location.lon}, {device.location.lat}) is not inside "
                        f"cell {home.id!r}",
                    )
                )
            attrs = device.attributes
            if (
                isinstance(attrs, AccessAttributes)
                and attrs.schedule is not None
                and attrs.schedule not in self.schedules
            ):
                problems.append(
                    ((*at, "attributes", "schedule"), f"unknown schedule {attrs.schedule!r}")
                )
            if isinstance(attrs, ParkingAttributes) and attrs.bay_id is not None:
                if attrs.bay_id in bays:
                    problems.append(
                        (
                            (*at, "attributes", "bay_id"),
                            f"bay {attrs.bay_id!r} already belongs to {bays[attrs.bay_id]!r}",
                        )
                    )
                bays.setdefault(attrs.bay_id, device.id)
        if problems:
            raise SiteProblems(problems)
        self._cells = cells
        self._devices = devices
        return self

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def cell(self, cell_id: str) -> Cell:
        """The cell with this id (KeyError if none)."""
        return self._cells[cell_id]

    def device(self, device_id: str) -> AccessDevice | SmokeDevice | ParkingDevice:
        """The device with this id (KeyError if none)."""
        return self._devices[device_id]

    @overload
    def devices_of(self, kind: Literal["access"]) -> list[AccessDevice]: ...
    @overload
    def devices_of(self, kind: Literal["smoke"]) -> list[SmokeDevice]: ...
    @overload
    def devices_of(self, kind: Literal["parking"]) -> list[ParkingDevice]: ...
    def devices_of(
        self, kind: Kind
    ) -> list[AccessDevice] | list[SmokeDevice] | list[ParkingDevice]:
        """Devices of one kind, in file order, typed by kind."""
        if kind == "access":
            return [d for d in self.devices if isinstance(d, AccessDevice)]
        if kind == "smoke":
            return [d for d in self.devices if isinstance(d, SmokeDevice)]
        return [d for d in self.devices if isinstance(d, ParkingDevice)]

    def schedule_of(self, device: AccessDevice) -> Schedule | None:
        """The door's schedule, or None for a door without opening hours."""
        name = device.attributes.schedule
        return None if name is None else self.schedules[name]

    def local_time(self, instant: datetime) -> datetime:
        """An aware instant as the site's wall-clock time (what schedules speak)."""
        if instant.tzinfo is None:
            raise ValueError("local_time needs an aware datetime; naive time is ambiguous")
        return instant.astimezone(self.tz)


def distance_m(a: Location, b: Location) -> float:
    """Great-circle distance in metres between two locations."""
    return haversine_m(a.lon, a.lat, b.lon, b.lat)


# --- YAML ---------------------------------------------------------------------------


class SiteError(DocumentError):
    """A site file that cannot be used; the message lists every problem found."""


def parse_site(text: str, source: str = "<site>") -> Site:
    """Validate a site from YAML text; SiteError lists every problem with its line."""
    root, data, problems = compose(text)
    if root is None and problems:
        raise SiteError(source, problems)
    if not isinstance(data, dict):
        problems.append(Problem("", 1, "a site file is a YAML mapping (site, name, ...)"))
        raise SiteError(source, problems)
    try:
        site = Site.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, SiteProblems):
                located = [(error["loc"] + loc, msg) for loc, msg in cause.problems]
            else:
                located = [(error["loc"], error_message(error))]
            for loc, msg in located:
                clean, line = locate(root, loc)
                problems.append(Problem(format_loc(clean), line, msg))
        raise SiteError(source, problems) from None
    if problems:
        raise SiteError(source, problems)
    return site


def load_site(path: str | Path) -> Site:
    """Read and validate a site file (safe YAML only: no Python objects)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteError(str(path), [Problem("", None, f"cannot read: {exc}")]) from exc
    return parse_site(text, str(path))


class _Flow(list[Any]):
    """A list dumped on one line: coordinates and day lists read better that way."""


class _FlowMap(dict[str, Any]):
    """A mapping dumped on one line: locations and schedule rules."""


class _SiteDumper(SafeDumper):  # type: ignore[misc]
    pass


def _represent_flow(dumper: yaml.SafeDumper, value: _Flow) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)


def _represent_flow_map(dumper: yaml.SafeDumper, value: _FlowMap) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", value, flow_style=True)


_SiteDumper.add_representer(_Flow, _represent_flow)
_SiteDumper.add_representer(_FlowMap, _represent_flow_map)


def _styled(site: Site) -> dict[str, Any]:
    """The site as plain data, defaults left out, short leaves marked for flow style."""
    data = site.model_dump(mode="python", exclude_none=True, exclude_defaults=True)
    data.setdefault("schedules", {})
    for cell in data["cells"]:
        cell["polygon"] = [_Flow(point) for point in cell["polygon"]]
    data["devices"] = [
        {
            "id": device["id"],
            "kind": device["kind"],
            "cell": device["cell"],
            "location": _FlowMap(device["location"]),
            "attributes": _FlowMap(device["attributes"]),
        }
        for device in data["devices"]
    ]
    for schedule in data["schedules"].values():
        schedule["rules"] = [_FlowMap(rule, days=_Flow(rule["days"])) for rule in schedule["rules"]]
    return data


def dump_site(site: Site) -> str:
    """YAML for a site in field order (stable bytes); `parse_site` gives it back equal."""
    text: str = yaml.dump(
        _styled(site),
        Dumper=_SiteDumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )
    return text


def load_site_ref(ref: str) -> Site:
    """A site file, or the name of a demo site when no such file exists."""
    path = Path(ref)
    if ref in DEMO_SITES and not path.exists():
        path = demo_site_path(ref)
    return load_site(path)


def demo_site_path(name: str) -> Path:
    """Path of a demo site shipped with the package (`yingyang`, `melbourne_bays`)."""
    if name not in DEMO_SITES:
        raise ValueError(f"no demo site {name!r}; choose from {', '.join(DEMO_SITES)}")
    # Next to this module rather than importlib.resources: on Python 3.11 files() fails
    # for packages under setuptools' editable finder (NotADirectoryError).
    return Path(__file__).with_name("demo") / f"{name}.yaml"
