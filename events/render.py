"""How one transition looks outside the hub: JSON (MQTT, webhooks, the API) and one
InfluxDB line-protocol point (dashboards). Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Final

from events.model import AuditRecord, SecurityEvent
from sensors.base import SECURITY_EVENT, FieldValue

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def rfc3339_ms(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds: `2025-03-01T00:15:30.123Z`."""
    # timedelta, not fromtimestamp(ms / 1000): no float rounding of the milliseconds.
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")[:-6] + "Z"


def _json_value(value: FieldValue) -> FieldValue | None:
    # NaN and infinity are not JSON (an anomaly score may be one): send null instead.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def event_json(event: SecurityEvent, audit: AuditRecord) -> dict[str, object]:
    """The event as it stands after `audit`, plus the transition itself; JSON-ready.

    Times are RFC 3339 UTC with milliseconds. Shared by the MQTT and webhook sinks and
    the API, so every consumer sees one shape.
    """
    if audit.event_id != event.id:
        raise ValueError(f"audit record of {audit.event_id} paired with event {event.id}")

    def at(ms: int | None) -> str | None:
        return None if ms is None else rfc3339_ms(ms)

    location = event.location
    return {
        "id": event.id,
        "rule_id": event.rule_id,
        "key": event.key,
        "site": event.site,
        "cell": event.cell,
        "device": event.device,
        "devices": list(event.devices),
        "severity": event.severity.value,
        "title": event.title,
        "message": event.message,
        "incident": event.incident,
        "source": event.source.value,
        "state": event.state.value,
        "mode": event.mode.value,
        "active": event.active,
        "acknowledged": event.acknowledged,
        "closed": event.closed,
        "resolution": event.resolution,
        "count": event.count,
        "assignee": event.assignee,
        "parent_id": event.parent_id,
        "raised_at": at(event.raised_ms),
        "last_at": at(event.last_ms),
        "updated_at": at(event.updated_ms),
        "returned_at": at(event.returned_ms),
        "shelved_until": at(event.shelved_until_ms),
        "location": None if location is None else {"lon": location.lon, "lat": location.lat},
        "values": {k: _json_value(v) for k, v in event.values.items()},
        "version": event.version,
        "transition": {
            "action": audit.action.value,
            "actor": audit.actor,
            "at": rfc3339_ms(audit.at_ms),
            "from_state": None if audit.from_state is None else audit.from_state.value,
            "to_state": audit.to_state.value,
            "note": audit.note,
        },
    }


# --- InfluxDB line protocol -------------------------------------------------------------
# Line protocol has no way to carry a newline inside a tag or field value (InfluxDB docs,
# "Line protocol reference": "does not support the newline character \n in tag values or
# field values"; a `\n` escape is stored as a literal backslash-n by 1.x). So control
# characters become one space: dashboards show readable one-line text, and the exact text
# stays in the event store, the API, MQTT and webhooks.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]+")
# Tag keys and values: comma, equals and space are escaped. A backslash becomes "/":
# InfluxDB 1.x cannot parse a tag value ending in one (`\\,` still reads as an escaped
# comma) and stores `\\` doubled. Tags here are identifiers, which have no backslash.
_TAG_ESCAPES: Final = str.maketrans({"\\": "/", ",": r"\,", "=": r"\=", " ": r"\ "})
_MEASUREMENT_ESCAPES: Final = str.maketrans({"\\": "/", ",": r"\,", " ": r"\ "})
_STRING_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"'})

_NS_PER_MS: Final = 1_000_000
_SERIES: Final = SECURITY_EVENT.translate(_MEASUREMENT_ESCAPES)
_TAG_ORDER: Final = tuple(
    sorted(("site", "cell", "device", "rule", "severity", "state", "incident", "action", "source"))
)
"""`event_point`'s tag keys, sorted as InfluxDB prefers; identifiers, nothing to escape."""


def _one_line(text: str) -> str:
    # A printable string has no control character: skip the regex (points per transition).
    return text if text.isprintable() else _CONTROL.sub(" ", text)


def _tag_value(value: str) -> str:
    """The escaped one-line tag value, or "" for one that is blank (left out)."""
    line = _one_line(value)
    if not line.strip():
        return ""
    # `translate` looks up every character: only when there is something to escape.
    if "\\" in line or "," in line or "=" in line or " " in line:
        return line.translate(_TAG_ESCAPES)
    return line


def _field(value: FieldValue) -> str:
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    line = _one_line(value)
    if "\\" in line or '"' in line:
        line = line.translate(_STRING_ESCAPES)
    return '"' + line + '"'


def point_time_ns(event: SecurityEvent, audit: AuditRecord) -> int:
    """`audit.at_ms` in ns plus a sub-millisecond offset derived from the transition.

    InfluxDB keeps one point per (measurement, tag set, time): two transitions with the
    same tags in the same millisecond (two events of one rule without a device, two
    comments on one event) would overwrite each other. The offset (0-999999 ns, from a
    hash of event id, version, action, actor and note) separates them while keeping
    the millisecond, and is the same on every redelivery, so a retried write still
    lands on the same point. Remaining collision: identical tags, same millisecond and
    the same offset, about one in a million per such pair.
    """
    digest = hashlib.blake2b(
        "\x1f".join(
            (event.id, str(event.version), audit.action.value, audit.actor, audit.note)
        ).encode(),
        digest_size=8,
    ).digest()
    return audit.at_ms * _NS_PER_MS + int.from_bytes(digest, "big") % _NS_PER_MS


def event_point(event: SecurityEvent, audit: AuditRecord) -> str:
    """One `security_event` point (no trailing newline) for one transition.

    Tags are bounded values dashboards group by; ids and free text are fields
    (ARCHITECTURE.md, "InfluxDB"). Empty tags are left out (InfluxDB refuses them).
    """
    if audit.event_id != event.id:
        raise ValueError(f"audit record of {audit.event_id} paired with event {event.id}")
    tags = {
        "site": event.site,
        "cell": event.cell or "",
        "device": event.device or "",
        "rule": event.rule_id,
        "severity": event.severity.value,
        "state": audit.to_state.value,
        "incident": event.incident,
        "action": audit.action.value,
        "source": event.source.value,
    }
    fields: dict[str, FieldValue] = {
        "event_id": event.id,
        "count": event.count,
        "active": event.active,
        "acknowledged": event.acknowledged,
        "title": event.title,
        "message": event.message,
        "actor": audit.actor,
        "note": audit.note,
    }
    if audit.from_state is not None:
        fields["from_state"] = audit.from_state.value
    if event.assignee:
        fields["assignee"] = event.assignee
    if event.parent_id:
        fields["parent_id"] = event.parent_id
    loc = event.location
    if loc is not None and math.isfinite(loc.lon) and math.isfinite(loc.lat):
        fields["lon"] = float(loc.lon)
        fields["lat"] = float(loc.lat)
    series = _SERIES + "".join(
        f",{k}={value}" for k in _TAG_ORDER if (value := _tag_value(tags[k]))
    )
    field_set = ",".join(f"{k}={_field(v)}" for k, v in fields.items())
    return f"{series} {field_set} {point_time_ns(event, audit)}"
