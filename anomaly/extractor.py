"""Readings in, feature vectors out: the bounded per-device windows the feature functions read.

One `FeatureExtractor` serves training (history replayed in time order) and the hub
(live readings), so a model is always scored on vectors computed exactly as it was
trained on. "Usual" curves (which hours a door and a card are used, how full a lot is at
each hour) are learned once from history by `ProfileBuilder` and then held fixed: an
attacker who keeps at it must not teach the hub that it is normal.

Field names and event types come from the sensor kinds in `sensors/`, never retyped.
"""

from __future__ import annotations

import math
import typing
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from anomaly import features as f
from sensors import access, parking, smoke
from sensors.base import EVENT, TELEMETRY, FieldValue, Reading


def _event_type(name: str) -> str:
    """An access event type, checked against the access kind's vocabulary."""
    if name not in typing.get_args(access.AccessEventType):
        raise KeyError(f"access kind has no event type {name!r}")
    return name


ACCESS: Final = access.KIND.name
SMOKE: Final = smoke.KIND.name
PARKING: Final = parking.KIND.name

_EVENT: Final = access.KIND.field("event").name
_CREDENTIAL: Final = access.KIND.field("credential_hash").name
_GRANTED: Final = _event_type("access_granted")
_DENIED: Final = _event_type("access_denied")
_OPENED: Final = _event_type("door_opened")
_OBSCURATION: Final = smoke.KIND.field("obscuration").name
_TEMPERATURE: Final = smoke.KIND.field("temperature").name
_ECO2: Final = smoke.KIND.field("eco2").name
_SEQ: Final = smoke.KIND.field("seq").name
_OCCUPIED: Final = parking.KIND.field("occupied").name
_OCCUPANCY: Final = parking.KIND.field("occupancy").name
_CAPACITY: Final = parking.KIND.field("capacity").name

_TIME: Final = (("hour_sin", 0.5), ("hour_cos", 0.5), ("weekend", 1.0))
FEATURES: Final[Mapping[str, tuple[tuple[str, float], ...]]] = {
    ACCESS: (
        *_TIME,
        ("gap_log_s", 0.5),
        ("door_events_1h_log", 0.5),
        ("door_grants_1h_log", 0.5),
        ("door_denials_1h_log", 0.5),
        ("door_openings_1h_log", 0.5),
        ("door_hour_rarity", 1.0),
        ("credential_uses_1h_log", 0.5),
        ("credential_doors_1h", 0.25),
        ("credential_elsewhere_min", 5.0),
        ("credential_hour_rarity", 1.0),
    ),
    SMOKE: (
        *_TIME,
        ("gap_log_s", 0.25),
        ("seq_gap", 1.0),
        ("obscuration", 0.005),
        ("obscuration_slope", 0.002),
        ("temperature", 0.25),
        ("temperature_slope", 0.05),
        ("temperature_std", 0.05),
        ("eco2", 15.0),
        ("eco2_slope", 5.0),
        ("eco2_std", 10.0),
        ("repeat_run", 1.0),
    ),
    PARKING: (
        *_TIME,
        ("gap_log_s", 0.25),
        ("occupancy_ratio", 0.05),
        ("occupancy_vs_usual", 0.05),
        ("turnover_1h", 0.1),
    ),
}
"""Per kind, each feature with its floor: the smallest deviation that matters, in the
feature's own unit. A robust scale (MAD) below the floor is raised to it, so a feature
that never moved in training (a count that was always 0) is not infinitely sensitive."""
SCHEMAS: Final[Mapping[str, tuple[str, ...]]] = {
    kind: tuple(name for name, _ in features) for kind, features in FEATURES.items()
}
"""The feature schema per kind: names, in vector order. A model records the schema it
was trained on and is refused if this changes. A value may be NaN when it is unknown (the
gap before a device's first reading): models score it as the device's usual value."""

WINDOW: Final = 10
"""Telemetry readings per device window (smoke every minute: ten minutes)."""
WINDOW_MIN: Final = 5
"""Smoke readings are scored once their window holds this many."""
DOOR_EVENTS: Final = 256
"""Newest events kept per door (an hour at a busy gate)."""
CREDENTIALS_MAX: Final = 100_000
"""Credentials remembered at once; the least recently used is forgotten first."""
_NEUTRAL_ELSEWHERE_S: Final = f.MS_PER_HOUR / f.MS_PER_S


@dataclass(frozen=True, slots=True)
class FeatureVector:
    """One reading's features, in its kind's schema order."""

    kind: str
    site: str
    device: str
    cell: str | None
    ts_ms: int
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Profiles:
    """The usual curves learned from history (24 UTC-hour bins each)."""

    door_hours: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """Access events per UTC hour, per door controller."""
    credential_hours: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """Uses per UTC hour, per credential hash."""
    usual_occupancy: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """Mean occupancy ratio per UTC hour, per parking device (NaN: hour never seen)."""

    def to_json(self) -> dict[str, dict[str, list[float | None]]]:
        def dump(m: Mapping[str, tuple[float, ...]]) -> dict[str, list[float | None]]:
            return {k: [None if math.isnan(v) else v for v in vs] for k, vs in sorted(m.items())}

        return {
            "door_hours": dump(self.door_hours),
            "credential_hours": dump(self.credential_hours),
            "usual_occupancy": dump(self.usual_occupancy),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, list[float | None]]]) -> Profiles:
        def load(name: str) -> dict[str, tuple[float, ...]]:
            out: dict[str, tuple[float, ...]] = {}
            for key, values in data[name].items():
                if len(values) != f.HOURS:
                    raise ValueError(f"profile {name}/{key}: {len(values)} bins, not {f.HOURS}")
                out[key] = tuple(math.nan if v is None else float(v) for v in values)
            return out

        return cls(load("door_hours"), load("credential_hours"), load("usual_occupancy"))


