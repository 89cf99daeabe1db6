"""Smoke detectors (kind `smoke`): a smoke/CO alarm or a multi-sensor fire-detection board.

Telemetry mirrors the columns of the Kaggle "Smoke Detection Dataset" in
shared/data/smoke/smoke_detection_iot_first10080_allcols.csv: UTC → `ts` (as ms),
Temperature[C] → `temperature`, Humidity[%] → `humidity`, TVOC[ppb] → `tvoc`,
eCO2[ppm] → `eco2`, Raw H2 → `raw_h2`, Raw Ethanol → `raw_ethanol`, Pressure[hPa] →
`pressure`, PM1.0/PM2.5 → `pm1_0`/`pm2_5`, NC0.5/NC1.0/NC2.5 → `nc0_5`/`nc1_0`/`nc2_5`,
CNT → `seq`, Fire Alarm → `alarm`. Classic detectors add obscuration, CO, battery and
their fault and self-test flags. Events are the detector's own alarm/fault transitions.

Physical bounds: every measured value has a range, generous enough for a detector that
sees a fire and tight enough that a broken or hostile device cannot store 2**64 °C. A
value outside is refused (`invalid_payload`, the detail names the field):

| field | range | why |
|---|---|---|
| temperature | -100 … 1000 °C | below any inhabited place; a fire's hot gases reach 100s of °C |
| humidity | 0 … 100 % | relative humidity |
| battery | 0 … 100 % | charge |
| obscuration | 0 … 100 %/m | the whole beam |
| co, eco2 | 0 … 1 000 000 ppm | a concentration cannot exceed 10^6 ppm |
| tvoc | 0 … 1 000 000 000 ppb | a concentration cannot exceed 10^9 ppb |
| pressure | 0 … 2000 hPa | twice sea level; the record high is ~1084 hPa |
| pm1_0, pm2_5 | 0 … 1 000 000 µg/m³ | 1 g/m³, far beyond what optical sensors read |
| nc0_5, nc1_0, nc2_5 | 0 … 100 000 000 #/cm³ | 10^8 per cm³, far beyond particle counters |
| raw_h2, raw_ethanol | 0 … 2^32 - 1 | raw counts of a converter of up to 32 bits |

The maxima of the dataset extract in shared/data/smoke (TVOC 1015 ppb, eCO2 993 ppm,
PM2.5 28.5 µg/m³, NC0.5 189 #/cm³, raw ethanol 20 438, -9.3 … 27.1 °C) lie far inside.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from sensors.base import (
    EVENT,
    TELEMETRY,
    DeclaredValues,
    DecodeContext,
    Envelope,
    FieldSpec,
    Point,
    SensorKind,
    ShortText,
)

NAME: Final = "smoke"

# Physical bounds (module docstring). They also keep every value storable: InfluxDB
# integers are int64, and a float must be finite.
RawCount = Annotated[int, Field(ge=0, le=2**32 - 1)]
Percent = Annotated[float, Field(ge=0, le=100)]
Ppm = Annotated[float, Field(ge=0, le=1_000_000)]
Ppb = Annotated[float, Field(ge=0, le=1_000_000_000)]
MassConcentration = Annotated[float, Field(ge=0, le=1_000_000)]  # µg/m³
NumberConcentration = Annotated[float, Field(ge=0, le=100_000_000)]  # #/cm³

SmokeEventType = Literal[
    "alarm", "alarm_cleared", "fault", "fault_cleared", "test", "tamper", "low_battery"
]


class SmokeTelemetry(Envelope):
    """Measured values; every one optional, but at least one must be present."""

    obscuration: Percent | None = None
    temperature: float | None = Field(default=None, ge=-100, le=1000)
    co: Ppm | None = None
    battery: Percent | None = None
    alarm: bool | None = None
    fault: bool | None = None
    test: bool | None = None
    tvoc: Ppb | None = None
    eco2: Ppm | None = None
    humidity: Percent | None = None
    pressure: float | None = Field(default=None, ge=0, le=2000)
    pm1_0: MassConcentration | None = None
    pm2_5: MassConcentration | None = None
    nc0_5: NumberConcentration | None = None
    nc1_0: NumberConcentration | None = None
    nc2_5: NumberConcentration | None = None
    raw_h2: RawCount | None = None
    raw_ethanol: RawCount | None = None

    @model_validator(mode="after")
    def _has_a_measurement(self) -> SmokeTelemetry:
        """Refuse telemetry without values: it would store nothing, silently."""
        carried = self.__dict__
        for name in _MEASUREMENTS:  # a loop, not all(): this runs for every message
            if carried[name] is not None:
                return self
        raise ValueError("smoke telemetry carries no measurement")


_MEASUREMENTS: Final = tuple(SmokeTelemetry.model_fields.keys() - Envelope.model_fields.keys())


class SmokeEvent(Envelope):
    """An alarm, fault, test or tamper transition reported by the detector."""

    event: SmokeEventType
    detail: ShortText | None = None


FIELDS: Final = (
    FieldSpec("seq", int, "", "Per-device message counter (dataset: CNT)"),
    FieldSpec("obscuration", float, "%/m", "Smoke obscuration per metre"),
    FieldSpec("temperature", float, "°C", "Air temperature"),
    FieldSpec("co", float, "ppm", "Carbon monoxide concentration"),
    FieldSpec("battery", float, "%", "Battery charge"),
    FieldSpec("alarm", bool, "", "Detector is in alarm (dataset: Fire Alarm)"),
    FieldSpec("fault", bool, "", "Detector reports a fault"),
    FieldSpec("test", bool, "", "Detector is in self-test: alarms are not real"),
    FieldSpec("tvoc", float, "ppb", "Total volatile organic compounds"),
    FieldSpec("eco2", float, "ppm", "Equivalent CO2 estimated from VOCs"),
    FieldSpec("humidity", float, "%", "Relative humidity"),
    FieldSpec("pressure", float, "hPa", "Air pressure"),
    FieldSpec("pm1_0", float, "µg/m³", "Particulate matter below 1.0 µm"),
    FieldSpec("pm2_5", float, "µg/m³", "Particulate matter below 2.5 µm"),
    FieldSpec("nc0_5", float, "#/cm³", "Number concentration of particles below 0.5 µm"),
    FieldSpec("nc1_0", float, "#/cm³", "Number concentration of particles below 1.0 µm"),
    FieldSpec("nc2_5", float, "#/cm³", "Number concentration of particles below 2.5 µm"),
    FieldSpec("raw_h2", int, "", "Raw molecular hydrogen sensor reading"),
    FieldSpec("raw_ethanol", int, "", "Raw ethanol gas sensor reading"),
    FieldSpec("event", str, "", "What happened: alarm, fault, test, low_battery, ..."),
    FieldSpec("detail", str, "", "Short detail from the detector"),
)
# No extra tags: a detector is one device at one place, the common tags say all of it.
TAGS: Final[tuple[str, ...]] = ()
_VALUES: Final = DeclaredValues(NAME, FIELDS)


def to_point(channel: str, payload: Envelope, ctx: DecodeContext) -> Point:
    """Map a validated smoke payload to fields (no identifiers to hash here)."""
    expected = SmokeTelemetry if channel == TELEMETRY else SmokeEvent if channel == EVENT else None
    if expected is None or not isinstance(payload, expected):
        raise TypeError(f"{NAME}: no mapping for {type(payload).__name__} on {channel!r}")
    return Point(fields=_VALUES(payload), tags={})


KIND: Final = SensorKind(
    name=NAME,
    measurement=NAME,
    description="Smoke and multi-sensor fire detectors: air quality, alarm, fault, self-test",
    channels=MappingProxyType({TELEMETRY: SmokeTelemetry, EVENT: SmokeEvent}),
    fields=FIELDS,
    tags=TAGS,
    to_point=to_point,
)
