"""The InfluxDB names dashboards query, taken from their owners, never retyped.

Per-kind measurements, fields and tags come from the sensor plugins (`sensors/`);
`security_event`'s tags and fields are read off a point rendered by
`events.render.event_point` itself, so a renamed tag there breaks the build here.
`device_status` and `hub_stats` are written by ingest, which dashboards may not import
(layer contract): their names are declared once below and a test compares them with
what ingest writes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from events.model import Action, AuditRecord, Location, SecurityEvent, Severity, Source, State
from events.render import event_point
from sensors import access, parking, smoke
from sensors.base import COMMON_TAGS, DEVICE_STATUS, HUB_STATS, SECURITY_EVENT, SensorKind
from sensors.registry import KINDS

DEVICE_STATUS_FIELDS: Final = ("online", "state")
"""What ingest's status decoder writes (tests/test_dashboards_queries.py checks it)."""
DEVICE_STATUS_TAGS: Final = ("site", "kind", "device", "channel")
HUB_STATS_TAGS: Final = ("hub",)
HUB_STATS_FIELDS: Final = (
    "received",
    "acked",
    "stored",
    "rejected",
    "dead_lettered",
    "duplicates",
    "retained_skipped",
    "foreign_skipped",
    "readings_ahead",
    "write_failures",
    "backpressure_waits",
    "storage_blocked",
    "storage_failures",
    "storage_blocked_s",
    "spool_bytes",
    "spool_lines",
    "lag_s",
    "reconnects",
    "sessions_lost",
    "connected",
    "uptime_s",
)
"""`ingest.stats.IngestStats.fields()` without the per-reason counters (checked by a test)."""
RULES_STATS_FIELDS: Final = (
    "rules_evaluated",
    "rules_detections",
    "rules_commits",
    "rules_record_errors",
    "rules_late_readings",
    "rules_lag_records",
    "rules_lag_s",
    "rules_watermark_ms",
    "rules_event_latency_p50_ms",
    "rules_event_latency_p99_ms",
)
"""What the hub adds to `hub_stats` when its rules run (`RulesService.status()`, checked
by a test)."""
PARKING_INCIDENTS: Final = (
    "lot_over_capacity",
    "parking_overstay",
    "fire_lane_violation",
    "reserved_bay_violation",
)
"""`security_event` incident kinds the Parking dashboard lists. Incident kinds are named by
rule files (rules/packs/default.yaml), which dashboards may not import: a test checks
each one is an incident of the default pack."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measurement with the tag and field names a query may use."""

    name: str
    tags: tuple[str, ...]
    fields: tuple[str, ...]

    def field(self, name: str) -> str:
        """The field's name, refusing one the writer never writes."""
        if name not in self.fields:
            raise KeyError(f"{self.name} has no field {name!r} (fields: {', '.join(self.fields)})")
        return name

    def columns(self, *names: str) -> list[str]:
        """Field or tag names, each checked against what the writer writes."""
        return [self.tag(n) if n in self.tags else self.field(n) for n in names]

    def tag(self, name: str) -> str:
        """The tag's name, refusing one the writer never writes."""
        if name not in self.tags:
            raise KeyError(f"{self.name} has no tag {name!r} (tags: {', '.join(self.tags)})")
        return name


def kind_measurement(kind: SensorKind) -> Measurement:
    """A sensor kind's measurement, as its plugin declares it."""
    return Measurement(
        kind.measurement, (*COMMON_TAGS, *kind.tags), tuple(spec.name for spec in kind.fields)
    )


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, escaped, quoted = [], "", False, False
    for char in text:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            current += char
            escaped = True
        elif char == '"':
            quoted = not quoted
            current += char
        elif char == sep and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


@functools.cache
def security_event() -> Measurement:
    """`security_event`'s names, from a point rendered by the events package itself.

    The sample has every optional part set (cell, device, location, assignee, parent,
    from_state), so every tag and field the renderer can write shows up.
    """
    event = SecurityEvent(
        id="e1",
        rule_id="r",
        key="k",
        site="s",
        cell="c",
        device="d",
        severity=Severity.HIGH,
        title="t",
        message="m",
        incident="i",
        source=Source.RULE,
        raised_ms=1,
        last_ms=1,
        updated_ms=1,
        assignee="w",
        parent_id="p",
        location=Location(lon=1.0, lat=2.0),
    )
    audit = AuditRecord(
        event_id="e1",
        at_ms=1,
        actor="a",
        action=Action.ASSIGN,
        from_state=State.ACTIVE_UNACKNOWLEDGED,
        to_state=State.ACTIVE_UNACKNOWLEDGED,
        note="n",
    )
    series, field_set, _time = _split_unescaped(event_point(event, audit), " ")
    name, *tag_pairs = _split_unescaped(series, ",")
    tags = tuple(pair.split("=", 1)[0] for pair in tag_pairs)
    fields = tuple(pair.split("=", 1)[0] for pair in _split_unescaped(field_set, ","))
    if name != SECURITY_EVENT:
        raise ValueError(f"events.render wrote measurement {name!r}, not {SECURITY_EVENT!r}")
    return Measurement(name, tags, fields)


def kinds() -> Mapping[str, SensorKind]:
    """The registered sensor kinds (the `kind` variable's values)."""
    return KINDS


ACCESS: Final = kind_measurement(access.KIND)
SMOKE: Final = kind_measurement(smoke.KIND)
PARKING: Final = kind_measurement(parking.KIND)
DEVICE_STATUS_M: Final = Measurement(DEVICE_STATUS, DEVICE_STATUS_TAGS, DEVICE_STATUS_FIELDS)
HUB_STATS_M: Final = Measurement(HUB_STATS, HUB_STATS_TAGS, HUB_STATS_FIELDS + RULES_STATS_FIELDS)
