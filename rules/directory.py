"""What rules know about devices beyond their messages: where they are, their cell,
their attributes and opening hours.

Built by the hub from site files or the registry; rules only read it. Kept
as plain data so rules never depend on how sites are described.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sites.geometry import haversine_m

AttributeValue = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class OpeningHours:
    """Weekly opening hours: per weekday (0 = Monday), open intervals in minutes."""

    intervals: Mapping[int, tuple[tuple[int, int], ...]]

    def is_open(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute + local.second / 60
        return any(lo <= minute < hi for lo, hi in self.intervals.get(local.weekday(), ()))


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    id: str
    kind: str
    site: str
    cell: str
    lon: float
    lat: float
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    hours: OpeningHours | None = None
    """Opening hours of a scheduled door; None: no after-hours for it."""
    thresholds: Mapping[str, float] = field(default_factory=dict)
    """Its profile's rule overrides, `<rule id>.<parameter>` -> value (rules.overrides)."""


@dataclass(frozen=True, slots=True)
class SiteInfo:
    id: str
    timezone: str
    workers: Mapping[str, str] = field(default_factory=dict)
    """Grid worker id per cell."""

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class Directory:
    """Sites and devices by id; an empty directory is valid (device facts unknown)."""

    sites: Mapping[str, SiteInfo] = field(default_factory=dict)
    devices: Mapping[str, DeviceInfo] = field(default_factory=dict)

    def device(self, device_id: str) -> DeviceInfo | None:
        return self.devices.get(device_id)

    def workers(self) -> dict[str, str]:
        """Grid worker per cell, over every site."""
        return {c: w for site in self.sites.values() for c, w in site.workers.items()}


def distance_m(a: DeviceInfo, b: DeviceInfo) -> float:
    return haversine_m(a.lon, a.lat, b.lon, b.lat)
