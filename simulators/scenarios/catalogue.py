"""The catalogue of incident scenarios: a planner per incident, and `SCENARIOS`.

A planner draws from its scenario's own random stream where and when the incident
happens on a site inside the window (a device fit for it, a time that leaves room for
it) and returns the `ScenarioPlan`: what the incident changes in the traffic and the
label that says what happened. Planners raise `ScenarioError` when the site or the
window cannot hold their incident.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

from sensors.base import EVENT, STATUS, TELEMETRY
from simulators.behaviour import MS_PER_HOUR, MS_PER_MIN, MS_PER_S, LocalClock
from simulators.labels import IncidentKind, Label
from simulators.scenarios.plan import (
    Injection,
    Override,
    Scenario,
    ScenarioError,
    ScenarioPlan,
    Silence,
    Stuck,
)
from sites.model import AccessDevice, ParkingDevice, Site, SmokeDevice, distance_m

# --- planning helpers ---------------------------------------------------------------


def _label(
    site: Site,
    scenario: str,
    n: int,
    kind: IncidentKind,
    devices: Sequence[str],
    start_ms: int,
    end_ms: int,
    note: str = "",
    detectable_ms: int | None = None,
) -> Label:
    """A label: cell of the first device, devices sorted; times refined by the run."""
    return Label(
        id=f"scn-{scenario}-{n}",
        kind=kind,
        site=site.site,
        cell=site.device(devices[0]).cell,
        devices=tuple(sorted(devices)),
        start_ms=start_ms,
        end_ms=end_ms,
        source=f"scenario {scenario}",
        note=note,
        detectable_ms=detectable_ms,
    )


def _at(rng: random.Random, start_ms: int, end_ms: int, span_ms: int, name: str) -> int:
    """A start time leaving room for the incident's span (and a minute either side)."""
    margin = MS_PER_MIN
    last = end_ms - span_ms - margin
    if last < start_ms + margin:
        need = (span_ms + 2 * margin) / MS_PER_S
        raise ScenarioError(
            f"scenario {name!r} needs a window of at least {need:.0f} s ({need / 3600:.1f} h)"
        )
    return rng.randrange(start_ms + margin, last + 1)


def _keep_clear(plan: ScenarioPlan, door: AccessDevice, first: int, last: int) -> None:
    """Drop the door's background passages around an injected one (none interleave)."""
    margin = 15 * MS_PER_S
    plan.silences.append(Silence(door.id, first - margin, last + margin, frozenset({EVENT})))


def _card_doors(site: Site) -> list[AccessDevice]:
    return [d for d in site.devices_of("access") if not d.attributes.emergency_exit]


def _closed_starts(
    site: Site, door: AccessDevice, start_ms: int, end_ms: int, span_ms: int
) -> list[int]:
    """Minute-aligned times t where the door's schedule is closed for [t - 1 min, t + span]
    (no background card traffic then: the schedule gates arrivals)."""
    schedule = site.schedule_of(door)
    if schedule is None or schedule.is_always_open():
        return []
    clock = LocalClock(site.tz)
    closed = {
        t
        for t in range(start_ms - start_ms % MS_PER_MIN, end_ms, MS_PER_MIN)
        if not schedule.is_open(clock.local(t))
    }
    margin = MS_PER_MIN
    out = []
    for t in sorted(closed):
        if t < start_ms + margin or t + span_ms + margin > end_ms:
            continue
        need = range(t - margin, t + span_ms + 2 * margin, MS_PER_MIN)
        if all(m - m % MS_PER_MIN in closed for m in need):
            out.append(t)
    return out


def _quiet_door(
    site: Site, rng: random.Random, start_ms: int, end_ms: int, span_ms: int, name: str
) -> tuple[AccessDevice, int]:
    """A card door and a time when its schedule keeps background traffic away."""
    candidates = [
        (door, starts)
        for door in sorted(_card_doors(site), key=lambda d: d.id)
        if (starts := _closed_starts(site, door, start_ms, end_ms, span_ms))
    ]
    if candidates:
        door, starts = rng.choice(candidates)
        return door, rng.choice(starts)
    raise ScenarioError(
        f"scenario {name!r} needs a card door whose schedule is closed for "
        f"{span_ms / MS_PER_MIN:.0f} min inside the window (e.g. a window over local night)"
    )


def _any_smoke(site: Site, rng: random.Random, name: str) -> SmokeDevice:
    detectors = sorted(site.devices_of("smoke"), key=lambda d: d.id)
    if not detectors:
        raise ScenarioError(f"scenario {name!r} needs a smoke detector on the site")
    return rng.choice(detectors)


# --- access scenarios -----------------------------------------------------------------


