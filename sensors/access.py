"""Access control: a door controller with card readers (kind `access`).

Telemetry is the door state (open, locked) and battery; events are what happens at the
door (granted, denied, opened, closed, forced, held open, tamper). `door_open` mirrors the
`Door` column (0 closed, 1 open) of the Room-Climate datasets in
shared/data/doors/ (Morgner et al. 2017), which record real door-open episodes.

Physical bounds: `battery` 0 … 100 % (the only measured number; a value outside is
refused, `invalid_payload` naming the field).

Card numbers arrive in clear from readers and leave this module only as a keyed hash
(`credential_hash`): linkable across doors, never stored in clear.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Annotated, Final, Literal

from pydantic import Field, StringConstraints

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
    ShortText,
)

NAME: Final = "access"

AccessEventType = Literal[
    "access_granted",
    "access_denied",
    "door_opened",
    "door_closed",
    "door_forced",
    "door_held",
    "tamper",
]
CardNumber = Annotated[str, StringConstraints(min_length=1, max_length=128)]
HashText = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _AtDoor(Envelope):
    """Common part of access payloads: which of the controller's doors it is about."""

    # Non-finite floats cannot be written to InfluxDB; clear card numbers must not end up
    # in validation error messages (and from there in logs).

    door: Identifier | None = None
    """Door id on this controller; a tag (few doors per controller, so bounded)."""


class AccessTelemetry(_AtDoor):
    """Door state, sent periodically and on change."""

    door_open: bool
    locked: bool | None = None
    battery: float | None = Field(default=None, ge=0, le=100)


class AccessEvent(_AtDoor):
    """One thing that happened at a door."""

    event: AccessEventType
    credential: CardNumber | None = Field(default=None, repr=False)
    """Card number in clear, as the reader sends it: hashed by `to_point`, never stored."""
    credential_hash: HashText | None = None
    """Card number already hashed by the device."""
    direction: Literal["in", "out"] | None = None
    reader: Identifier | None = None
    reason: ShortText | None = None
    """Why access was denied, or other short detail from the controller."""


FIELDS: Final = (
    FieldSpec("seq", int, "", "Per-device message counter; gaps mean lost messages"),
    FieldSpec("door_open", bool, "", "Door contact: true when the door is open"),
    FieldSpec("locked", bool, "", "Lock state: true when locked"),
    FieldSpec("battery", float, "%", "Battery charge of the controller"),
    FieldSpec("event", str, "", "What happened: access_granted, door_forced, ..."),
    FieldSpec("credential_hash", str, "", "Keyed hash of the card number (never clear)"),
    FieldSpec("direction", str, "", "in or out, for readers on both sides"),
    FieldSpec("reader", str, "", "Reader id on the controller"),
    FieldSpec("reason", str, "", "Denial reason or other short detail"),
)
# `door` is a tag: bounded per controller, grouped by, and it keeps two doors' points at
# the same timestamp apart. `reader` stays a field: readers map onto doors and direction.
TAGS: Final = ("door",)
_VALUES: Final = DeclaredValues(NAME, FIELDS)


def to_point(channel: str, payload: Envelope, ctx: DecodeContext) -> Point:
    """Map a validated access payload to the door tag and fields, hashing card numbers."""
    if channel == TELEMETRY and isinstance(payload, AccessTelemetry):
        fields = _VALUES(payload)
    elif channel == EVENT and isinstance(payload, AccessEvent):
        fields = _VALUES(payload)
        if payload.credential is not None:  # our key wins: only it links cards across doors
            fields["credential_hash"] = ctx.hash_identifier(payload.credential)
    else:
        raise TypeError(f"{NAME}: no mapping for {type(payload).__name__} on {channel!r}")
    tags = {"door": payload.door} if payload.door is not None else {}
    return Point(fields=fields, tags=tags)


KIND: Final = SensorKind(
    name=NAME,
    measurement=NAME,
    description="Door controllers and card readers: door state, access decisions, tamper",
    channels=MappingProxyType({TELEMETRY: AccessTelemetry, EVENT: AccessEvent}),
    fields=FIELDS,
    tags=TAGS,
    to_point=to_point,
)
