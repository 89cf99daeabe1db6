"""What people hand the registry (API bodies, import rows), validated strictly.

Pydantic at the boundary: these specs become the frozen records of `registry.model`
inside. The same specs serve the HTTP API and bulk import, so a row that imports is a
body the API accepts and the other way round.
"""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from registry.model import AttributeValue
from sensors.base import Identifier
from sites.geometry import polygon_problem

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(max_length=2000)]
Phone = Annotated[str, StringConstraints(pattern=r"^[+0-9A-Za-z() .-]{2,32}$")]
Longitude = Annotated[float, Field(ge=-180, le=180)]
Latitude = Annotated[float, Field(ge=-90, le=90)]
ClockTime = Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-4]):[0-5][0-9]$")]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
AttributeKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
Attributes = Annotated[dict[AttributeKey, AttributeValue], Field(max_length=64)]


def _known_zone(value: str) -> str:
    """Refuse a zone the tz database lacks: every schedule would be silently wrong."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA time zone {value!r}") from exc
    return value


class _Spec(BaseModel):
    """Operator input: unknown keys are typos."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleRuleSpec(_Spec):
    days: list[Day] = Field(min_length=1)
    open: ClockTime
    close: ClockTime

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleRuleSpec:
        """24:00 is the only 24:xx; close after open (overnight hours are two rules)."""
        for clock in (self.open, self.close):
            if clock.startswith("24") and clock != "24:00":
                raise ValueError(f"{clock} is not a time of day (24:00 is the latest)")
        if self.close <= self.open:
            raise ValueError(f"close {self.close} must be after open {self.open}")
        return self


class SiteSpec(_Spec):
    id: Identifier
    name: Name
    timezone: str = Field(examples=["Asia/Shanghai"])
    description: Text | None = None
    schedules: dict[Identifier, list[ScheduleRuleSpec]] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _known_zone(value)


class SitePatch(_Spec):
    name: Name | None = None
    timezone: str | None = None
    description: Text | None = None
    schedules: dict[Identifier, list[ScheduleRuleSpec]] | None = None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else _known_zone(value)


class WorkerSpec(_Spec):
    id: Identifier
    name: Name
    phone: Phone | None = None


class WorkerPatch(_Spec):
    name: Name | None = None
    phone: Phone | None = None


def _polygon(value: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(value) > 1 and value[0] == value[-1]:
        value = value[:-1]
    problem = polygon_problem(value)
    if problem:
        raise ValueError(problem)
    return value


class CellSpec(_Spec):
    id: Identifier
    site: Identifier
    name: Name
    worker: Identifier | None = None
    polygon: list[tuple[Longitude, Latitude]] = Field(
        min_length=3,
        max_length=1000,
        examples=[[[113.3875, 22.5167], [113.3894, 22.5167], [113.3894, 22.5180]]],
    )
    """(lon, lat) vertices; a closing vertex equal to the first is dropped."""

    @field_validator("polygon")
    @classmethod
    def _valid_polygon(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return _polygon(value)


class CellPatch(_Spec):
    name: Name | None = None
    worker: Identifier | None = None
    polygon: list[tuple[Longitude, Latitude]] | None = Field(
        default=None, min_length=3, max_length=1000
    )

    @field_validator("polygon")
    @classmethod
    def _valid_polygon(
        cls, value: list[tuple[float, float]] | None
    ) -> list[tuple[float, float]] | None:
        return None if value is None else _polygon(value)


ThresholdKey = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Thresholds = Annotated[dict[ThresholdKey, float], Field(max_length=128)]


class ProfileSpec(_Spec):
    id: Identifier
    kind: Identifier
    interval_s: float = Field(gt=0, le=7 * 86400)
    """How often a healthy device of this profile reports (s)."""
    thresholds: Thresholds = Field(default_factory=dict, examples=[{"smoke_high.above": 0.2}])
    """Per-profile overrides, `<rule id>.<parameter>` -> value."""
    description: Text | None = None


class ProfilePatch(_Spec):
    interval_s: float | None = Field(default=None, gt=0, le=7 * 86400)
    thresholds: Thresholds | None = None
    description: Text | None = None


class LocationSpec(_Spec):
    lon: Longitude
    lat: Latitude
    floor: int | None = Field(default=None, ge=-10, le=300)
    label: Name | None = None


class DeviceSpec(_Spec):
    id: Identifier
    kind: Identifier
    site: Identifier
    cell: Identifier
    location: LocationSpec
    profile: Identifier | None = None
    attributes: Attributes = Field(default_factory=dict)


class DevicePatch(_Spec):
    """What may change about a device; id, kind and site are its topic and never change."""

    cell: Identifier | None = None
    location: LocationSpec | None = None
    profile: Identifier | None = None
    attributes: Attributes | None = None


class Bundle(_Spec):
    """Everything one import file may carry, applied together or not at all."""

    sites: list[SiteSpec] = Field(default_factory=list)
    workers: list[WorkerSpec] = Field(default_factory=list)
    cells: list[CellSpec] = Field(default_factory=list)
    profiles: list[ProfileSpec] = Field(default_factory=list)
    devices: list[DeviceSpec] = Field(default_factory=list)
