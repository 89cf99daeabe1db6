"""The device vocabulary every sensor kind shares: envelope, kind contract, reading.

A sensor kind is one module that builds a `SensorKind`: its payload model per MQTT
channel, the InfluxDB fields and tags it may write, and a pure `to_point` mapping.
Nothing here does I/O; ingest, simulators and dashboards all read these names.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

FieldValue = float | int | bool | str

# Measurements outside the per-kind ones (ARCHITECTURE.md, "InfluxDB").
DEVICE_STATUS: Final = "device_status"
HUB_STATS: Final = "hub_stats"
SECURITY_EVENT: Final = "security_event"

# Tags every kind's points carry; values come from the topic (and `cell` from the payload).
COMMON_TAGS: Final = ("site", "kind", "device", "channel", "cell")

# MQTT channels: measured values, discrete happenings, retained online/offline.
TELEMETRY: Final = "telemetry"
EVENT: Final = "event"
STATUS: Final = "status"

# Topic segments are bounded identifiers: they become tags and MQTT ACL patterns.
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]
ShortText = Annotated[str, StringConstraints(max_length=256)]
# RFC 3339 with a mandatory offset. Kept as text (the decoder parses it, keeping up to
# nanoseconds): a numeric string like "1740788130" must not pass as a time.
Rfc3339 = Annotated[
    str,
    StringConstraints(
        pattern=r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
    ),
]


class Envelope(BaseModel):
    """Standard fields of every device payload; kinds subclass it.

    Devices are lenient partners: unknown fields are ignored, but a known field with
    the wrong JSON type is an error (strict mode: no "21.5" for a float).
    """

    # NaN/Infinity are not JSON and InfluxDB cannot store them: refuse them here.
    # Errors never echo input: payloads may carry card numbers and plates.
    model_config = ConfigDict(
        extra="ignore", strict=True, frozen=True, allow_inf_nan=False, hide_input_in_errors=True
    )

    ts: int | Rfc3339 | None = None
    """Device time: epoch milliseconds (a JSON integer) or RFC 3339 with an offset.
    Missing: the hub's receive time."""
    seq: int | None = Field(default=None, ge=0, le=2**63 - 1)  # InfluxDB integers are int64
    """Per-device message counter."""
    site: Identifier | None = None
    kind: Identifier | None = None
    device: Identifier | None = None
    """Identity claims; when present they must match the topic."""
    cell: Identifier | None = None
    """Grid cell of the device, when the device (or its gateway) knows it."""


# eq=False: specs are module constants; identity hashing keeps the per-message lookup of
# a model's specs (functools.cache below) from hashing every spec's fields.
@dataclass(frozen=True, slots=True, eq=False)
class FieldSpec:
    """One InfluxDB field a kind may write: the name dashboards and rules reuse."""

    name: str
    type: type[FieldValue]
    unit: str
    description: str


@dataclass(frozen=True, slots=True)
class Point:
    """Kind-specific part of an InfluxDB point: extra tags and the fields."""

    fields: Mapping[str, FieldValue]
    tags: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What a kind's mapping may need from the hub, passed in (never global)."""

    hash_identifier: Callable[[str], str]
    """Keyed hash for card numbers and licence plates: they are never stored in clear."""


@dataclass(frozen=True, slots=True)
class SensorKind:
    """Everything the hub knows about one kind of device."""

    name: str
    """Topic segment and `kind` tag value, e.g. `smoke`."""
    measurement: str
    description: str
    channels: Mapping[str, type[Envelope]]
    """Payload model per channel (`telemetry`, `event`); `status` is common to all kinds."""
    fields: tuple[FieldSpec, ...]
    tags: tuple[str, ...]
    """Extra bounded tags the mapping may add (never card hashes or free text)."""
    to_point: Callable[[str, Envelope, DecodeContext], Point]
    """Pure mapping of a validated payload on a channel to tags and fields."""

    def field(self, name: str) -> FieldSpec:
        """Look up a declared field by name (dashboards use this to avoid retyping)."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(f"kind {self.name!r} declares no field {name!r}")


@dataclass(frozen=True, slots=True)
class Reading:
    """One validated device message, ready to store."""

    measurement: str
    site: str
    kind: str
    device: str
    channel: str
    cell: str | None
    ts_ns: int
    ts_from_device: bool
    seq: int | None
    tags: Mapping[str, str]
    """Kind-specific extra tags (the common ones are attributes above)."""
    fields: Mapping[str, FieldValue]


def declared_values(
    kind: str, fields: tuple[FieldSpec, ...], payload: Envelope
) -> dict[str, FieldValue]:
    """Copy each declared field the payload carries; ints become floats for float fields
    (so InfluxDB never sees `21` and `21.5` as a type conflict)."""
    values: dict[str, FieldValue] = {}
    # The model's own dict: getattr on a name the model lacks takes pydantic's slow path.
    carried = payload.__dict__
    for spec in _specs_on_model(type(payload), fields):
        value = carried[spec.name]
        if value is None:
            continue
        if spec.type is float and type(value) is int:
            value = float(value)
        if type(value) is not spec.type:
            raise TypeError(f"{kind}.{spec.name}: {type(value).__name__}, not {spec.type.__name__}")
        values[spec.name] = value
    return values


@functools.cache
def _specs_on_model(model: type[Envelope], fields: tuple[FieldSpec, ...]) -> tuple[FieldSpec, ...]:
    """The declared fields this payload model can carry (a kind declares them for all
    its channels; each message only needs its own channel's)."""
    return tuple(spec for spec in fields if spec.name in model.model_fields)


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of an identifier, hex, 32 chars: linkable across doors, not reversible."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def build_registry(kinds: list[SensorKind]) -> Mapping[str, SensorKind]:
    """Index kinds by name, refusing duplicates and reserved channel names."""
    registry: dict[str, SensorKind] = {}
    for kind in kinds:
        if kind.name in registry:
            raise ValueError(f"sensor kind {kind.name!r} registered twice")
        if STATUS in kind.channels:
            raise ValueError(f"sensor kind {kind.name!r}: channel 'status' is common to all kinds")
        if not kind.channels:
            raise ValueError(f"sensor kind {kind.name!r} declares no channel")
        clash = set(kind.tags) & set(COMMON_TAGS)
        if clash:
            raise ValueError(f"sensor kind {kind.name!r} redefines common tags {sorted(clash)}")
        registry[kind.name] = kind
    return registry
