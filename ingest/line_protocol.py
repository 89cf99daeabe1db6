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
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise LineProtocolError(f"non-finite float {value!r}")
        return repr(value)
    return '"' + _escape_string(value) + '"'


def _escape_string(value: str) -> str:
    # `translate` looks up every character: only when there is something to escape.
    if '"' in value or "\\" in value or "\n" in value or "\r" in value:
        return value.translate(_STRING_ESCAPES)
    return value


def _series_key(measurement: str, tags: Mapping[str, str]) -> str:
    """Measurement and sorted tags, escaped; empty tag values dropped (InfluxDB refuses them)."""
    return measurement.translate(_MEASUREMENT_ESCAPES) + "".join(
        f",{k.translate(_KEY_ESCAPES)}={v.translate(_KEY_ESCAPES)}"
        for k, v in sorted(tags.items())
        if v
    )


def encode_point(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts_ns: int
) -> bytes:
    """One line, newline-terminated."""
    if not fields:
        raise LineProtocolError(f"{measurement}: a point needs at least one field")
    field_part = ",".join(f"{k.translate(_KEY_ESCAPES)}={_field(v)}" for k, v in fields.items())
    return f"{_series_key(measurement, tags)} {field_part} {ts_ns}\n".encode()


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
    return LineEncoder().encode(reading)


class LineEncoder:
    """`encode_reading` for the hot path: series keys (measurement + escaped, sorted tags)
    and escaped field keys are cached, since a device sends the same ones every time.
    Bounded: the caches start over when they reach `max_entries`."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._series: dict[tuple[object, ...], str] = {}
        self._keys: dict[str, str] = {}
        self._max = max_entries

    def encode(self, reading: Reading) -> bytes:
        tags = reading.tags
        key = (
            reading.measurement,
            reading.site,
            reading.kind,
            reading.device,
            reading.channel,
            reading.cell,
            tuple(tags.items()) if tags else (),
        )
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self._max:
                self._series.clear()
            series = self._series[key] = _series_key(reading.measurement, reading_tags(reading))
        parts = []
        keys = self._keys
        for name, value in reading.fields.items():
            escaped = keys.get(name)
            if escaped is None:
                if len(keys) >= self._max:
                    keys.clear()
                escaped = keys[name] = name.translate(_KEY_ESCAPES)
            # Exact-type fast paths inline (this runs for every field of every message).
            kind = type(value)
            if kind is float and math.isfinite(value):  # type: ignore[arg-type]
                parts.append(f"{escaped}={value!r}")
            elif kind is bool:
                parts.append(f"{escaped}={'true' if value else 'false'}")
            elif kind is int:
                parts.append(f"{escaped}={value}i")
            elif isinstance(value, str):
                parts.append(f'{escaped}="{_escape_string(value)}"')
            else:
                parts.append(f"{escaped}={_field(value)}")
        if reading.seq is not None and "seq" not in reading.fields:
            parts.append(f"seq={reading.seq}i")
        if not parts:
            raise LineProtocolError(f"{reading.measurement}: a point needs at least one field")
        return f"{series} {','.join(parts)} {reading.ts_ns}\n".encode()
