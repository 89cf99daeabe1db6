"""Background behaviour of simulated devices: one small state machine per device.

Each device owns a `random.Random` seeded from (seed, device id) through a stable hash,
so adding a device to a site never changes what the others send, and the same seed gives
the same traffic on every machine. A behaviour keeps an agenda of its own timers in
simulated epoch milliseconds; the engine asks for `next_ms` and calls `step_ms(now)`.

Rhythms live in the site's local time (hourly profiles, linearly interpolated between
hour centres): doors peak in the morning and evening commute and are nearly silent at
night, bays empty in the morning and refill in the evening, smoke detectors follow a
daily temperature swing with nuisance cooking and shower steam. Background traffic
never raises a smoke alarm: alarms belong to scenarios with ground truth.
"""

from __future__ import annotations

import abc
import hashlib
import heapq
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import ClassVar, Final, Literal
from zoneinfo import ZoneInfo

from sensors.base import EVENT, STATUS, TELEMETRY
from sites.model import AccessDevice, ParkingDevice, Schedule, Site, SmokeDevice

JsonScalar = str | int | float | bool
SiteDevice = AccessDevice | SmokeDevice | ParkingDevice

MS_PER_S: Final = 1000
MS_PER_MIN: Final = 60 * MS_PER_S
MS_PER_HOUR: Final = 60 * MS_PER_MIN
MS_PER_DAY: Final = 24 * MS_PER_HOUR

# Door passages per hour for a busy building entrance (scale 1); other doors scale it.
DOOR_PROFILE: Final = (
    0.6, 0.12, 0.08, 0.08, 0.12, 0.5, 2.5, 9.0, 10.0, 4.0, 3.0, 3.0,
    3.5, 3.0, 2.5, 3.0, 4.0, 8.0, 10.0, 9.0, 4.5, 3.0, 2.0, 1.2,
)  # fmt: skip
# Residential bays: probability a bay is occupied, and how fast bays turn over (per hour).
BAY_OCCUPIED: Final = (
    0.92, 0.93, 0.93, 0.93, 0.93, 0.92, 0.88, 0.65, 0.42, 0.36, 0.35, 0.35,
    0.38, 0.36, 0.35, 0.37, 0.42, 0.55, 0.72, 0.84, 0.89, 0.91, 0.92, 0.92,
)  # fmt: skip
BAY_TURNOVER: Final = (
    0.06, 0.04, 0.03, 0.03, 0.04, 0.1, 0.4, 1.4, 1.6, 0.8, 0.4, 0.4,
    0.5, 0.4, 0.4, 0.5, 0.8, 1.4, 1.6, 1.2, 0.6, 0.3, 0.15, 0.1,
)  # fmt: skip

# Windows (local hours) where nuisance sources may appear.
MEAL_WINDOWS: Final = ((11.5, 13.0), (18.0, 20.0))
SHOWER_WINDOWS: Final = ((6.5, 8.5), (19.0, 22.5))

ROOM_TEMPERATURE: Final[Mapping[str, float]] = {
    "kitchen": 24.5,
    "bathroom": 24.0,
    "bedroom": 23.0,
    "living": 24.0,
    "corridor": 22.5,
    "stairwell": 21.0,
    "plant": 26.5,
    "garage": 19.0,
}

_SMOKE_FAULTS: Final = (
    "optical chamber contaminated",
    "sensor self-check failed",
    "ambient light interference",
)


@dataclass(frozen=True, slots=True)
class Emission:
    """One message a device sends: channel, kind fields, retain flag, device time and seq.

    `seq` is None for `status`: the retained online/offline state is re-sent by the
    publisher on reconnect and by the broker as a last will, so it cannot own a counter.
    """

    channel: str
    payload: Mapping[str, JsonScalar]
    retain: bool = False
    ts_ms: int = 0
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Rates:
    """Knobs of background traffic; the defaults are an ordinary day in a community."""

    door_scale: float = 1.0
    """Multiplies every door's passages per hour."""
    denied_fraction: float = 0.02
    """Share of card presentations refused (unknown or expired card)."""
    cooking_probability: float = 0.5
    """Chance a kitchen detector sees cooking in each meal window."""
    shower_probability: float = 0.7
    """Chance a bathroom detector sees a shower in each morning/evening window."""
    smoke_faults_per_day: float = 0.02
    bay_faults_per_day: float = 0.01


