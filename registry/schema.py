"""What people hand the registry (API bodies, import rows), validated strictly.

Pydantic at the boundary: these specs become the frozen records of `registry.model`
inside. The same specs serve the HTTP API and bulk import, so a row that imports is a
body the API accepts and the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
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
from sites.model import MAX_ZONE_NAME, SiteId, known_zone

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
    return known_zone(value)


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
    id: SiteId
    name: Name
    timezone: str = Field(max_length=MAX_ZONE_NAME, examples=["Asia/Shanghai"])
    description: Text | None = None
    schedules: dict[Identifier, list[ScheduleRuleSpec]] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _known_zone(value)


class SitePatch(_Spec):
    name: Name | None = None
    timezone: str | None = Field(default=None, max_length=MAX_ZONE_NAME)
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


@dataclass(frozen=True, slots=True)
class Bounds:
    """The values a threshold parameter may take (inclusive unless `low_open`)."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False

    def problem(self, value: float) -> str | None:
        if not math.isfinite(value):
            return "must be a finite number"
        if self.integer and value != int(value):
            return "must be a whole number"
        if (value <= self.low if self.low_open else value < self.low) or value > self.high:
            low = "above" if self.low_open else "at least"
            return f"must be {low} {self.low:.15g} and at most {self.high:.15g}"
        return None


MAX_THRESHOLD_DURATION_S: Final = 30 * 86_400
_DURATION: Final = Bounds(0, MAX_THRESHOLD_DURATION_S)
_LIMIT: Final = Bounds(-1e6, 1e6)
THRESHOLD_BOUNDS: Final[Mapping[str, Bounds]] = {
    "above": _LIMIT,
    "below": _LIMIT,
    "clear_at": _LIMIT,
    "at_least": Bounds(0, 100_000, integer=True),
    "at_most": Bounds(0, 100_000, integer=True),
    "max_missing": Bounds(0, 1_000_000, integer=True),
    "max_speed_m_s": Bounds(0, 1_000, low_open=True),
    "min_distance_m": Bounds(0, 20_000_000),
    "for": _DURATION,
    "within": _DURATION,
    "after": _DURATION,
    "clear_for": _DURATION,
    "confirm_after": _DURATION,
}
"""Per `<rule id>.<parameter>`: what the parameter accepts (durations in seconds, at
most 30 days). The same table as `rules.overrides.PARAMETER_BOUNDS` (the rules skip a
value out of it; the registry cannot import the rules, a test keeps the two equal).
Parameters not listed still must be finite and within the limits' range."""
_OTHER: Final = _LIMIT


def _bounded_thresholds(value: dict[str, float]) -> dict[str, float]:
    """Refuse non-finite and out-of-range values, naming the key (a bad duration such
    as 1e308 must never reach the rules)."""
    problems = []
    for key, number in value.items():
        parameter = key.rpartition(".")[2]
        problem = THRESHOLD_BOUNDS.get(parameter, _OTHER).problem(number)
        if problem is not None:
            problems.append(f"{key}: {problem} (got {number!r})")
    if problems:
        raise ValueError("; ".join(problems))
    return value


Thresholds = Annotated[
    dict[ThresholdKey, float], Field(max_length=128), AfterValidator(_bounded_thresholds)
]


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
