"""Ground truth of scenarios and replays: the labels file (JSON lines).

One line per incident: `id, kind, site, cell, devices, start, end` (start and end as
RFC 3339 UTC with milliseconds), plus `detectable`, `source` and `note` when they say
something.
Evaluations score detected events against these lines, so the file is written in a
fixed order with fixed formatting: the same labels always give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Final

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


class IncidentKind(StrEnum):
    """What a label marks; scenarios add members here as they add incidents."""

    FIRE = "fire"
    """A real fire alarm (the smoke dataset's Fire Alarm column)."""
    LOT_OVER_CAPACITY = "lot_over_capacity"
    """A car-park counter above the lot's capacity (counter drift or overflow)."""
    SENSOR_FAULT = "sensor_fault"
    """A sensor reporting an impossible value (e.g. a negative lot count)."""
    DOOR_OPEN = "door_open"
    """A door standing open: ground truth of the door state, not an alarm."""
    DOOR_FORCED = "door_forced"
    """A door opened without a grant."""
    DOOR_HELD_OPEN = "door_held_open"
    """A door left open long after a grant."""
    TAILGATING = "tailgating"
    """One grant, several passages."""
    AFTER_HOURS_ACCESS = "after_hours_access"
    """A granted access outside the door's opening hours."""
    REPEATED_DENIALS = "repeated_denials"
    """Several denied attempts at one door in a short time."""
    CLONED_CARD = "cloned_card"
    """One credential at two doors farther apart than a person can walk in between."""
    WELFARE_CHECK = "welfare_check"
    """No door activity for long at an elderly resident's flat."""
    SMOKE_NUISANCE = "smoke_nuisance"
    """Cooking smoke or steam at one detector: not a fire."""
    DEVICE_TAMPER = "device_tamper"
    DEVICE_FAULT = "device_fault"
    DEVICE_OFFLINE = "device_offline"
    LOW_BATTERY = "low_battery"
    PARKING_OVERSTAY = "parking_overstay"
    FIRE_LANE_VIOLATION = "fire_lane_violation"
    RESERVED_BAY_VIOLATION = "reserved_bay_violation"
    STUCK_SENSOR = "stuck_sensor"
    """A sensor repeating the same values while the world changes."""
    MESSAGE_FLOOD = "message_flood"
    """A (compromised) device sending far more messages than it should."""
    MALFORMED_PAYLOADS = "malformed_payloads"
    """A (compromised) device sending payloads ingest must reject."""
    INCIDENT_STORM = "incident_storm"
    """Many alarms at once (flood control)."""


def format_ms(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds: `2022-06-09T00:01:49.000Z`."""
    instant = _EPOCH + ms * _ONE_MS
    return f"{instant:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def parse_ms(text: str) -> int:
    """RFC 3339 with an offset (as `format_ms` writes it) → epoch milliseconds."""
    instant = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if instant.tzinfo is None:
        raise ValueError(f"label time {text!r} has no offset")
    return (instant - _EPOCH) // _ONE_MS


@dataclass(frozen=True, slots=True)
class Label:
    """One incident that really happened, on which devices, from when to when."""

    id: str
    kind: IncidentKind
    site: str
    cell: str
    devices: tuple[str, ...]
    start_ms: int
    end_ms: int
    """Inclusive: the last instant the incident is known to hold."""
    source: str = ""
    """Where the truth comes from (dataset file and rows, or scenario name)."""
    note: str = ""
    detectable_ms: int | None = None
    """The first instant the incident shows in what devices send, when that is after
    `start_ms`: a cloned card is one more use of a valid card until its second, too
    distant use; smoke is no alarm until the detector alarms; a storm is ordinary
    alarms until the 11th in 10 minutes. Detection delay is measured from here (from
    `start_ms` when None): no detector can be faster than the evidence."""

    @property
    def evident_ms(self) -> int:
        """Where detection delay is measured from."""
        return self.start_ms if self.detectable_ms is None else self.detectable_ms

    def __post_init__(self) -> None:
        if self.end_ms < self.start_ms:
            raise ValueError(f"label {self.id!r} ends before it starts")
        if self.detectable_ms is not None and not (
            self.start_ms <= self.detectable_ms <= self.end_ms
        ):
            raise ValueError(f"label {self.id!r} is detectable outside its start and end")
        if not self.devices:
            raise ValueError(f"label {self.id!r} names no device")

    def to_json(self) -> str:
        """One compact JSON object; `source` and `note` only when non-empty."""
        body: dict[str, object] = {
            "id": self.id,
            "kind": self.kind.value,
            "site": self.site,
            "cell": self.cell,
            "devices": list(self.devices),
            "start": format_ms(self.start_ms),
            "end": format_ms(self.end_ms),
        }
        if self.detectable_ms is not None:
            body["detectable"] = format_ms(self.detectable_ms)
        if self.source:
            body["source"] = self.source
        if self.note:
            body["note"] = self.note
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> Label:
        """Parse one line written by `to_json` (unknown kinds are an error)."""
        body = json.loads(line)
        if not isinstance(body, dict):
            raise ValueError("a label line is a JSON object")
        return cls(
            id=str(body["id"]),
            kind=IncidentKind(body["kind"]),
            site=str(body["site"]),
            cell=str(body["cell"]),
            devices=tuple(str(d) for d in body["devices"]),
            start_ms=parse_ms(str(body["start"])),
            end_ms=parse_ms(str(body["end"])),
            source=str(body.get("source", "")),
            note=str(body.get("note", "")),
            detectable_ms=parse_ms(str(body["detectable"])) if "detectable" in body else None,
        )


HELD_OPEN_MS: Final = 45_000
"""A door standing open longer than this is held open: a passage takes 3-8 s, and 45 s
leaves room for a slow one with a pram or a trolley."""


def held_open_labels(labels: Iterable[Label], *, held_open_ms: int = HELD_OPEN_MS) -> list[Label]:
    """The alarms in door-state ground truth: each `door_open` episode longer than
    `held_open_ms` is a `door_held_open` incident, from the opening to the closing.
    Shorter episodes are passages, not incidents. A door already open when the
    recording starts counts from the recording's start (all a detector can know)."""
    out = []
    for label in labels:
        if label.kind is not IncidentKind.DOOR_OPEN:
            continue
        if label.end_ms - label.start_ms <= held_open_ms:
            continue
        out.append(
            dataclasses.replace(
                label,
                id=label.id.replace("replay-doors-", "replay-held-", 1),
                kind=IncidentKind.DOOR_HELD_OPEN,
                note=" ".join(
                    filter(None, [f"open longer than {held_open_ms / 1000:g} s;", label.note])
                ),
            )
        )
    return out


def sorted_labels(labels: Iterable[Label]) -> list[Label]:
    """Labels in file order: by start, then id."""
    return sorted(labels, key=lambda label: (label.start_ms, label.id))


def dumps_labels(labels: Iterable[Label]) -> str:
    """The labels file's text: one JSON object per line, sorted, newline-terminated."""
    return "".join(label.to_json() + "\n" for label in sorted_labels(labels))


def write_labels(path: str | Path, labels: Iterable[Label]) -> None:
    """Write a labels file (UTF-8, `\\n` line ends: the same labels give the same bytes)."""
    Path(path).write_bytes(dumps_labels(labels).encode("utf-8"))


def read_labels(path: str | Path) -> list[Label]:
    """Read a labels file; blank lines are skipped."""
    text = Path(path).read_bytes().decode("utf-8")
    return [Label.from_json(line) for line in text.splitlines() if line.strip()]