DEFAULT_RATES: Final = Rates()


def device_seed(seed: int, device_id: str) -> int:
    """Stable 64-bit seed for one device (hashlib: Python's hash() is salted per process)."""
    digest = hashlib.blake2b(f"{seed}\x00{device_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def profile_at(profile: tuple[float, ...], hour: float) -> float:
    """Hourly profile value at a local hour, linear between hour centres (no steps)."""
    x = hour - 0.5
    i = math.floor(x)
    frac = x - i
    return profile[i % 24] * (1.0 - frac) + profile[(i + 1) % 24] * frac


class LocalClock:
    """Site wall-clock arithmetic on epoch ms; the UTC offset is cached per quarter hour
    (tz transitions fall on quarter hours), so rhythms cost no datetime per message."""

    _BUCKET_MS: Final = 15 * MS_PER_MIN

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self._offsets: dict[int, int] = {}

    def offset_ms(self, t_ms: int) -> int:
        bucket = t_ms // self._BUCKET_MS
        offset = self._offsets.get(bucket)
        if offset is None:
            utcoffset = datetime.fromtimestamp(bucket * self._BUCKET_MS / MS_PER_S, self.tz)
            delta = utcoffset.utcoffset()
            offset = 0 if delta is None else delta // timedelta(milliseconds=1)
            self._offsets[bucket] = offset
        return offset

    def hour(self, t_ms: int) -> float:
        """Local hour of day in [0, 24)."""
        return ((t_ms + self.offset_ms(t_ms)) % MS_PER_DAY) / MS_PER_HOUR

    def local(self, t_ms: int) -> datetime:
        return datetime.fromtimestamp(t_ms / MS_PER_S, self.tz)

    def day(self, t_ms: int) -> date:
        return self.local(t_ms).date()

    def at(self, day: date, hour: float) -> int:
        """Epoch ms of a local wall-clock hour on a day (wall-time arithmetic across DST)."""
        wall = datetime.combine(day, time(0), tzinfo=self.tz) + timedelta(hours=hour)
        return round(wall.timestamp() * MS_PER_S)


class Behaviour(abc.ABC):
    """Common machinery: own random stream, agenda of timers, seq, ts, battery, status."""

    kind: ClassVar[str]
    battery_drain: ClassVar[float] = 0.0
    """Percent of battery per message sent (radio time dominates a sensor's budget)."""

    def __init__(
        self, device: SiteDevice, *, seed: int, start_ms: int, clock: LocalClock, rates: Rates
    ) -> None:
        self.device_id = device.id
        self.cell = device.cell
        self.rng = random.Random(device_seed(seed, device.id))
        self._clock = clock
        self._rates = rates
        self._agenda: list[tuple[int, int, str]] = []
        self._order = 0
        self._seq = 0
        self._last_ts_ms = start_ms - 1
        self._battery: float | None = None
        self._at(start_ms, "online")

    @property
    def next_ms(self) -> int:
        """Simulated epoch ms of this device's next emission."""
        return self._agenda[0][0]

    @property
    def next_time(self) -> float:
        """Simulated epoch seconds of this device's next emission."""
        return self.next_ms / MS_PER_S

    def step(self, now: float) -> list[Emission]:
        """Run every timer due at `now` (epoch seconds) and return what the device sends."""
        return self.step_ms(round(now * MS_PER_S))

    def step_ms(self, now_ms: int) -> list[Emission]:
        """Run every timer due at `now_ms` and return what the device sends."""
        out: list[Emission] = []
        while self._agenda[0][0] <= now_ms:
            _, _, action = heapq.heappop(self._agenda)
            if action == "online":
                out.append(self._emit(STATUS, {"status": "online"}, now_ms, retain=True))
            else:
                self._act(action, now_ms, out)
        return out

    @abc.abstractmethod
    def _act(self, action: str, now_ms: int, out: list[Emission]) -> None:
        """Carry out one of the kind's own timed actions, appending what it sends."""

    def _at(self, when_ms: int, action: str) -> None:
        self._order += 1
        heapq.heappush(self._agenda, (when_ms, self._order, action))

    def _after(self, now_ms: int, delay_ms: float, action: str) -> None:
        """Schedule strictly later than now, so one step never loops on its own timers."""
        self._at(now_ms + max(1, round(delay_ms)), action)

    def _emit(
        self, channel: str, payload: dict[str, JsonScalar], now_ms: int, *, retain: bool = False
    ) -> Emission:
        """Stamp a message: device time strictly increasing, seq on data channels only."""
        ts_ms = max(now_ms, self._last_ts_ms + 1)
        self._last_ts_ms = ts_ms
        if channel == STATUS:
            return Emission(channel, payload, retain, ts_ms, None)
        self._seq += 1
        if self._battery is not None:
            self._battery = max(0.0, self._battery - self.battery_drain)
        return Emission(channel, payload, retain, ts_ms, self._seq)

    def _exp_ms(self, per_hour: float) -> float:
        """Waiting time of a Poisson process with this rate, in ms."""
        return self.rng.expovariate(per_hour) * MS_PER_HOUR


class AccessBehaviour(Behaviour):
    """A door controller: card presentations as a non-homogeneous Poisson process.

    Arrivals are thinned from the door's peak rate by the hourly profile and, for doors
    with opening hours, by the schedule (nobody badges into the office at 3 am).
    A grant unlocks the door, it opens 1-4 s later and closes 3-8 s after that.

    An elderly resident living alone is not a memoryless process: a Poisson stream of
    independent passages lets the resident leave and never come back, or skip a whole
    day at random. Their door follows a daily routine instead (`ROUTINE`): outings at
    habitual times, each a way out and a way back, and now and then a day indoors.
    """

    kind = "access"
    battery_drain = 0.002
    TELEMETRY_MS: ClassVar[int] = 10 * MS_PER_MIN
    ROUTINE: ClassVar[tuple[tuple[float, float, float], ...]] = (
        (8.5, 11.0, 0.85),
        (14.0, 17.0, 0.6),
    )
    """An elderly resident's outings: (earliest, latest local hour to leave, chance per
    day). Both skipped (about 6 % of days) is a day indoors."""
    OUTING_H: ClassVar[tuple[float, float]] = (0.5, 2.5)
    """How long an outing lasts, in hours."""

    def __init__(
        self,
        device: AccessDevice,
        *,
        schedule: Schedule | None,
        seed: int,
        start_ms: int,
        clock: LocalClock,
        rates: Rates,
    ) -> None:
        super().__init__(device, seed=seed, start_ms=start_ms, clock=clock, rates=rates)
        attrs = device.attributes
        self._door = attrs.door
        self._schedule = schedule
        rng = self.rng
        scale = rates.door_scale * rng.uniform(0.6, 1.4)
        if attrs.emergency_exit:
            scale *= 0.001  # about one opening in ten days
            pool = 5
        elif attrs.elderly_resident:
            scale *= 0.06
            pool = 2
        elif attrs.unit is not None:  # a flat or office door: its few keyholders
            scale *= 0.1
            pool = 4
        else:  # gates and entrances: the whole block's residents (schedule gates them)
            pool = 150
        self._scale = scale
        self._peak = scale * max(DOOR_PROFILE)
        self._cards = [f"{rng.randrange(10_000_000, 100_000_000)}" for _ in range(pool)]
        self._expired = [f"{rng.randrange(10_000_000, 100_000_000)}" for _ in range(3)]
        self._battery = rng.uniform(70.0, 100.0)
        self._open = False
        self._locked = True
        self._busy = False
        self._direction = "in"
        self._at(start_ms + rng.randrange(MS_PER_S, self.TELEMETRY_MS), "telemetry")
        if attrs.elderly_resident:
            self._plan_day(start_ms)
        elif self._peak > 0:
            self._after(start_ms, self._exp_ms(self._peak), "arrival")

    def _plan_day(self, now_ms: int) -> None:
        """Schedule the rest of today's outings (out, then back) and tomorrow's plan."""
        clock = self._clock
        today = clock.day(now_ms)
        for earliest, latest, chance in self.ROUTINE:
            if self.rng.random() >= chance:
                continue
            leave = clock.at(today, self.rng.uniform(earliest, latest))
            back = leave + round(self.rng.uniform(*self.OUTING_H) * MS_PER_HOUR)
            if leave > now_ms:
                self._at(leave, "go_out")
                self._at(back, "come_in")
        self._at(clock.at(today + timedelta(days=1), 0.0), "plan_day")

    def _act(self, action: str, now_ms: int, out: list[Emission]) -> None:
        rng = self.rng
        door = self._door
        if action == "telemetry":
            battery = round(self._battery or 0.0, 2)
            payload: dict[str, JsonScalar] = {
                "door": door,
                "door_open": self._open,
                "locked": self._locked,
                "battery": battery,
            }
            out.append(self._emit(TELEMETRY, payload, now_ms))
            self._after(now_ms, self.TELEMETRY_MS, "telemetry")
        elif action == "plan_day":
            self._plan_day(now_ms)
        elif action in ("go_out", "come_in"):
            if self._busy:  # the last passage is still under way: a moment later
                self._after(now_ms, 20 * MS_PER_S, action)
                return
            self._direction = "out" if action == "go_out" else "in"
            self._present_card(now_ms, out, may_be_denied=False)
        elif action == "arrival":
            self._after(now_ms, self._exp_ms(self._peak), "arrival")
            hour = self._clock.hour(now_ms)
            accepted = rng.random() * self._peak < self._scale * profile_at(DOOR_PROFILE, hour)
            if not accepted or self._busy:
                return
            if self._schedule is not None and not self._schedule.is_open(self._clock.local(now_ms)):
                return
            p_out = 0.7 if 5 <= hour < 11 else 0.3 if 16 <= hour < 22 else 0.5
            self._direction = "out" if rng.random() < p_out else "in"
            self._present_card(now_ms, out, may_be_denied=True)
        elif action == "open":
            self._open = True
            opened: dict[str, JsonScalar] = {
                "door": door,
                "event": "door_opened",
                "direction": self._direction,
            }
            out.append(self._emit(EVENT, opened, now_ms))
            self._after(now_ms, rng.uniform(3.0, 8.0) * MS_PER_S, "close")
        elif action == "close":
            self._open = False
            self._locked = True
            self._busy = False
            out.append(self._emit(EVENT, {"door": door, "event": "door_closed"}, now_ms))
        else:
            raise ValueError(f"access: unknown action {action!r}")

    def _present_card(self, now_ms: int, out: list[Emission], *, may_be_denied: bool) -> None:
        """A card at the reader: now and then refused (a stranger's or an expired card),
        else granted, and the door opens 1-4 s later."""
        rng = self.rng
        door = self._door
        if may_be_denied and rng.random() < self._rates.denied_fraction:
            expired = rng.random() < 0.5
            card = (
                rng.choice(self._expired)
                if expired
                else (f"{rng.randrange(10_000_000, 100_000_000)}")
            )
            denied: dict[str, JsonScalar] = {
                "door": door,
                "event": "access_denied",
                "credential": card,
                "direction": self._direction,
                "reason": "card expired" if expired else "unknown card",
            }
            out.append(self._emit(EVENT, denied, now_ms))
            return
        granted: dict[str, JsonScalar] = {
            "door": door,
            "event": "access_granted",
            "credential": rng.choice(self._cards),
            "direction": self._direction,
        }
        out.append(self._emit(EVENT, granted, now_ms))
        self._locked = False
        self._busy = True
        self._after(now_ms, rng.uniform(1.0, 4.0) * MS_PER_S, "open")


@dataclass(frozen=True, slots=True)
class _Episode:
    """A nuisance source: rises while active, decays after (shower steam, cooking)."""

    source: Literal["cooking", "steam"]
    start_ms: int
    end_ms: int
    rise_ms: float
    fall_ms: float
    obscuration: float
    humidity: float
    """Humidity the room approaches (steam), 0 when the source leaves humidity alone."""
    temperature: float
    tvoc: float
    pm2_5: float
    co: float

    def intensity(self, t_ms: int) -> float:
        if t_ms < self.start_ms:
            return 0.0
        if t_ms <= self.end_ms:
            return 1.0 - math.exp(-(t_ms - self.start_ms) / self.rise_ms)
        at_end = 1.0 - math.exp(-(self.end_ms - self.start_ms) / self.rise_ms)
        return at_end * math.exp(-(t_ms - self.end_ms) / self.fall_ms)

    def over(self, t_ms: int) -> bool:
        return t_ms > self.end_ms + 8 * self.fall_ms


class SmokeBehaviour(Behaviour):
    """A multi-sensor smoke detector: 60 s telemetry around room baselines, a daily
    temperature swing, nuisance cooking (kitchens) and shower steam (bathrooms), rare
    fault episodes. Never in alarm: alarms come from scenarios."""

    kind = "smoke"
    battery_drain = 0.0001  # 1440 messages a day: about 0.15 %/day
    TELEMETRY_MS: ClassVar[int] = MS_PER_MIN
    LOW_BATTERY: ClassVar[float] = 20.0

    def __init__(
        self, device: SmokeDevice, *, seed: int, start_ms: int, clock: LocalClock, rates: Rates
    ) -> None:
        super().__init__(device, seed=seed, start_ms=start_ms, clock=clock, rates=rates)
        rng = self.rng
        self._room = device.attributes.room
        self._temperature = ROOM_TEMPERATURE[self._room] + rng.uniform(-1.0, 1.0)
        self._humidity = rng.uniform(40.0, 55.0) + (5.0 if self._room == "bathroom" else 0.0)
        self._obscuration = rng.uniform(0.015, 0.035)
        self._co = rng.uniform(0.2, 1.0)
        self._tvoc = rng.uniform(5.0, 120.0)
        self._pm2_5 = rng.uniform(0.3, 1.0)
        self._pressure = rng.uniform(1005.0, 1020.0)
        self._battery = rng.uniform(40.0, 100.0)
        self._t_noise = 0.0
        self._h_noise = 0.0
        self._fault = False
        self._low_battery_sent = False
        self._episodes: list[_Episode] = []
        self._plan_day(clock.day(start_ms), start_ms)
        self._at(self._next_midnight(start_ms), "day")
        self._at(start_ms + rng.randrange(MS_PER_S, self.TELEMETRY_MS), "telemetry")
        if rates.smoke_faults_per_day > 0:
            self._after(start_ms, self._exp_ms(rates.smoke_faults_per_day / 24), "fault")

    def _next_midnight(self, now_ms: int) -> int:
        return self._clock.at(self._clock.day(now_ms) + timedelta(days=1), 0.0)

    def _plan_day(self, day: date, now_ms: int) -> None:
        """Draw the day's nuisance episodes (always the same draws, whatever the start)."""
        rng = self.rng
        windows: tuple[tuple[float, float], ...] = ()
        probability = 0.0
        if self._room == "kitchen":
            windows, probability = MEAL_WINDOWS, self._rates.cooking_probability
        elif self._room == "bathroom":
            windows, probability = SHOWER_WINDOWS, self._rates.shower_probability
        for first, last in windows:
            happens = rng.random() < probability
            start_h = rng.uniform(first, last - 0.25)
            minutes = rng.uniform(5.0, 20.0)
            strength = rng.random()
            if not happens:
                continue
            start = self._clock.at(day, start_h)
            end = start + round(minutes * MS_PER_MIN)
            if end < now_ms:
                continue
            if self._room == "kitchen":
                episode = _Episode(
                    "cooking", start, end, 2 * MS_PER_MIN, 5 * MS_PER_MIN,
                    obscuration=0.6 + 1.4 * strength,
                    humidity=0.0,
                    temperature=1.0 + 2.0 * strength,
                    tvoc=300.0 + 1200.0 * strength,
                    pm2_5=15.0 + 65.0 * strength,
                    co=0.5 + 2.5 * strength,
                )  # fmt: skip
            else:
                episode = _Episode(
                    "steam", start, end, 2 * MS_PER_MIN, 10 * MS_PER_MIN,
                    obscuration=0.1 + 0.3 * strength,
                    humidity=92.0 + 6.0 * strength,
                    temperature=1.0 + 1.5 * strength,
                    tvoc=0.0,
                    pm2_5=0.0,
                    co=0.0,
                )  # fmt: skip
            self._episodes.append(episode)

    def _act(self, action: str, now_ms: int, out: list[Emission]) -> None:
        rng = self.rng
        if action == "telemetry":
            out.append(self._emit(TELEMETRY, self._reading(now_ms), now_ms))
            battery = self._battery or 0.0
            if battery < self.LOW_BATTERY and not self._low_battery_sent:
                self._low_battery_sent = True
                event: dict[str, JsonScalar] = {
                    "event": "low_battery",
                    "detail": f"battery {battery:.0f} %",
                }
                out.append(self._emit(EVENT, event, now_ms))
            self._after(now_ms, self.TELEMETRY_MS, "telemetry")
        elif action == "day":
            self._episodes = [e for e in self._episodes if not e.over(now_ms)]
            self._plan_day(self._clock.day(now_ms), now_ms)
            self._at(self._next_midnight(now_ms), "day")
        elif action == "fault":
            self._fault = True
            detail = rng.choice(_SMOKE_FAULTS)
            out.append(self._emit(EVENT, {"event": "fault", "detail": detail}, now_ms))
            self._after(now_ms, rng.uniform(2.0, 10.0) * MS_PER_MIN, "fault_cleared")
        elif action == "fault_cleared":
            self._fault = False
            out.append(self._emit(EVENT, {"event": "fault_cleared"}, now_ms))
            self._after(now_ms, self._exp_ms(self._rates.smoke_faults_per_day / 24), "fault")
        else:
            raise ValueError(f"smoke: unknown action {action!r}")

    def _reading(self, now_ms: int) -> dict[str, JsonScalar]:
        """One telemetry sample: baselines, daily swing, AR(1) noise, nuisance episodes."""
        rng = self.rng
        gauss = rng.gauss
        swing = 2.0 * math.sin(2 * math.pi * (self._clock.hour(now_ms) - 9.0) / 24)  # max 15:00
        self._t_noise = 0.97 * self._t_noise + gauss(0.0, 0.05)
        self._h_noise = 0.97 * self._h_noise + gauss(0.0, 0.2)
        temperature = self._temperature + swing + self._t_noise
        humidity = self._humidity - 1.5 * swing + self._h_noise
        obscuration = max(0.005, self._obscuration + gauss(0.0, 0.004))
        co = min(2.0, max(0.0, self._co + gauss(0.0, 0.2)))
        tvoc = max(0.0, self._tvoc + gauss(0.0, 12.0))
        pm2_5 = max(0.0, self._pm2_5 + gauss(0.0, 0.15))
        self._pressure += gauss(0.0, 0.01)
        for episode in self._episodes:
            level = episode.intensity(now_ms)
            if level <= 0.0:
                continue
            obscuration += episode.obscuration * level
            temperature += episode.temperature * level
            tvoc += episode.tvoc * level
            pm2_5 += episode.pm2_5 * level
            co += episode.co * level
            if episode.humidity > 0:
                humidity += (episode.humidity - humidity) * level
        humidity = min(100.0, max(5.0, humidity))
        eco2 = max(400.0, 400.0 + gauss(0.0, 15.0) + 0.4 * max(0.0, tvoc - 150.0))
        return {
            "temperature": round(temperature, 2),
            "humidity": round(humidity, 2),
            "obscuration": round(obscuration, 3),
            "co": round(co, 2),
            "tvoc": round(tvoc, 1),
            "eco2": round(eco2, 1),
            "pm1_0": round(pm2_5 * 0.95, 2),
            "pm2_5": round(pm2_5, 2),
            "nc0_5": round(pm2_5 * 6.5, 2),
            "pressure": round(self._pressure, 2),
            "battery": round(self._battery or 0.0, 2),
            "alarm": False,
            "fault": self._fault,
            "test": False,
        }


class ParkingBehaviour(Behaviour):
    """A bay sensor (occupied/vacant as a two-state chain following the commute) or a
    lot counter (occupancy along the same daily curve, clamped to the capacity)."""

    kind = "parking"
    HEARTBEAT_MS: ClassVar[int] = 30 * MS_PER_MIN
    LOT_EVERY_MS: ClassVar[int] = 5 * MS_PER_MIN

    def __init__(
        self, device: ParkingDevice, *, seed: int, start_ms: int, clock: LocalClock, rates: Rates
    ) -> None:
        super().__init__(device, seed=seed, start_ms=start_ms, clock=clock, rates=rates)
        rng = self.rng
        attrs = device.attributes
        hour = clock.hour(start_ms)
        self._where: dict[str, JsonScalar] = {}
        self._stuck_until = 0
        if attrs.bay_id is not None:
            self._where["bay_id"] = attrs.bay_id
            if attrs.zone is not None:
                self._where["zone"] = attrs.zone
            # Fire lanes stay clear in background traffic: parking there is a scenario.
            self._turnover = 0.0 if attrs.fire_lane else rng.uniform(0.7, 1.3)
            self._peak = self._turnover * max(BAY_TURNOVER)
            draw = rng.random()
            self._occupied = self._turnover > 0 and draw < profile_at(BAY_OCCUPIED, hour)
            self._at(start_ms + rng.randrange(MS_PER_S, self.HEARTBEAT_MS), "heartbeat")
            if self._peak > 0:
                self._after(start_ms, self._exp_ms(self._peak), "change")
            if rates.bay_faults_per_day > 0:
                self._after(start_ms, self._exp_ms(rates.bay_faults_per_day / 24), "fault")
        else:
            assert attrs.lot is not None and attrs.capacity is not None  # the site checks it
            self._where["lot"] = attrs.lot
            self._capacity = attrs.capacity
            self._fill = rng.uniform(0.8, 1.0)
            self._drift = 0.0
            self._at(start_ms + rng.randrange(MS_PER_S, self.LOT_EVERY_MS), "count")

    def _bay_state(self) -> dict[str, JsonScalar]:
        return {**self._where, "occupied": self._occupied}

    def _act(self, action: str, now_ms: int, out: list[Emission]) -> None:
        rng = self.rng
        if action == "heartbeat":
            out.append(self._emit(TELEMETRY, self._bay_state(), now_ms))
            self._after(now_ms, self.HEARTBEAT_MS, "heartbeat")
        elif action == "change":
            self._after(now_ms, self._exp_ms(self._peak), "change")
            hour = self._clock.hour(now_ms)
            p = profile_at(BAY_OCCUPIED, hour)
            rate = self._turnover * profile_at(BAY_TURNOVER, hour)
            rate *= (1.0 - p) if self._occupied else p
            if rng.random() * self._peak >= rate or now_ms < self._stuck_until:
                return
            self._occupied = not self._occupied
            event = "vehicle_arrived" if self._occupied else "vehicle_left"
            out.append(self._emit(EVENT, {**self._where, "event": event}, now_ms))
            out.append(self._emit(TELEMETRY, self._bay_state(), now_ms))
        elif action == "fault":
            # The sensor sticks for a while: it reports the fault and misses changes.
            self._stuck_until = now_ms + round(rng.uniform(10.0, 60.0) * MS_PER_MIN)
            out.append(self._emit(EVENT, {**self._where, "event": "fault"}, now_ms))
            self._at(self._stuck_until, "recovered")
        elif action == "recovered":
            out.append(self._emit(TELEMETRY, self._bay_state(), now_ms))
            self._after(now_ms, self._exp_ms(self._rates.bay_faults_per_day / 24), "fault")
        elif action == "count":
            hour = self._clock.hour(now_ms)
            capacity = self._capacity
            self._drift = 0.9 * self._drift + rng.gauss(0.0, 0.01 * capacity)
            expected = capacity * self._fill * profile_at(BAY_OCCUPIED, hour) + self._drift
            occupancy = min(capacity, max(0, round(expected)))
            payload: dict[str, JsonScalar] = {
                **self._where,
                "capacity": capacity,
                "occupancy": occupancy,
            }
            out.append(self._emit(TELEMETRY, payload, now_ms))
            self._after(now_ms, self.LOT_EVERY_MS, "count")
        else:
            raise ValueError(f"parking: unknown action {action!r}")


def behaviour_for(
    site: Site,
    device: SiteDevice,
    *,
    seed: int,
    start_ms: int,
    clock: LocalClock | None = None,
    rates: Rates = DEFAULT_RATES,
) -> Behaviour:
    """The state machine for one site device (its stream depends on seed and id only)."""
    clock = clock or LocalClock(site.tz)
    if isinstance(device, AccessDevice):
        return AccessBehaviour(
            device,
            schedule=site.schedule_of(device),
            seed=seed,
            start_ms=start_ms,
            clock=clock,
            rates=rates,
        )
    if isinstance(device, SmokeDevice):
        return SmokeBehaviour(device, seed=seed, start_ms=start_ms, clock=clock, rates=rates)
    return ParkingBehaviour(device, seed=seed, start_ms=start_ms, clock=clock, rates=rates)