def _plan_door_forced(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """Door opened without a grant at night, the controller reports it forced."""
    name = "door_forced"
    door, t = _quiet_door(site, rng, start_ms, end_ms, 2 * MS_PER_MIN, name)
    label = f"scn-{name}-1"
    d = door.attributes.door
    close = t + rng.randrange(5, 40) * MS_PER_S
    plan = ScenarioPlan()
    plan.injections += [
        Injection(t, door.id, EVENT, {"door": d, "event": "door_opened"}, label),
        Injection(t, door.id, EVENT, {"door": d, "event": "door_forced"}, label),
        Injection(close, door.id, EVENT, {"door": d, "event": "door_closed"}, label),
    ]
    plan.labels.append(_label(site, name, 1, IncidentKind.DOOR_FORCED, [door.id], t, close))
    return plan


def _plan_door_held_open(
    site: Site, rng: random.Random, start_ms: int, end_ms: int
) -> ScenarioPlan:
    """A granted passage whose door then stands open for minutes (propped open)."""
    name = "door_held_open"
    held_ms = rng.randrange(3, 8) * MS_PER_MIN
    # A door without opening hours (a grant at a closed door would be after-hours
    # access too); flat doors first: few keyholders, little background to interleave.
    open_doors = [d for d in _card_doors(site) if site.schedule_of(d) is None]
    flats = [d for d in open_doors if d.attributes.unit and not d.attributes.elderly_resident]
    pool = sorted(flats or open_doors, key=lambda d: d.id)
    if not pool:
        raise ScenarioError(f"scenario {name!r} needs a card door without a schedule")
    door = rng.choice(pool)
    t = _at(rng, start_ms, end_ms, held_ms + MS_PER_MIN, name)
    label = f"scn-{name}-1"
    d = door.attributes.door
    card = f"{rng.randrange(10_000_000, 100_000_000)}"
    opened = t + 2 * MS_PER_S
    plan = ScenarioPlan()
    _keep_clear(plan, door, t, opened + held_ms)
    plan.overrides.append(
        Override(door.id, opened, opened + held_ms, {"door_open": True, "locked": False}, label)
    )
    plan.injections += [
        Injection(
            t,
            door.id,
            EVENT,
            {"door": d, "event": "access_granted", "credential": card, "direction": "in"},
        ),
        Injection(opened, door.id, EVENT, {"door": d, "event": "door_opened"}, label),
        Injection(opened + MS_PER_MIN, door.id, EVENT, {"door": d, "event": "door_held"}, label),
        Injection(opened + held_ms, door.id, EVENT, {"door": d, "event": "door_closed"}, label),
    ]
    plan.labels.append(
        _label(site, name, 1, IncidentKind.DOOR_HELD_OPEN, [door.id], opened, opened + held_ms)
    )
    return plan


def _plan_after_hours(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """A valid card opens a scheduled door while its opening hours are closed."""
    name = "after_hours_access"
    door, t = _quiet_door(site, rng, start_ms, end_ms, MS_PER_MIN, name)
    label = f"scn-{name}-1"
    d = door.attributes.door
    card = f"{rng.randrange(10_000_000, 100_000_000)}"
    opened = t + rng.randrange(1000, 4000)
    closed = opened + rng.randrange(3000, 8000)
    granted = {"door": d, "event": "access_granted", "credential": card, "direction": "in"}
    plan = ScenarioPlan()
    plan.injections += [
        Injection(t, door.id, EVENT, granted, label),
        Injection(opened, door.id, EVENT, {"door": d, "event": "door_opened"}, label),
        Injection(closed, door.id, EVENT, {"door": d, "event": "door_closed"}, label),
    ]
    plan.labels.append(_label(site, name, 1, IncidentKind.AFTER_HOURS_ACCESS, [door.id], t, closed))
    return plan


def _plan_repeated_denials(
    site: Site, rng: random.Random, start_ms: int, end_ms: int
) -> ScenarioPlan:
    """Someone tries unknown cards at one door again and again within two minutes."""
    name = "repeated_denials"
    doors = _card_doors(site)
    if not doors:
        raise ScenarioError(f"scenario {name!r} needs a card door on the site")
    door = rng.choice(sorted(doors, key=lambda x: x.id))
    tries = rng.randrange(5, 9)
    t = _at(rng, start_ms, end_ms, 2 * MS_PER_MIN, name)
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    times = sorted(t + rng.randrange(0, 2 * MS_PER_MIN) for _ in range(tries))
    for at in times:
        card = f"{rng.randrange(10_000_000, 100_000_000)}"
        denied = {
            "door": door.attributes.door,
            "event": "access_denied",
            "credential": card,
            "direction": "in",
            "reason": "unknown card",
        }
        plan.injections.append(Injection(at, door.id, EVENT, denied, label))
    plan.labels.append(
        _label(site, name, 1, IncidentKind.REPEATED_DENIALS, [door.id], times[0], times[-1])
    )
    return plan


# --- smoke scenarios ------------------------------------------------------------------

_FIRE_STEP_MS: Final = 30 * MS_PER_S
_FIRE_DELAY_MS: Final = 3 * MS_PER_MIN
_FIRE_BURN_MS: Final = 8 * MS_PER_MIN


def _smoke_reading(
    obscuration: float, temperature: float, co: float, alarm: bool
) -> dict[str, object]:
    return {
        "temperature": round(temperature, 2),
        "obscuration": round(min(100.0, obscuration), 3),
        "co": round(co, 2),
        "alarm": alarm,
        "fault": False,
        "test": False,
    }


def _plan_fire(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """A fire spreading across 3+ detectors of one cell, each alarming minutes after the
    last, with rising obscuration, temperature and CO."""
    name = "fire"
    per_cell: dict[str, list[SmokeDevice]] = {}
    for detector in site.devices_of("smoke"):
        per_cell.setdefault(detector.cell, []).append(detector)
    cells = sorted(cell for cell, ds in per_cell.items() if len(ds) >= 3)
    if not cells:
        raise ScenarioError(f"scenario {name!r} needs a cell with at least 3 smoke detectors")
    cell = rng.choice(cells)
    detectors = rng.sample(sorted(per_cell[cell], key=lambda d: d.id), 3)
    span = 2 * _FIRE_DELAY_MS + _FIRE_BURN_MS
    t0 = _at(rng, start_ms, end_ms, span, name)
    end = t0 + span
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    for i, detector in enumerate(detectors):
        begin = t0 + i * _FIRE_DELAY_MS
        plan.silences.append(Silence(detector.id, begin, end + MS_PER_MIN))
        base = rng.uniform(21.0, 25.0)
        alarmed = False
        for at in range(begin, end + 1, _FIRE_STEP_MS):
            minutes = (at - begin) / MS_PER_MIN
            obscuration = 0.03 + 0.9 * minutes**1.5
            alarm = obscuration >= 4.0
            if alarm and not alarmed:
                alarmed = True
                plan.injections.append(
                    Injection(at, detector.id, EVENT, {"event": "alarm", "detail": "smoke"}, label)
                )
            reading = _smoke_reading(obscuration, base + 4.0 * minutes, 1.0 + 8.0 * minutes, alarm)
            plan.injections.append(Injection(at, detector.id, TELEMETRY, reading, label))
    ids = [d.id for d in detectors]
    first_alarm = min(
        (i.at_ms for i in plan.injections if i.channel == EVENT and i.label == label), default=t0
    )
    plan.labels.append(
        _label(site, name, 1, IncidentKind.FIRE, ids, t0, end, detectable_ms=first_alarm)
    )
    return plan


def _plan_smoke_nuisance(
    site: Site, rng: random.Random, start_ms: int, end_ms: int
) -> ScenarioPlan:
    """Burnt toast: one kitchen detector's obscuration rises, it alarms briefly and
    clears; no other detector sees anything, temperature barely moves. Not a fire."""
    name = "smoke_nuisance"
    detectors = site.devices_of("smoke")
    kitchens = [d for d in detectors if d.attributes.room == "kitchen"]
    pool = sorted(kitchens or detectors, key=lambda d: d.id)
    if not pool:
        raise ScenarioError(f"scenario {name!r} needs a smoke detector on the site")
    detector = rng.choice(pool)
    span = 10 * MS_PER_MIN
    t0 = _at(rng, start_ms, end_ms, span, name)
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    plan.silences.append(Silence(detector.id, t0, t0 + span + MS_PER_MIN))
    base = rng.uniform(22.0, 26.0)
    peak = rng.uniform(4.5, 6.0)
    alarm_from, alarm_to = t0 + 4 * MS_PER_MIN, t0 + 5 * MS_PER_MIN
    for at in range(t0, t0 + span + 1, _FIRE_STEP_MS):
        minutes = (at - t0) / MS_PER_MIN
        level = minutes / 4.5 if minutes <= 4.5 else max(0.0, 1.0 - (minutes - 4.5) / 4.0)
        alarm = alarm_from <= at < alarm_to
        if at == alarm_from:
            event = {"event": "alarm", "detail": "smoke"}
            plan.injections.append(Injection(at, detector.id, EVENT, event, label))
        if at == alarm_to:
            plan.injections.append(
                Injection(at, detector.id, EVENT, {"event": "alarm_cleared"}, label)
            )
        reading = _smoke_reading(0.03 + peak * level, base + 1.0 * level, 0.8 + 1.5 * level, alarm)
        plan.injections.append(Injection(at, detector.id, TELEMETRY, reading, label))
    plan.labels.append(
        _label(
            site,
            name,
            1,
            IncidentKind.SMOKE_NUISANCE,
            [detector.id],
            t0,
            t0 + span,
            detectable_ms=alarm_from,  # rising smoke below the alarm level is no incident
        )
    )
    return plan


def _plan_low_battery(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """A smoke detector's battery reads low from some time on and it says so once."""
    name = "low_battery"
    detector = _any_smoke(site, rng, name)
    span = 10 * MS_PER_MIN
    t0 = _at(rng, start_ms, end_ms, span, name)
    level = round(rng.uniform(5.0, 15.0), 2)
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    event = {"event": "low_battery", "detail": f"battery {level:.0f} %"}
    plan.injections.append(Injection(t0, detector.id, EVENT, event, label))
    plan.overrides.append(Override(detector.id, t0, end_ms, {"battery": level}, label))
    plan.labels.append(_label(site, name, 1, IncidentKind.LOW_BATTERY, [detector.id], t0, t0))
    return plan


def _plan_stuck_sensor(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """A smoke detector repeats its last telemetry values for up to two hours."""
    name = "stuck_sensor"
    detector = _any_smoke(site, rng, name)
    available = end_ms - start_ms - 5 * MS_PER_MIN
    span = min(2 * MS_PER_HOUR, available // 2)
    if span < 10 * MS_PER_MIN:
        raise ScenarioError(f"scenario {name!r} needs a window of at least 25 min")
    # Leave two telemetry periods before the freeze so there are values to freeze.
    t0 = _at(rng, start_ms + 2 * MS_PER_MIN, end_ms, span, name)
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    plan.stuck.append(Stuck(detector.id, t0, t0 + span, label))
    plan.labels.append(
        _label(site, name, 1, IncidentKind.STUCK_SENSOR, [detector.id], t0, t0 + span)
    )
    return plan


# --- parking scenarios ----------------------------------------------------------------


def _plan_lot_over_capacity(
    site: Site, rng: random.Random, start_ms: int, end_ms: int
) -> ScenarioPlan:
    """A car-park counter reports more vehicles than spaces for half an hour."""
    name = "lot_over_capacity"
    lots = sorted(
        (d for d in site.devices_of("parking") if not d.attributes.is_bay), key=lambda d: d.id
    )
    if not lots:
        raise ScenarioError(f"scenario {name!r} needs a lot counter on the site")
    lot = rng.choice(lots)
    capacity = lot.attributes.capacity
    assert capacity is not None
    span = 30 * MS_PER_MIN
    t0 = _at(rng, start_ms, end_ms, span, name)
    over = capacity + rng.randrange(3, 3 + max(3, capacity // 10))
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    plan.overrides.append(Override(lot.id, t0, t0 + span, {"occupancy": over}, label))
    plan.labels.append(
        _label(site, name, 1, IncidentKind.LOT_OVER_CAPACITY, [lot.id], t0, t0 + span)
    )
    return plan


# --- compromised devices --------------------------------------------------------------

_MALFORMED: Final[tuple[bytes, ...]] = (
    b"\xff\xfe\x00garbage",
    b'{"ts":',
    b"[1,2,3]",
    b'{"seq":"one","event":"alarm"}',
    b'{"ts":"yesterday","event":"tamper"}',
    b'{"event":"explode"}',
    b"null",
)


def _plan_malformed(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """A compromised device sends payloads that are not what its kind may send."""
    name = "malformed_payloads"
    devices = sorted(site.devices, key=lambda d: d.id)
    if not devices:
        raise ScenarioError(f"scenario {name!r} needs a device on the site")
    device = rng.choice(devices)
    span = 2 * MS_PER_MIN
    t0 = _at(rng, start_ms, end_ms, span, name)
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    times = sorted(rng.sample(range(t0, t0 + span), len(_MALFORMED)))
    for at, raw in zip(times, rng.sample(_MALFORMED, len(_MALFORMED)), strict=True):
        plan.injections.append(Injection(at, device.id, EVENT, raw, label))
    plan.labels.append(
        _label(site, name, 1, IncidentKind.MALFORMED_PAYLOADS, [device.id], times[0], times[-1])
    )
    return plan


def _plan_message_flood(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """A compromised smoke detector sends valid telemetry 50 times a second for 10 s."""
    name = "message_flood"
    detector = _any_smoke(site, rng, name)
    span = 10 * MS_PER_S
    t0 = _at(rng, start_ms, end_ms, span, name)
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    base = rng.uniform(21.0, 25.0)
    for at in range(t0, t0 + span, 20):
        reading = _smoke_reading(0.02, base + rng.gauss(0.0, 0.05), 0.5, False)
        plan.injections.append(Injection(at, detector.id, TELEMETRY, reading, label))
    plan.labels.append(
        _label(site, name, 1, IncidentKind.MESSAGE_FLOOD, [detector.id], t0, t0 + span - 20)
    )
    return plan


# --- more access scenarios --------------------------------------------------------------

WALKING_M_PER_S: Final = 1.5
"""A brisk walk: one card at two doors faster than this is two cards."""
CLONED_CARD_MIN_M: Final = 300.0
WELFARE_SILENCE_MS: Final = 36 * MS_PER_HOUR
"""No sign of life at an elderly resident's flat door this long calls for a visit."""
SIGNS_OF_LIFE: Final = frozenset(
    {"access_granted", "door_opened", "door_closed", "door_held", "door_forced"}
)
"""Door events that mean someone is there. A tamper report is the controller speaking,
and a refused card someone outside: neither says anything about the resident."""


def _unscheduled_door(site: Site, rng: random.Random, name: str) -> AccessDevice:
    """A card door without opening hours (a grant at a closed door would be after-hours
    access too): gates and entrances first, then flat doors."""
    open_doors = [d for d in _card_doors(site) if site.schedule_of(d) is None]
    shared = [d for d in open_doors if d.attributes.unit is None]
    flats = [d for d in open_doors if not d.attributes.elderly_resident]
    pool = sorted(shared or flats or open_doors, key=lambda d: d.id)
    if not pool:
        raise ScenarioError(f"scenario {name!r} needs a card door without a schedule")
    return rng.choice(pool)


def _plan_tailgating(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """One grant, then the door opens and closes two to four times within ten seconds."""
    name = "tailgating"
    door = _unscheduled_door(site, rng, name)
    t = _at(rng, start_ms, end_ms, MS_PER_MIN, name)
    label = f"scn-{name}-1"
    d = door.attributes.door
    card = f"{rng.randrange(10_000_000, 100_000_000)}"
    granted = {"door": d, "event": "access_granted", "credential": card, "direction": "in"}
    plan = ScenarioPlan()
    _keep_clear(plan, door, t, t + 12 * MS_PER_S)
    plan.injections.append(Injection(t, door.id, EVENT, granted, label))
    at = t
    for _ in range(rng.randrange(2, 5)):
        opened = at + rng.randrange(500, 1500)
        at = opened + rng.randrange(800, 1500)
        plan.injections += [
            Injection(opened, door.id, EVENT, {"door": d, "event": "door_opened"}, label),
            Injection(at, door.id, EVENT, {"door": d, "event": "door_closed"}, label),
        ]
    plan.labels.append(_label(site, name, 1, IncidentKind.TAILGATING, [door.id], t, at))
    return plan


def _plan_cloned_card(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """One card granted at two doors >= 300 m apart in a third of the walking time."""
    name = "cloned_card"
    doors = sorted(_card_doors(site), key=lambda d: d.id)
    pairs = [
        (a, b, distance_m(a.location, b.location))
        for i, a in enumerate(doors)
        for b in doors[i + 1 :]
        if distance_m(a.location, b.location) >= CLONED_CARD_MIN_M
    ]
    if not pairs:
        raise ScenarioError(
            f"scenario {name!r} needs two card doors at least {CLONED_CARD_MIN_M:.0f} m apart"
        )
    clock = LocalClock(site.tz)

    def open_at(door: AccessDevice, t: int) -> bool:
        schedule = site.schedule_of(door)
        return schedule is None or schedule.is_open(clock.local(t))

    margin = MS_PER_MIN
    options = []
    for a, b, metres in pairs:
        gap = max(10 * MS_PER_S, round(metres / WALKING_M_PER_S * MS_PER_S * 0.3))
        for first, second in ((a, b), (b, a)):
            times = [
                t
                for t in range(start_ms + margin, end_ms - gap - 2 * margin, MS_PER_MIN)
                if open_at(first, t) and open_at(second, t + gap)
            ]
            if times:
                options.append((first, second, metres, gap, times))
    if not options:
        raise ScenarioError(
            f"scenario {name!r} needs a time in the window when two doors "
            f"{CLONED_CARD_MIN_M:.0f} m apart are both open"
        )
    first, second, metres, gap, times = rng.choice(options)
    t = rng.choice(times) + rng.randrange(0, 30 * MS_PER_S)
    label = f"scn-{name}-1"
    card = f"{rng.randrange(10_000_000, 100_000_000)}"
    plan = ScenarioPlan()
    for door, at in ((first, t), (second, t + gap)):
        d = door.attributes.door
        granted = {"door": d, "event": "access_granted", "credential": card, "direction": "in"}
        opened = at + rng.randrange(1000, 4000)
        _keep_clear(plan, door, at, opened + 8 * MS_PER_S)
        plan.injections += [
            Injection(at, door.id, EVENT, granted, label),
            Injection(opened, door.id, EVENT, {"door": d, "event": "door_opened"}),
            Injection(
                opened + rng.randrange(3000, 8000),
                door.id,
                EVENT,
                {"door": d, "event": "door_closed"},
            ),
        ]
    plan.labels.append(
        _label(
            site,
            name,
            1,
            IncidentKind.CLONED_CARD,
            [first.id, second.id],
            t,
            t + gap,
            note=f"{metres:.0f} m in {gap / MS_PER_S:.0f} s",
            detectable_ms=t + gap,  # until the second use, the first is an ordinary one
        )
    )
    return plan


def _plan_welfare_check(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """An elderly resident's flat door sees no event for 36 h (its telemetry goes on)."""
    name = "welfare_check"
    doors = sorted(
        (d for d in site.devices_of("access") if d.attributes.elderly_resident),
        key=lambda d: d.id,
    )
    if not doors:
        raise ScenarioError(f"scenario {name!r} needs an elderly_resident door on the site")
    door = rng.choice(doors)
    t0 = _at(rng, start_ms, end_ms, WELFARE_SILENCE_MS, name)
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    end = t0 + WELFARE_SILENCE_MS
    plan.silences.append(Silence(door.id, t0, end, frozenset({EVENT}), label))
    plan.labels.append(_label(site, name, 1, IncidentKind.WELFARE_CHECK, [door.id], t0, end))
    return plan


# --- device health ----------------------------------------------------------------------


def _plan_device_offline(
    site: Site, rng: random.Random, start_ms: int, end_ms: int
) -> ScenarioPlan:
    """A device drops off the network (its will says offline) and comes back later."""
    name = "device_offline"
    devices = sorted(site.devices, key=lambda d: d.id)
    if not devices:
        raise ScenarioError(f"scenario {name!r} needs a device on the site")
    device = rng.choice(devices)
    span = rng.randrange(30, 91) * MS_PER_MIN
    t0 = _at(rng, start_ms, end_ms, span, name)
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    plan.silences.append(Silence(device.id, t0, t0 + span))
    plan.injections += [
        Injection(t0, device.id, STATUS, b"offline", label),
        Injection(t0 + span, device.id, STATUS, b"online", label),
    ]
    plan.labels.append(
        _label(site, name, 1, IncidentKind.DEVICE_OFFLINE, [device.id], t0, t0 + span)
    )
    return plan


def _plan_device_tamper(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """Someone opens a smoke detector's cover: two tamper events a minute apart."""
    name = "device_tamper"
    detector = _any_smoke(site, rng, name)
    t0 = _at(rng, start_ms, end_ms, 2 * MS_PER_MIN, name)
    again = t0 + rng.randrange(30, 90) * MS_PER_S
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    for at in (t0, again):
        event = {"event": "tamper", "detail": "cover removed"}
        plan.injections.append(Injection(at, detector.id, EVENT, event, label))
    plan.labels.append(_label(site, name, 1, IncidentKind.DEVICE_TAMPER, [detector.id], t0, again))
    return plan


def _plan_device_fault(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    """A smoke detector reports a fault, flags it in telemetry, and clears it later."""
    name = "device_fault"
    detector = _any_smoke(site, rng, name)
    span = rng.randrange(15, 45) * MS_PER_MIN
    t0 = _at(rng, start_ms, end_ms, span, name)
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    fault = {"event": "fault", "detail": "sensor self-check failed"}
    plan.injections += [
        Injection(t0, detector.id, EVENT, fault, label),
        Injection(t0 + span, detector.id, EVENT, {"event": "fault_cleared"}, label),
    ]
    plan.overrides.append(Override(detector.id, t0, t0 + span, {"fault": True}, label))
    plan.labels.append(
        _label(site, name, 1, IncidentKind.DEVICE_FAULT, [detector.id], t0, t0 + span)
    )
    return plan


# --- bays -----------------------------------------------------------------------------


def _plan_bay_violation(
    site: Site,
    rng: random.Random,
    start_ms: int,
    end_ms: int,
    *,
    name: str,
    kind: IncidentKind,
    wanted: Callable[[ParkingDevice], bool],
    what: str,
    span_ms: tuple[int, int] = (20 * MS_PER_MIN, 60 * MS_PER_MIN),
    note: str = "",
) -> ScenarioPlan:
    """A vehicle parks in a bay it must not use for 20-60 min; the bay's own background
    events are silenced meanwhile (the vehicle is there, whatever else would happen)."""
    bays = sorted((d for d in site.devices_of("parking") if wanted(d)), key=lambda d: d.id)
    if not bays:
        raise ScenarioError(f"scenario {name!r} needs {what} on the site")
    bay = rng.choice(bays)
    span = rng.randrange(span_ms[0], span_ms[1] + 1, MS_PER_MIN)
    t0 = _at(rng, start_ms, end_ms, span, name)
    label = f"scn-{name}-1"
    where: dict[str, object] = {"bay_id": bay.attributes.bay_id}
    if bay.attributes.zone is not None:
        where["zone"] = bay.attributes.zone
    plate = f"GW{rng.randrange(10_000, 100_000)}"
    plan = ScenarioPlan()
    plan.silences.append(Silence(bay.id, t0, t0 + span + 1, frozenset({EVENT})))
    plan.overrides.append(Override(bay.id, t0, t0 + span, {"occupied": True}, label))
    plan.injections += [
        Injection(t0, bay.id, EVENT, {**where, "event": "vehicle_arrived", "plate": plate}, label),
        Injection(t0, bay.id, TELEMETRY, {**where, "occupied": True}, label),
        Injection(t0 + span, bay.id, EVENT, {**where, "event": "vehicle_left"}, label),
        Injection(t0 + span, bay.id, TELEMETRY, {**where, "occupied": False}),
    ]
    plan.labels.append(_label(site, name, 1, kind, [bay.id], t0, t0 + span, note))
    return plan


OVERSTAY_LIMIT_MS: Final = 24 * MS_PER_HOUR
"""An ordinary bay occupied by one vehicle longer than this is an overstay (background
vehicles leave within a day: daytime turnover makes a full day very unlikely)."""


def _plan_overstay(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    return _plan_bay_violation(
        site,
        rng,
        start_ms,
        end_ms,
        name="parking_overstay",
        kind=IncidentKind.PARKING_OVERSTAY,
        wanted=lambda d: (
            d.attributes.is_bay and not d.attributes.fire_lane and not d.attributes.reserved
        ),
        what="an ordinary bay (not fire lane, not reserved)",
        span_ms=(OVERSTAY_LIMIT_MS + MS_PER_HOUR, OVERSTAY_LIMIT_MS + 2 * MS_PER_HOUR),
        note=f"one vehicle for more than {OVERSTAY_LIMIT_MS // MS_PER_HOUR} h",
    )


def _plan_fire_lane(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    return _plan_bay_violation(
        site,
        rng,
        start_ms,
        end_ms,
        name="fire_lane_violation",
        kind=IncidentKind.FIRE_LANE_VIOLATION,
        wanted=lambda d: d.attributes.fire_lane,
        what="a fire_lane bay",
    )


def _plan_reserved_bay(site: Site, rng: random.Random, start_ms: int, end_ms: int) -> ScenarioPlan:
    return _plan_bay_violation(
        site,
        rng,
        start_ms,
        end_ms,
        name="reserved_bay_violation",
        kind=IncidentKind.RESERVED_BAY_VIOLATION,
        wanted=lambda d: d.attributes.reserved,
        what="a reserved bay",
    )


# --- storm ----------------------------------------------------------------------------

STORM_DEVICES: Final = 20


FLOOD_ALARMS: Final = 10
"""ISA-18.2: more than 10 alarms in 10 minutes (per operator) is an alarm flood. A storm
is detectable from its 11th alarm on; before that it is ordinary alarms."""


def _plan_incident_storm(
    site: Site, rng: random.Random, start_ms: int, end_ms: int
) -> ScenarioPlan:
    """A power surge: up to 20 devices of every kind report tamper within 30 s."""
    name = "incident_storm"
    devices = sorted(site.devices, key=lambda d: d.id)
    if len(devices) < 2:
        raise ScenarioError(f"scenario {name!r} needs at least two devices on the site")
    hit = rng.sample(devices, min(STORM_DEVICES, len(devices)))
    t0 = _at(rng, start_ms, end_ms, 30 * MS_PER_S, name)
    label = f"scn-{name}-1"
    plan = ScenarioPlan()
    times = []
    for device in hit:
        at = t0 + rng.randrange(0, 30 * MS_PER_S)
        times.append(at)
        event: dict[str, object] = {"event": "tamper"}
        if isinstance(device, AccessDevice):
            event["door"] = device.attributes.door
        plan.injections.append(Injection(at, device.id, EVENT, event, label))
    first = hit[times.index(min(times))].id
    ids = [first, *(d.id for d in hit if d.id != first)]
    ordered = sorted(times)
    flood = ordered[min(FLOOD_ALARMS, len(ordered) - 1)]
    plan.labels.append(
        _label(
            site,
            name,
            1,
            IncidentKind.INCIDENT_STORM,
            ids,
            ordered[0],
            ordered[-1],
            detectable_ms=flood,
        )
    )
    return plan


SCENARIOS: Final[Mapping[str, Scenario]] = MappingProxyType(
    {
        s.name: s
        for s in (
            Scenario(
                "door_forced",
                IncidentKind.DOOR_FORCED,
                "A door opens without a grant (at night) and the controller reports it forced",
                _plan_door_forced,
            ),
            Scenario(
                "door_held_open",
                IncidentKind.DOOR_HELD_OPEN,
                "A door stands open for minutes after a grant",
                _plan_door_held_open,
            ),
            Scenario(
                "after_hours_access",
                IncidentKind.AFTER_HOURS_ACCESS,
                "A valid card opens a scheduled door outside its opening hours",
                _plan_after_hours,
            ),
            Scenario(
                "repeated_denials",
                IncidentKind.REPEATED_DENIALS,
                "Five to eight denied card attempts at one door within two minutes",
                _plan_repeated_denials,
            ),
            Scenario(
                "low_battery",
                IncidentKind.LOW_BATTERY,
                "A smoke detector's battery reads low and it reports low_battery",
                _plan_low_battery,
            ),
            Scenario(
                "lot_over_capacity",
                IncidentKind.LOT_OVER_CAPACITY,
                "A car-park counter reports more vehicles than spaces for 30 min",
                _plan_lot_over_capacity,
            ),
            Scenario(
                "fire",
                IncidentKind.FIRE,
                "A fire spreading across three detectors of one cell, minutes apart",
                _plan_fire,
            ),
            Scenario(
                "smoke_nuisance",
                IncidentKind.SMOKE_NUISANCE,
                "Cooking smoke at one kitchen detector: a brief alarm, no spread (not a fire)",
                _plan_smoke_nuisance,
            ),
            Scenario(
                "stuck_sensor",
                IncidentKind.STUCK_SENSOR,
                "A smoke detector repeats its last telemetry values for up to two hours",
                _plan_stuck_sensor,
            ),
            Scenario(
                "malformed_payloads",
                IncidentKind.MALFORMED_PAYLOADS,
                "A compromised device sends payloads ingest must reject",
                _plan_malformed,
            ),
            Scenario(
                "message_flood",
                IncidentKind.MESSAGE_FLOOD,
                "A compromised detector sends 500 valid messages in 10 s",
                _plan_message_flood,
            ),
            Scenario(
                "tailgating",
                IncidentKind.TAILGATING,
                "One grant, then the door opens and closes two to four times",
                _plan_tailgating,
            ),
            Scenario(
                "cloned_card",
                IncidentKind.CLONED_CARD,
                "One card at two doors >= 300 m apart faster than a person can walk",
                _plan_cloned_card,
            ),
            Scenario(
                "welfare_check",
                IncidentKind.WELFARE_CHECK,
                "No door event for 36 h at an elderly resident's flat (needs a >= 38 h run)",
                _plan_welfare_check,
            ),
            Scenario(
                "device_offline",
                IncidentKind.DEVICE_OFFLINE,
                "A device goes offline for 30-90 min and comes back",
                _plan_device_offline,
            ),
            Scenario(
                "device_tamper",
                IncidentKind.DEVICE_TAMPER,
                "A smoke detector's cover is removed: tamper events",
                _plan_device_tamper,
            ),
            Scenario(
                "device_fault",
                IncidentKind.DEVICE_FAULT,
                "A smoke detector reports a fault for 15-45 min",
                _plan_device_fault,
            ),
            Scenario(
                "fire_lane_violation",
                IncidentKind.FIRE_LANE_VIOLATION,
                "A vehicle parks in a fire-lane bay for 20-60 min",
                _plan_fire_lane,
            ),
            Scenario(
                "reserved_bay_violation",
                IncidentKind.RESERVED_BAY_VIOLATION,
                "A vehicle parks in a reserved bay for 20-60 min",
                _plan_reserved_bay,
            ),
            Scenario(
                "parking_overstay",
                IncidentKind.PARKING_OVERSTAY,
                "A vehicle stays 25-26 h in an ordinary bay (needs a >= 26 h run)",
                _plan_overstay,
            ),
            Scenario(
                "incident_storm",
                IncidentKind.INCIDENT_STORM,
                "Up to 20 devices report tamper within 30 s (flood control)",
                _plan_incident_storm,
                exclusive=False,
            ),
        )
    }
)
"""Every scenario, listed by hand."""