class ProfileBuilder:
    """Accumulates the usual curves over a pass of history."""

    def __init__(self) -> None:
        self._door: dict[str, list[float]] = {}
        self._credential: dict[str, list[float]] = {}
        self._occupancy_sum: dict[str, list[float]] = {}
        self._occupancy_n: dict[str, list[int]] = {}

    def observe(self, reading: Reading) -> None:
        ts_ms = reading.ts_ns // 1_000_000
        hour = f.hour_of_day(ts_ms)
        if reading.kind == ACCESS and reading.channel == EVENT:
            self._door.setdefault(reading.device, [0.0] * f.HOURS)[hour] += 1
            credential = reading.fields.get(_CREDENTIAL)
            if isinstance(credential, str):
                self._credential.setdefault(credential, [0.0] * f.HOURS)[hour] += 1
        elif reading.kind == PARKING and reading.channel == TELEMETRY:
            ratio = _parking_ratio(reading)
            if ratio is not None:
                self._occupancy_sum.setdefault(reading.device, [0.0] * f.HOURS)[hour] += ratio
                self._occupancy_n.setdefault(reading.device, [0] * f.HOURS)[hour] += 1

    def build(self) -> Profiles:
        usual = {
            device: tuple(
                s / n if n else math.nan
                for s, n in zip(sums, self._occupancy_n[device], strict=True)
            )
            for device, sums in self._occupancy_sum.items()
        }
        return Profiles(
            {k: tuple(v) for k, v in self._door.items()},
            {k: tuple(v) for k, v in self._credential.items()},
            usual,
        )


def _time(ts_ms: int) -> tuple[float, float, float]:
    """Hour of day on a circle, and whether it is a (UTC) weekend day."""
    hour_sin, hour_cos, _, _ = f.time_context(ts_ms)
    return hour_sin, hour_cos, 1.0 if f.day_of_week(ts_ms) >= 5 else 0.0


def _parking_ratio(reading: Reading) -> float | None:
    """A bay's 0/1 or a lot's occupancy/capacity; None for other parking telemetry."""
    fields = reading.fields
    occupied = fields.get(_OCCUPIED)
    if isinstance(occupied, bool):
        return 1.0 if occupied else 0.0
    occupancy = fields.get(_OCCUPANCY)
    capacity = fields.get(_CAPACITY)
    if isinstance(occupancy, int) and isinstance(capacity, int):
        return f.occupancy_ratio(float(occupancy), float(capacity))
    return None


def _number(fields: Mapping[str, object], name: str) -> float:
    value = fields.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


class _Telemetry:
    """A device's newest telemetry readings (bounded)."""

    __slots__ = ("eco2", "last_seq", "obscuration", "repeats", "rows", "temperature", "ts")

    def __init__(self) -> None:
        self.ts: deque[int] = deque(maxlen=WINDOW)
        self.rows: deque[tuple[FieldValue, ...]] = deque(maxlen=WINDOW)
        self.obscuration: deque[float] = deque(maxlen=WINDOW)
        self.temperature: deque[float] = deque(maxlen=WINDOW)
        self.eco2: deque[float] = deque(maxlen=WINDOW)
        self.last_seq: int | None = None
        self.repeats = 0


