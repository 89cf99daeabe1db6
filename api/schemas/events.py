"""The events desk's models: an event and its audit trail as operators read them, and
the bodies of the actions they take on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from events.model import Action, AuditRecord, SecurityEvent, Severity, State

EVENT_ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,128}$"
MAX_SHELVE_S: Final = 30 * 86400
"""A shelve lasts at most this long (`for_s`, and `until` from now)."""
"""An event id in a path (the JSON routes and the desk pages)."""

_EVENT_EXAMPLE: Final[dict[str, Any]] = {
    "id": "7d0c5b3e9a1f4e2b8c6d5a4f3e2d1c0b",
    "version": 3,
    "rule_id": "smoke_alarm",
    "key": "yy-smoke-012",
    "site": "yingyang",
    "cell": "c03",
    "device": "yy-smoke-012",
    "severity": "high",
    "state": "active_acknowledged",
    "title": "Smoke alarm",
    "message": "obscuration 4.1 %/ft",
    "incident": "fire",
    "source": "rule",
    "raised_ms": 1764450000000,
    "last_ms": 1764450060000,
    "updated_ms": 1764450100000,
    "count": 2,
    "active": True,
    "acknowledged": True,
    "mode": "normal",
    "shelved_until_ms": None,
    "closed": False,
    "resolution": "",
    "assignee": "w-li",
    "parent_id": None,
    "values": {"obscuration": 4.1},
    "devices": [],
    "location": {"lon": 121.47, "lat": 31.23},
    "returned_ms": None,
}


class EventLocationOut(BaseModel):
    lon: float
    lat: float


class EventOut(BaseModel):
    """An event as operators see it: its facts and the state derived from them."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EVENT_EXAMPLE]})

    id: str
    version: int
    rule_id: str
    key: str
    site: str
    cell: str | None
    device: str | None
    severity: Severity
    state: State
    title: str
    message: str
    incident: str
    source: str
    raised_ms: int
    last_ms: int
    updated_ms: int
    count: int
    active: bool
    acknowledged: bool
    mode: str
    shelved_until_ms: int | None
    closed: bool
    resolution: str
    assignee: str | None
    parent_id: str | None
    values: dict[str, bool | int | float | str]
    devices: list[str]
    location: EventLocationOut | None
    returned_ms: int | None

    @classmethod
    def of(cls, event: SecurityEvent) -> EventOut:
        return cls(
            id=event.id,
            version=event.version,
            rule_id=event.rule_id,
            key=event.key,
            site=event.site,
            cell=event.cell,
            device=event.device,
            severity=event.severity,
            state=event.state,
            title=event.title,
            message=event.message,
            incident=event.incident,
            source=event.source.value,
            raised_ms=event.raised_ms,
            last_ms=event.last_ms,
            updated_ms=event.updated_ms,
            count=event.count,
            active=event.active,
            acknowledged=event.acknowledged,
            mode=event.mode.value,
            shelved_until_ms=event.shelved_until_ms,
            closed=event.closed,
            resolution=event.resolution,
            assignee=event.assignee,
            parent_id=event.parent_id,
            values=dict(event.values),
            devices=list(event.devices),
            location=(
                None
                if event.location is None
                else EventLocationOut(lon=event.location.lon, lat=event.location.lat)
            ),
            returned_ms=event.returned_ms,
        )


class AuditOut(BaseModel):
    at_ms: int
    actor: str
    action: Action
    from_state: State | None
    to_state: State
    note: str

    @classmethod
    def of(cls, record: AuditRecord) -> AuditOut:
        return cls(
            at_ms=record.at_ms,
            actor=record.actor,
            action=record.action,
            from_state=record.from_state,
            to_state=record.to_state,
            note=record.note,
        )


class EventDetail(BaseModel):
    event: EventOut
    audit: list[AuditOut]
    children: list[EventOut]


class EventPage(BaseModel):
    items: list[EventOut]
    total: int
    limit: int
    offset: int


class ActionIn(BaseModel):
    """Common to every action: an optional note and the version the operator saw."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "on my way", "expected_version": 3}]},
    )

    note: str = Field(default="", max_length=2000)
    expected_version: int | None = Field(
        default=None,
        ge=1,
        description="Refuse (409) if the event changed since this version was read.",
    )


class AssignIn(ActionIn):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"assignee": "w-li", "note": "your cell"}]}
    )

    assignee: str = Field(min_length=1, max_length=128)


class CommentIn(ActionIn):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"note": "camera shows nobody there"}]}
    )

    note: str = Field(min_length=1, max_length=2000)


class ShelveUntil(ActionIn):
    """Set a nuisance aside until a time."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"until": "2026-01-01T08:00:00Z", "note": "cleaning"}]},
    )

    until: datetime = Field(
        description="When the shelve expires: in the future, at most 30 days ahead"
    )


class ShelveFor(ActionIn):
    """Set a nuisance aside for a number of seconds."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"for_s": 3600, "note": "detector being cleaned"}]},
    )

    for_s: int = Field(ge=1, le=MAX_SHELVE_S, description="How long, in seconds")


ShelveIn = ShelveUntil | ShelveFor


class ResolveIn(ActionIn):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"note": "false alarm: cooking smoke, detector cleaned"}]},
    )

    note: str = Field(min_length=1, max_length=2000, description="The resolution note")
