"""Shared test helpers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from events.model import Detection
from rules.directory import DeviceInfo, Directory, SiteInfo
from rules.engine import Engine, EngineState
from rules.schema import parse_rules
from sensors.base import FieldValue, Reading

T0 = int(datetime(2025, 3, 3, tzinfo=UTC).timestamp() * 1000)  # Monday 2025-03-03 00:00Z


MIN = 60


HOUR = 3600


def at(seconds: float) -> int:
    """Epoch milliseconds `seconds` after T0."""
    return T0 + round(seconds * 1000)


def reading(
    kind: str,
    device: str,
    t: float,
    fields: Mapping[str, FieldValue] | None = None,
    *,
    channel: str = "telemetry",
    cell: str | None = "c1",
    seq: int | None = None,
    tags: Mapping[str, str] | None = None,
    site: str = "s1",
) -> Reading:
    return Reading(
        kind, site, kind, device, channel, cell, at(t) * 1_000_000, True, seq, tags or {},
        dict(fields or {}),
    )  # fmt: skip


def event(kind: str, device: str, t: float, name: str, **fields: FieldValue) -> Reading:
    return reading(kind, device, t, {"event": name, **fields}, channel="event")


def status(kind: str, device: str, t: float, online: bool) -> Reading:
    fields: dict[str, FieldValue] = {"online": online, "state": "online" if online else "offline"}
    return reading(kind, device, t, fields, channel="status")


def rules_yaml(condition: str, **top: str) -> str:
    """One rule `r1` with a flow-style condition; `top` adds or replaces rule keys."""
    body = {"title": "R1", "severity": "medium", "message": '"{device}"', **top}
    lines = ["rules:", "  - id: r1", f"    condition: {condition}"]
    lines += [f"    {name}: {value}" for name, value in body.items()]
    return "\n".join(lines) + "\n"


Ev = tuple[str, float]


def ev(detections: Sequence[Detection]) -> list[Ev]:
    return [("raise" if d.raised else "clear", (d.at_ms - T0) / 1000) for d in detections]


class Run:
    """An engine, its state, and shorthands to feed readings and ticks."""

    def __init__(self, text: str, directory: Directory | None = None) -> None:
        self.text = text
        self.directory = directory
        self.engine = Engine(parse_rules(text), directory)
        self.state = EngineState()
        self.all: list[Detection] = []

    def feed(self, r: Reading, now: float | None = None) -> list[Detection]:
        now_ms = r.ts_ns // 1_000_000 if now is None else at(now)
        out = self.engine.evaluate(r, self.state, now_ms)
        self.all += out
        return out

    def tick(self, now: float) -> list[Detection]:
        out = self.engine.tick(self.state, at(now))
        self.all += out
        return out

    def restarted(self) -> Run:
        """A new engine over the same rules, resuming from a snapshot of the state."""
        other = Run(self.text, self.directory)
        other.state = EngineState.from_json(self.state.to_json())
        return other


DENIED = "{channel: event, field: event, equals: access_denied}"


OPENED = "{channel: event, field: event, equals: door_opened}"


CLOSED = "{channel: event, field: event, equals: door_closed}"


GRANTED = "{channel: event, field: event, equals: access_granted}"


TRAVEL_DIRECTORY = Directory(
    sites={"s1": SiteInfo("s1", "Asia/Shanghai")},
    devices={
        "a1": DeviceInfo("a1", "access", "s1", "c1", 116.40, 39.90),
        "a2": DeviceInfo("a2", "access", "s1", "c2", 116.41, 39.90),
        "a3": DeviceInfo("a3", "access", "s1", "c1", 116.40, 39.90009),
    },
)


TRAVEL = f"{{type: travel, when: {GRANTED}, max_speed_m_s: 3.0, min_distance_m: 100, within: 1h}}"


def grant(device: str, t: float, card: str | None) -> Reading:
    fields: dict[str, FieldValue] = {"event": "access_granted"}
    if card is not None:
        fields["credential_hash"] = card
    return reading("access", device, t, fields, channel="event")


RELOAD = """\
rules:
  - id: hot
    title: Hot
    severity: high
    condition: {type: threshold, field: temperature, above: 80}
    message: hot
  - id: denials
    title: Denials
    severity: medium
    condition: {type: count, when: {channel: event, field: event, equals: access_denied},
                at_least: 2, within: 5m}
    message: denials
  - id: tamper
    title: Tamper
    severity: high
    condition: {type: match, when: {channel: event, field: event, equals: tamper}}
    message: tamper
"""