class FeatureExtractor:
    """Keeps bounded windows per device and credential; `update` returns the reading's
    feature vector, or None for readings no model scores (status, access telemetry, …).

    Memory is bounded: fixed-length windows per device, at most `CREDENTIALS_MAX`
    credentials (least recently used forgotten). Not thread-safe: one caller at a time.
    """

    def __init__(self, profiles: Profiles) -> None:
        self.profiles = profiles
        self._telemetry: dict[str, _Telemetry] = {}
        self._doors: dict[str, deque[tuple[int, str]]] = {}
        self._last_ms: dict[str, int] = {}
        self._credentials: OrderedDict[str, deque[tuple[int, str]]] = OrderedDict()

    def update(self, reading: Reading) -> FeatureVector | None:
        kind, channel = reading.kind, reading.channel
        values: tuple[float, ...] | None
        if kind == SMOKE and channel == TELEMETRY:
            values = self._smoke(reading)
        elif kind == ACCESS and channel == EVENT:
            values = self._access(reading)
        elif kind == PARKING and channel == TELEMETRY:
            values = self._parking(reading)
        else:
            return None
        if values is None:
            return None
        return FeatureVector(
            kind, reading.site, reading.device, reading.cell, reading.ts_ns // 1_000_000, values
        )

    def _gap(self, key: str, ts_ms: int) -> float:
        """Seconds since the device's previous reading; NaN ("unknown", scored as usual)
        for the first reading this extractor sees."""
        previous = self._last_ms.get(key)
        self._last_ms[key] = ts_ms
        return math.nan if previous is None else f.gap_s(previous, ts_ms)

    def _smoke(self, reading: Reading) -> tuple[float, ...] | None:
        ts_ms = reading.ts_ns // 1_000_000
        fields = reading.fields
        window = self._telemetry.get(reading.device)
        if window is None:
            window = self._telemetry[reading.device] = _Telemetry()
        seq_gap = f.seq_gap(window.last_seq, reading.seq)
        window.last_seq = reading.seq
        # Every value but the counter, in the payload's own (stable) order: a frozen
        # sensor repeats the whole row.
        row = tuple(v for name, v in fields.items() if name != _SEQ)
        window.repeats = f.repeat_run(window.repeats, window.rows[-1] if window.rows else None, row)
        obscuration = _number(fields, _OBSCURATION)
        temperature = _number(fields, _TEMPERATURE)
        eco2 = _number(fields, _ECO2)
        window.ts.append(ts_ms)
        window.rows.append(row)
        window.obscuration.append(obscuration)
        window.temperature.append(temperature)
        window.eco2.append(eco2)
        ts = list(window.ts)
        temps = list(window.temperature)
        eco2s = list(window.eco2)
        obscs = list(window.obscuration)
        values = (
            *_time(ts_ms),
            math.log1p(self._gap(reading.device, ts_ms)),
            float(seq_gap),
            obscuration,
            f.slope_per_min(ts, obscs),
            temperature,
            f.slope_per_min(ts, temps),
            math.sqrt(f.variance(temps)),
            eco2,
            f.slope_per_min(ts, eco2s),
            math.sqrt(f.variance(eco2s)),
            float(window.repeats),
        )
        if len(window.ts) < WINDOW_MIN:
            return None  # slopes and spreads of two or three samples are mostly noise
        return values

    def _access(self, reading: Reading) -> tuple[float, ...]:
        ts_ms = reading.ts_ns // 1_000_000
        device = reading.device
        event = reading.fields.get(_EVENT)
        events = self._doors.get(device)
        if events is None:
            events = self._doors[device] = deque(maxlen=DOOR_EVENTS)
        events.append((ts_ms, event if isinstance(event, str) else ""))
        grants, denials, openings = f.door_counts(
            events, ts_ms, granted=_GRANTED, denied=_DENIED, opened=_OPENED
        )
        hour = f.hour_of_day(ts_ms)
        door_profile = self.profiles.door_hours.get(device)
        door_share = f.hour_share(door_profile, hour) if door_profile is not None else 1.0
        credential = reading.fields.get(_CREDENTIAL)
        if isinstance(credential, str):
            uses = self._credential_uses(credential)
            uses.append((ts_ms, device))
            count, doors, elsewhere_s = f.credential_activity(uses, ts_ms, device)
            profile = self.profiles.credential_hours.get(credential)
            # An unknown card is judged by the door's hours (a new resident is not news).
            cred_share = f.hour_share(profile, hour) if profile is not None else door_share
        else:
            count, doors, elsewhere_s, cred_share = 0, 0, _NEUTRAL_ELSEWHERE_S, door_share
        return (
            *_time(ts_ms),
            math.log1p(self._gap(device, ts_ms)),
            math.log1p(f.count_since([t for t, _ in events], ts_ms - f.MS_PER_HOUR)),
            math.log1p(grants),
            math.log1p(denials),
            math.log1p(openings),
            -math.log(door_share),
            math.log1p(count),
            float(doors),
            elsewhere_s / 60,
            -math.log(cred_share),
        )

    def _credential_uses(self, credential: str) -> deque[tuple[int, str]]:
        uses = self._credentials.get(credential)
        if uses is None:
            uses = self._credentials[credential] = deque(maxlen=64)
            if len(self._credentials) > CREDENTIALS_MAX:
                self._credentials.popitem(last=False)
        else:
            self._credentials.move_to_end(credential)
        return uses

    def _parking(self, reading: Reading) -> tuple[float, ...] | None:
        ratio = _parking_ratio(reading)
        if ratio is None:
            return None
        ts_ms = reading.ts_ns // 1_000_000
        window = self._telemetry.get(reading.device)
        if window is None:
            window = self._telemetry[reading.device] = _Telemetry()
        window.ts.append(ts_ms)
        window.rows.append((ratio,))
        curve = self.profiles.usual_occupancy.get(reading.device)
        hour = f.hour_of_day(ts_ms)
        usual = f.usual_at(curve, hour, ratio) if curve is not None else ratio
        since = ts_ms - f.MS_PER_HOUR
        recent = [float(r[0]) for t, r in zip(window.ts, window.rows, strict=True) if t >= since]
        return (
            *_time(ts_ms),
            math.log1p(self._gap(reading.device, ts_ms)),
            ratio,
            ratio - usual,
            f.turnover(recent),
        )
