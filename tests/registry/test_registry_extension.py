"""A fourth kind is one new module plus one registry line: nothing else in ingest changes.

The "module" below is what sensors/water.py would contain; the registry line is the
`build_registry([*KINDS.values(), KIND])` call. The decoder, line protocol encoder and
status channel pick the new kind up with no further change.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Final, Literal

import pytest
from pydantic import ConfigDict, Field

from ingest.decode import Decoder, Rejected, RejectReason
from ingest.line_protocol import encode_reading
from sensors.base import (
    COMMON_TAGS,
    EVENT,
    STATUS,
    TELEMETRY,
    DecodeContext,
    Envelope,
    FieldSpec,
    FieldValue,
    Identifier,
    Point,
    Reading,
    SensorKind,
    build_registry,
    keyed_hash,
)
from sensors.registry import KINDS

# ---------------------------------------------------------------- "sensors/water.py"

NAME: Final = "water"


class WaterTelemetry(Envelope):
    """A leak sensor under a sink: wet or dry, and its battery."""

    model_config = ConfigDict(allow_inf_nan=False, hide_input_in_errors=True)

    leak: bool
    battery: float | None = Field(default=None, ge=0, le=100)
    room: Identifier | None = None


class WaterEvent(Envelope):
    model_config = ConfigDict(allow_inf_nan=False, hide_input_in_errors=True)

    event: Literal["leak_detected", "leak_cleared", "tamper"]


FIELDS: Final = (
    FieldSpec("seq", int, "", "Per-device message counter"),
    FieldSpec("leak", bool, "", "Water detected at the probe"),
    FieldSpec("battery", float, "%", "Battery charge"),
    FieldSpec("event", str, "", "leak_detected, leak_cleared or tamper"),
)
TAGS: Final = ("room",)


def to_point(channel: str, payload: Envelope, ctx: DecodeContext) -> Point:
    """Map a validated water payload to the room tag and fields."""
    fields: dict[str, FieldValue] = {}
    if payload.seq is not None:
        fields["seq"] = payload.seq
    if channel == TELEMETRY and isinstance(payload, WaterTelemetry):
        fields["leak"] = payload.leak
        if payload.battery is not None:
            fields["battery"] = float(payload.battery)
        tags = {"room": payload.room} if payload.room else {}
        return Point(fields=fields, tags=tags)
    if channel == EVENT and isinstance(payload, WaterEvent):
        fields["event"] = payload.event
        return Point(fields=fields, tags={})
    raise TypeError(f"{NAME}: no mapping for {type(payload).__name__} on {channel!r}")


KIND: Final = SensorKind(
    name=NAME,
    measurement=NAME,
    description="Leak sensors: wet/dry and battery",
    channels=MappingProxyType({TELEMETRY: WaterTelemetry, EVENT: WaterEvent}),
    fields=FIELDS,
    tags=TAGS,
    to_point=to_point,
)

# ---------------------------------------------------------------- the registry line

EXTENDED = build_registry([*KINDS.values(), KIND])

# ---------------------------------------------------------------- tests

CTX = DecodeContext(hash_identifier=lambda v: keyed_hash(b"test-key", v))
NOW_NS = 1_740_788_130_250_000_000
TOPIC = "gw/v1/s1/water/w-1/telemetry"
PAYLOAD = b'{"ts": 1740788130000, "seq": 5, "leak": true, "battery": 80, "room": "kitchen"}'


def test_extended_registry_keeps_the_existing_kinds() -> None:
    assert list(EXTENDED) == [*KINDS, "water"]
    for name, kind in KINDS.items():
        assert EXTENDED[name] is kind
    assert "water" not in KINDS


def test_new_kind_decodes_and_encodes() -> None:
    result = Decoder(EXTENDED, CTX).decode(TOPIC, PAYLOAD, NOW_NS)
    assert isinstance(result, Reading), result
    assert result.measurement == "water"
    assert (result.site, result.kind, result.device, result.channel) == (
        "s1",
        "water",
        "w-1",
        "telemetry",
    )
    assert result.tags == {"room": "kitchen"}
    assert result.fields == {"seq": 5, "leak": True, "battery": 80.0}
    assert result.ts_ns == 1_740_788_130_000_000_000
    assert encode_reading(result) == (
        b"water,channel=telemetry,device=w-1,kind=water,room=kitchen,site=s1 "
        b"seq=5i,leak=true,battery=80.0 1740788130000000000\n"
    )


def test_new_kind_events_and_status_work() -> None:
    decoder = Decoder(EXTENDED, CTX)
    event = decoder.decode("gw/v1/s1/water/w-1/event", b'{"event": "leak_detected"}', NOW_NS)
    assert isinstance(event, Reading) and event.fields == {"event": "leak_detected"}
    status = decoder.decode("gw/v1/s1/water/w-1/status", b"offline", NOW_NS)
    assert isinstance(status, Reading) and status.fields["online"] is False


def test_new_kind_gets_the_standard_rejections() -> None:
    decoder = Decoder(EXTENDED, CTX)
    for topic, payload, reason in [
        (TOPIC, b'{"leak": "yes"}', RejectReason.INVALID_PAYLOAD),
        (TOPIC, b'{"leak": true, "device": "w-2"}', RejectReason.IDENTITY_MISMATCH),
        ("gw/v1/s1/water/w-1/config", b'{"leak": true}', RejectReason.UNKNOWN_CHANNEL),
        (TOPIC, b"{", RejectReason.BAD_JSON),
    ]:
        result = decoder.decode(topic, payload, NOW_NS)
        assert isinstance(result, Rejected) and result.reason is reason, (payload, result)


def test_default_registry_rejects_the_new_kind() -> None:
    result = Decoder(KINDS, CTX).decode(TOPIC, PAYLOAD, NOW_NS)
    assert isinstance(result, Rejected)
    assert result.reason is RejectReason.UNKNOWN_KIND
    assert result.payload == PAYLOAD


def test_registry_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        build_registry([*KINDS.values(), KIND, KIND])
    with pytest.raises(ValueError, match="registered twice"):
        build_registry([*KINDS.values(), dataclasses.replace(KIND, name="smoke")])


def test_registry_refuses_a_status_channel() -> None:
    bad = dataclasses.replace(
        KIND, channels=MappingProxyType({TELEMETRY: WaterTelemetry, STATUS: WaterEvent})
    )
    with pytest.raises(ValueError, match="status"):
        build_registry([bad])


def test_registry_refuses_a_kind_without_channels() -> None:
    with pytest.raises(ValueError, match="no channel"):
        build_registry([dataclasses.replace(KIND, channels=MappingProxyType({}))])


@pytest.mark.parametrize("tag", COMMON_TAGS)
def test_registry_refuses_tags_clashing_with_common_tags(tag: str) -> None:
    with pytest.raises(ValueError, match="common tags"):
        build_registry([dataclasses.replace(KIND, tags=("room", tag))])
