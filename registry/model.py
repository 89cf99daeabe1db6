"""Registry records as the store hands them out: frozen, plain data, no framework.

Every record carries `retired_ms`: retiring keeps the row (events and audit trails
still name it) but takes it out of service; a retired device gets no broker access.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from sensors.topics import DEFAULT_PREFIX, device_root

AttributeValue = str | int | float | bool | None
T = TypeVar("T")
Point = tuple[float, float]
"""(lon, lat) in degrees, WGS 84."""


class Status(StrEnum):
    """Which records a listing returns."""

    ACTIVE = "active"
    RETIRED = "retired"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class ScheduleRule:
    """Open from `open` to `close` (HH:MM, close may be 24:00) on the given days."""

    days: tuple[str, ...]
    open: str
    close: str


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    name: str
    timezone: str
    description: str | None = None
    schedules: Mapping[str, tuple[ScheduleRule, ...]] = field(default_factory=dict)
    """Door opening hours by name; access devices name one in attribute `schedule`."""
    created_ms: int = 0
    updated_ms: int = 0
    retired_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Worker:
    """A grid worker (网格员), dispatched to the events of the cells they look after."""

    id: str
    name: str
    phone: str | None = None
    created_ms: int = 0
    updated_ms: int = 0
    retired_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Cell:
    """A grid cell (网格): a polygon in one site with one responsible worker."""

    id: str
    site: str
    name: str
    polygon: tuple[Point, ...]
    worker: str | None = None
    created_ms: int = 0
    updated_ms: int = 0
    retired_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    """What to expect of a family of devices: its kind, how often it reports, and
    the rule thresholds that differ from the rule pack's defaults for it."""

    id: str
    kind: str
    interval_s: float
    thresholds: Mapping[str, float] = field(default_factory=dict)
    description: str | None = None
    created_ms: int = 0
    updated_ms: int = 0
    retired_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Location:
    lon: float
    lat: float
    floor: int | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """One device: its id is its MQTT topic segment and its broker username."""

    id: str
    kind: str
    site: str
    cell: str
    location: Location
    profile: str | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    created_ms: int = 0
    updated_ms: int = 0
    retired_ms: int | None = None

    @property
    def retired(self) -> bool:
        return self.retired_ms is not None

    def topic_root(self, prefix: str = DEFAULT_PREFIX) -> str:
        """The only topics this device may publish under (with `/#`)."""
        return device_root(prefix, self.site, self.kind, self.id)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing and how many records match in all."""

    items: tuple[T, ...]
    total: int
    limit: int
    offset: int
