"""InfluxDB line protocol for readings and hub points (one encoder for v1 and v2 writes).

Rules (InfluxDB docs, "Line protocol"): measurement escapes comma and space; tag keys,
tag values and field keys escape comma, equals and space; string field values are
double-quoted with `"` and `\\` escaped. Tags are sorted by key, as InfluxDB prefers.
Integers carry an `i` suffix; timestamps are nanoseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from sensors.base import FieldValue, Reading

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


class LineProtocolError(ValueError):
    """A value InfluxDB cannot store (NaN, infinity, empty field set)."""


def _field(value: FieldValue) -> str:
    # bool first: it is a subclass of int.
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"non-finite float {value!r}")
        return repr(value)
    return '"' + value.translate(_STRING_ESCAPES) + '"'


def encode_point(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts_ns: int
) -> bytes:
    """One line, newline-terminated. Empty tag values are dropped (InfluxDB refuses them)."""
    if not fields:
        raise LineProtocolError(f"{measurement}: a point needs at least one field")
    head = measurement.translate(_MEASUREMENT_ESCAPES)
    tag_part = "".join(
        f",{k.translate(_KEY_ESCAPES)}={v.translate(_KEY_ESCAPES)}"
        for k, v in sorted(tags.items())
        if v
    )
    field_part = ",".join(f"{k.translate(_KEY_ESCAPES)}={_field(v)}" for k, v in fields.items())
    return f"{head}{tag_part} {field_part} {ts_ns}\n".encode()


def reading_tags(reading: Reading) -> dict[str, str]:
    """Common tags from the topic plus the kind's own bounded tags."""
    tags = {
        "site": reading.site,
        "kind": reading.kind,
        "device": reading.device,
        "channel": reading.channel,
    }
    if reading.cell:
        tags["cell"] = reading.cell
    tags.update(reading.tags)
    return tags


def encode_reading(reading: Reading) -> bytes:
    """The stored form of a reading; `seq` is a field, so redeliveries fold into one point."""
    fields = dict(reading.fields)
    if reading.seq is not None:
        fields.setdefault("seq", reading.seq)
    return encode_point(reading.measurement, reading_tags(reading), fields, reading.ts_ns)
