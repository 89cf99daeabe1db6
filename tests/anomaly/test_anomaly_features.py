"""Feature functions and the extractor on hand-made windows (hermetic, no services)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

from anomaly import features as f
from anomaly.extractor import SCHEMAS, FeatureExtractor, ProfileBuilder, Profiles
from sensors.base import FieldValue, Reading

T0 = 1_772_409_600_000  # 2026-03-02T00:00:00Z, a Monday
MIN = f.MS_PER_MIN


def reading(
    kind: str,
    device: str,
    ts_ms: int,
    fields: Mapping[str, FieldValue],
    *,
    channel: str = "telemetry",
    seq: int | None = None,
) -> Reading:
    return Reading(
        measurement=kind,
        site="s1",
        kind=kind,
        device=device,
        channel=channel,
        cell="c1",
        ts_ns=ts_ms * 1_000_000,
        ts_from_device=True,
        seq=seq,
        tags={},
        fields=dict(fields),
    )


def named(kind: str, values: tuple[float, ...]) -> dict[str, float]:
    return dict(zip(SCHEMAS[kind], values, strict=True))


def test_window_statistics() -> None:
    assert f.level([]) == 0.0
    assert f.level([1.0, 2.5]) == 2.5
    assert f.variance([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx(4.0)
    assert f.variance([3.0]) == 0.0
    # 2 units per minute, whatever the spacing of the samples
    ts = [T0, T0 + MIN, T0 + 3 * MIN, T0 + 4 * MIN]
    assert f.slope_per_min(ts, [10.0, 12.0, 16.0, 18.0]) == pytest.approx(2.0)
    assert f.slope_per_min([T0, T0], [1.0, 5.0]) == 0.0
    with pytest.raises(ValueError, match="times for"):
        f.slope_per_min([T0], [1.0, 2.0])


def test_rates_and_gaps() -> None:
    ts = [T0 + i * 10 * MIN for i in range(13)]  # every 10 min for 2 h
    now = ts[-1]
    assert f.count_since(ts, now - f.MS_PER_HOUR) == 7  # inclusive of the hour's start
    assert f.rate_per_hour(ts, now) == 7.0
    assert f.rate_per_hour(ts, now, 2 * f.MS_PER_HOUR) == 6.5
    assert f.gap_s(None, now) == 0.0
    assert f.gap_s(now - 90_000, now) == 90.0
    assert f.largest_gap_s([T0, T0 + MIN, T0 + 31 * MIN]) == 1800.0
    assert f.seq_gap(10, 14) == 3
    assert f.seq_gap(10, 11) == 0
    assert f.seq_gap(10, 2) == 0  # a restarted counter is not a loss
    assert f.seq_gap(None, 5) == 0


def test_repeat_fraction_tells_a_stuck_sensor_from_a_live_one() -> None:
    live = [(21.0 + i * 0.01, 415.0 + i) for i in range(10)]
    stuck = [(21.3, 420.0)] * 10
    assert f.repeat_fraction(live) == 0.0
    assert f.repeat_fraction(stuck) == 1.0
    assert f.repeat_fraction(live[:5] + stuck[:5]) == pytest.approx(4 / 9)
    assert f.repeat_fraction(stuck[:1]) == 0.0
    run = 0
    for previous, row in zip([None, *stuck], stuck, strict=False):
        run = f.repeat_run(run, previous, row)
    assert run == 9  # ten identical rows: nine repeats, and it keeps counting
    assert f.repeat_run(run, stuck[0], live[0]) == 0  # a live row ends the run


def test_time_context() -> None:
    assert f.hour_of_day(T0 + 13 * f.MS_PER_HOUR + 59 * MIN) == 13
    assert f.day_of_week(T0) == 0  # Monday
    assert f.day_of_week(T0 + 5 * f.MS_PER_DAY) == 5  # Saturday
    h_sin, h_cos, _, _ = f.time_context(T0 + 6 * f.MS_PER_HOUR)
    assert (h_sin, h_cos) == pytest.approx((1.0, 0.0), abs=1e-12)
    # midnight Monday and a minute before it (Sunday 23:59) are neighbours on both circles
    a = f.time_context(T0)
    b = f.time_context(T0 - MIN)
    assert math.dist(a, b) < 0.01


def test_hour_share() -> None:
    flat = [10.0] * 24
    assert f.hour_share(flat, 5) == pytest.approx(1.0)
    office = [0.0] * 8 + [30.0] * 10 + [0.0] * 6  # 08:00-18:00 only
    assert f.hour_share(office, 10) > 2.0
    assert f.hour_share(office, 3) == pytest.approx(1 / 301)  # (0 + 1/24) / 301 * 24
    assert f.hour_share([0.0] * 24, 3) == pytest.approx(1.0)  # nothing known: average
    with pytest.raises(ValueError):
        f.hour_share([1.0] * 23, 0)
    curve = [math.nan] * 24
    curve[7] = 0.4
    assert f.usual_at(curve, 7, 0.9) == 0.4
    assert f.usual_at(curve, 8, 0.9) == 0.9


def test_door_counts_and_cloned_card_activity() -> None:
    events = [
        (T0 - 2 * f.MS_PER_HOUR, "access_granted"),  # too old
        (T0 - 30 * MIN, "access_granted"),
        (T0 - 29 * MIN, "door_opened"),
        (T0 - 10 * MIN, "access_denied"),
        (T0 - 9 * MIN, "access_denied"),
        (T0, "access_granted"),
    ]
    assert f.door_counts(
        events, T0, granted="access_granted", denied="access_denied", opened="door_opened"
    ) == (2, 2, 1)
    # one card: at door A 40 min ago and 70 s ago, now at door B
    uses = [(T0 - 40 * MIN, "A"), (T0 - 70_000, "A"), (T0, "B")]
    assert f.credential_activity(uses, T0, "B") == (3, 2, 70.0)
    # the same card only ever at its own door: "not recently elsewhere" = one hour
    assert f.credential_activity([(T0 - MIN, "A"), (T0, "A")], T0, "A") == (2, 1, 3600.0)


def test_parking_helpers() -> None:
    assert f.occupancy_ratio(150, 200) == 0.75
    assert f.occupancy_ratio(5, 0) == 0.0
    assert f.turnover([0.0, 1.0, 1.0, 0.0, 1.0]) == 3.0
    assert f.turnover([0.5]) == 0.0


def _smoke(device: str, ts: int, temperature: float, eco2: float, seq: int) -> Reading:
    return reading(
        "smoke",
        device,
        ts,
        {"temperature": temperature, "eco2": eco2, "obscuration": 0.01, "seq": seq},
        seq=seq,
    )


def test_extractor_smoke_window_sees_a_freeze() -> None:
    ex = FeatureExtractor(Profiles())
    assert ex.update(_smoke("sm1", T0, 21.0, 410.0, 1)) is None  # scored from 5 in a window
    vectors = [
        ex.update(_smoke("sm1", T0 + i * MIN, 21.0 + 0.1 * i, 410.0 + i, i + 1))
        for i in range(1, 6)
    ]
    last = vectors[-1]
    assert last is not None and last.kind == "smoke" and len(last.values) == len(SCHEMAS["smoke"])
    live = named("smoke", last.values)
    assert live["repeat_run"] == 0.0
    assert live["temperature_slope"] == pytest.approx(0.1)
    assert live["gap_log_s"] == pytest.approx(math.log1p(60))
    for i in range(6, 20):  # frozen values, counter and time still moving
        vector = ex.update(_smoke("sm1", T0 + i * MIN, 21.5, 415.0, i + 1))
    assert vector is not None
    frozen = named("smoke", vector.values)
    assert frozen["repeat_run"] == 14.0  # minute 5 already read (21.5, 415): 14 repeats
    assert frozen["temperature_std"] == 0.0
    assert frozen["temperature_slope"] == 0.0
    # a lost message shows as a seq gap
    vector = ex.update(_smoke("sm1", T0 + 22 * MIN, 21.6, 416.0, 24))
    assert vector is not None and named("smoke", vector.values)["seq_gap"] == 3.0


def _access(device: str, ts: int, event: str, credential: str | None = None) -> Reading:
    fields: dict[str, FieldValue] = {"event": event}
    if credential is not None:
        fields["credential_hash"] = credential
    return reading("access", device, ts, fields, channel="event")


def test_extractor_access_cloned_card_and_unusual_hour() -> None:
    builder = ProfileBuilder()
    day_hours = [
        T0 - d * f.MS_PER_DAY + h * f.MS_PER_HOUR for d in range(1, 8) for h in range(8, 18)
    ]
    for ts in day_hours:  # a week of office-hours use, card "c1" at door A only
        builder.observe(_access("door-a", ts, "access_granted", "c1"))
        builder.observe(_access("door-b", ts, "access_granted", "c2"))
    profiles = builder.build()
    assert sum(profiles.door_hours["door-a"]) == len(day_hours)
    ex = FeatureExtractor(profiles)
    noon = T0 + 12 * f.MS_PER_HOUR
    first = ex.update(_access("door-a", noon - 5 * MIN, "door_closed"))
    assert first is not None  # scored, but its gap is unknown (NaN: scored as usual)
    assert math.isnan(named("access", first.values)["gap_log_s"])
    ex.update(_access("door-b", noon - 5 * MIN, "door_closed"))
    usual = ex.update(_access("door-a", noon, "access_granted", "c1"))
    cloned = ex.update(_access("door-b", noon + 45_000, "access_granted", "c1"))
    assert usual is not None and cloned is not None
    u, c = named("access", usual.values), named("access", cloned.values)
    assert u["credential_doors_1h"] == 1.0 and u["credential_elsewhere_min"] == 60.0
    assert c["credential_doors_1h"] == 2.0
    assert c["credential_elsewhere_min"] == pytest.approx(0.75)
    assert u["door_hour_rarity"] < 0.5  # noon at an office door: usual
    night = ex.update(_access("door-a", T0 + 27 * f.MS_PER_HOUR, "access_granted", "c1"))
    assert night is not None
    n = named("access", night.values)
    # 03:00: never in 70 uses; smoothed share (0 + 1/24) / 71 * 24, rarity log(71)
    assert n["door_hour_rarity"] == pytest.approx(math.log(71))
    assert n["credential_hour_rarity"] == pytest.approx(math.log(71))
    # an unknown card is judged by the door's hours
    new = ex.update(_access("door-a", T0 + 27 * f.MS_PER_HOUR + MIN, "access_granted", "zz"))
    assert new is not None
    assert named("access", new.values)["credential_hour_rarity"] == pytest.approx(
        named("access", new.values)["door_hour_rarity"]
    )


def test_extractor_parking_against_the_usual_curve() -> None:
    builder = ProfileBuilder()
    for d in range(1, 4):
        for h in range(24):
            busy = 180 if 9 <= h < 17 else 20
            builder.observe(
                reading(
                    "parking",
                    "lot-1",
                    T0 - d * f.MS_PER_DAY + h * f.MS_PER_HOUR,
                    {"occupancy": busy, "capacity": 200},
                )
            )
    profiles = builder.build()
    assert profiles.usual_occupancy["lot-1"][10] == pytest.approx(0.9)
    ex = FeatureExtractor(profiles)
    three_am = T0 + 3 * f.MS_PER_HOUR
    ex.update(reading("parking", "lot-1", three_am - 5 * MIN, {"occupancy": 20, "capacity": 200}))
    full = ex.update(reading("parking", "lot-1", three_am, {"occupancy": 190, "capacity": 200}))
    assert full is not None
    values = named("parking", full.values)
    assert values["occupancy_ratio"] == pytest.approx(0.95)
    assert values["occupancy_vs_usual"] == pytest.approx(0.85)
    assert values["turnover_1h"] == pytest.approx(0.85)
    # status and access telemetry are not scored
    assert ex.update(reading("access", "door-a", T0, {"door_open": True})) is None


def test_profiles_round_trip_through_json() -> None:
    profiles = Profiles(
        {"a": tuple(float(i) for i in range(24))},
        {"c": (1.0,) * 24},
        {"lot": (math.nan,) * 23 + (0.5,)},
    )
    again = Profiles.from_json(profiles.to_json())
    assert again.door_hours == profiles.door_hours
    assert again.credential_hours == profiles.credential_hours
    assert math.isnan(again.usual_occupancy["lot"][0])
    assert again.usual_occupancy["lot"][23] == 0.5
    broken = profiles.to_json()
    broken["door_hours"]["a"] = [1.0] * 5
    with pytest.raises(ValueError, match="bins"):
        Profiles.from_json(broken)
