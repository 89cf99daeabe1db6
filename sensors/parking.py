"""Parking (kind `parking`): in-ground bay sensors and car-park entrance counters.

Telemetry has two shapes. A bay sensor reports `bay_id` + `occupied`, as the City of
Melbourne sensors in shared/data/parking/sensors_T11-18.csv (bay_id, status
Present/Unoccupied → `occupied`, lat, lon). A lot counter reports `capacity` +
`occupancy`, as UCI "Parking Birmingham" in shared/data/parking/birmingham_parking.csv
(SystemCodeNumber → `lot`, Capacity, Occupancy, LastUpdated → `ts`). Counters drift:
the dataset has negative and over-capacity occupancy; both are stored so rules flag them.

Physical bounds (a value outside is refused, `invalid_payload` naming the field):
`capacity` 0 … 100 000 vehicles (the largest car parks hold ~20 000), `occupancy`
-100 000 … 100 000 (drifted counters stay far inside), `lat` -90 … 90, `lon`
-180 … 180. They also keep every value storable (InfluxDB integers are int64).

Licence plates (from camera-equipped bays) leave this module only as a keyed hash.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from sensors.base import (
    EVENT,
    TELEMETRY,
    DeclaredValues,
    DecodeContext,
    Envelope,
    FieldSpec,
    Identifier,
    Point,
    SensorKind,
)

NAME: Final = "parking"

# Physical bounds (module docstring); a drifting counter may go below zero or above capacity.
MAX_VEHICLES: Final = 100_000
Capacity = Annotated[int, Field(ge=0, le=MAX_VEHICLES)]
Occupancy = Annotated[int, Field(ge=-MAX_VEHICLES, le=MAX_VEHICLES)]
# Car-park names as operators write them ("NIA North" in the Birmingham data): an
# Identifier plus inner spaces. Bounded per counter, so fine as a tag.
LotName = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9 _.:-]*[A-Za-z0-9_.:-])?$"
    ),
]

_PLATE_SEPARATORS: Final = re.compile(r"[\s\-.·•]")  # includes the middle dot of 京A·12345


def normalise_plate(plate: str) -> str:
    """Upper-case, no spaces or separators, so "ab12 cde" and "AB12-CDE" hash alike."""
    normalised = _PLATE_SEPARATORS.sub("", plate.upper())
    if not normalised:
        raise ValueError("licence plate is only spaces and separators")
    return normalised


Plate = Annotated[
    str, StringConstraints(min_length=1, max_length=32), AfterValidator(normalise_plate)
]
Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]

ParkingEventType = Literal["vehicle_arrived", "vehicle_left", "tamper", "fault"]

_BAY_SHAPE: Final = ("bay_id", "occupied")
_LOT_SHAPE: Final = ("capacity", "occupancy")
_LOT_FIELDS: Final = (*_LOT_SHAPE, "lot")


class _ParkingPayload(Envelope):
    """Common part of parking payloads: where in the car park, and the plate if seen."""

    # Non-finite floats cannot be written to InfluxDB; clear plates must not end up in
    # validation error messages (and from there in logs).

    bay_id: Identifier | None = None
    zone: Identifier | None = None
    plate: Plate | None = Field(default=None, repr=False)
    """Licence plate in clear (normalised), from a camera: hashed by `to_point`, never stored."""


class ParkingTelemetry(_ParkingPayload):
    """Either one bay's state (bay sensor) or a whole lot's count (lot counter)."""

    occupied: bool | None = None
    capacity: Capacity | None = None
    occupancy: Occupancy | None = None
    """Vehicles counted in; may be negative or above capacity when the counter drifts."""
    lot: LotName | None = None
    lat: Latitude | None = None
    lon: Longitude | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> ParkingTelemetry:
        """Accept exactly one of the two shapes, naming what is missing or mixed."""
        carried = self.__dict__  # runs for every message: no attribute machinery
        bay = [name for name in _BAY_SHAPE if carried[name] is not None]
        lot = [name for name in _LOT_FIELDS if carried[name] is not None]
        if bay and lot:
            raise ValueError(
                f"parking telemetry mixes bay fields {bay} with lot fields {lot}: "
                "send bay_id+occupied (bay sensor) or capacity+occupancy (lot counter)"
            )
        if self.plate is not None and not bay:
            raise ValueError("parking telemetry: plate belongs to a bay (bay_id+occupied)")
        shape = _BAY_SHAPE if bay else _LOT_SHAPE if lot else None
        if shape is None:
            raise ValueError(
                "parking telemetry needs bay_id+occupied (bay sensor) "
                "or capacity+occupancy (lot counter)"
            )
        missing = [name for name in shape if carried[name] is None]
        if missing:
            raise ValueError(f"parking telemetry: {'+'.join(shape)} needs {missing} too")
        return self


class ParkingEvent(_ParkingPayload):
    """A vehicle arriving or leaving (optionally at a bay, with its plate), tamper, fault."""

    event: ParkingEventType


FIELDS: Final = (
    FieldSpec("seq", int, "", "Per-device message counter; gaps mean lost messages"),
    FieldSpec("occupied", bool, "", "Bay sensor: a vehicle is present"),
    FieldSpec("capacity", int, "vehicles", "Lot counter: spaces in the lot"),
    FieldSpec("occupancy", int, "vehicles", "Lot counter: vehicles in (may be <0 or >capacity)"),
    FieldSpec("plate_hash", str, "", "Keyed hash of the licence plate (never clear)"),
    FieldSpec("lat", float, "°", "Latitude of the bay or lot (WGS 84)"),
    FieldSpec("lon", float, "°", "Longitude of the bay or lot (WGS 84)"),
    FieldSpec("event", str, "", "What happened: vehicle_arrived, vehicle_left, tamper, fault"),
)
# bay_id, zone and lot are tags: bounded per device (a sensor or camera covers a few
# bays, a counter one lot), grouped by, and they keep two bays' points at one timestamp
# apart. The plate hash is unbounded: a field.
TAGS: Final = ("bay_id", "zone", "lot")
_VALUES: Final = DeclaredValues(NAME, FIELDS)


def to_point(channel: str, payload: Envelope, ctx: DecodeContext) -> Point:
    """Map a validated parking payload to bay/zone/lot tags and fields, hashing plates."""
    expected = (
        ParkingTelemetry if channel == TELEMETRY else ParkingEvent if channel == EVENT else None
    )
    if expected is None or not isinstance(payload, expected):
        raise TypeError(f"{NAME}: no mapping for {type(payload).__name__} on {channel!r}")
    fields = _VALUES(payload)
    if payload.plate is not None:
        fields["plate_hash"] = ctx.hash_identifier(payload.plate)
    carried = payload.__dict__  # `lot` is not on events: getattr would take pydantic's slow path
    tags = {name: value for name in TAGS if isinstance(value := carried.get(name), str)}
    return Point(fields=fields, tags=tags)


KIND: Final = SensorKind(
    name=NAME,
    measurement=NAME,
    description="Parking bay sensors and car-park counters: occupancy, arrivals, tamper",
    channels=MappingProxyType({TELEMETRY: ParkingTelemetry, EVENT: ParkingEvent}),
    fields=FIELDS,
    tags=TAGS,
    to_point=to_point,
)
