"""Simulator behaviour and engine: determinism, independence, protocol validity, rhythms,
and the time modes of `pace` (with a fake clock: no test waits in real time)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ingest.decode import Decoder
from sensors.base import STATUS, DecodeContext, Reading, keyed_hash
from sensors.registry import KINDS
from simulators.behaviour import MS_PER_HOUR, LocalClock, Rates, device_seed
from simulators.engine import SimMessage, epoch_ms, pace, serialise, simulate
from sites.generate import generate_site
from sites.model import Site, demo_site_path, load_site

TZ = ZoneInfo("Asia/Shanghai")
MONDAY = datetime(2025, 3, 3, tzinfo=TZ)  # local midnight: UTC+8, so UTC hours differ
DAY_S = 86_400.0
TWO_HOURS_S = 7_200.0
DECODER = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: keyed_hash(b"sim-test", v)))


def _device(device_id: str, kind: str, attributes: dict[str, Any], i: int) -> dict[str, Any]:
    return {
        "id": device_id,
        "kind": kind,
        "cell": "c1",
        "location": {"lon": 113.3901 + 0.0001 * (i % 80), "lat": 22.5101 + 0.0001 * (i // 80)},
        "attributes": attributes,
    }


def hand_site() -> Site:
    """A small site with enough of every behaviour for daily statistics to be stable."""
    specs: list[tuple[str, str, dict[str, Any]]] = []
    specs += [(f"ac-ent-{n}", "access", {"door": "entrance"}) for n in range(6)]
    specs += [(f"ac-off-{n}", "access", {"door": "office", "schedule": "office"}) for n in range(2)]
    specs += [("ac-exit", "access", {"door": "exit", "emergency_exit": True})]
    specs += [("ac-flat", "access", {"door": "flat", "unit": "1-1-101"})]
    specs += [
        ("ac-elderly", "access", {"door": "flat", "elderly_resident": True, "unit": "1-1-102"})
    ]
    specs += [(f"sm-kit-{n}", "smoke", {"room": "kitchen", "unit": f"1-{n}"}) for n in range(4)]
    specs += [(f"sm-bath-{n}", "smoke", {"room": "bathroom", "unit": f"1-{n}"}) for n in range(4)]
    specs += [(f"sm-cor-{n}", "smoke", {"room": "corridor"}) for n in range(2)]
    specs += [("sm-garage", "smoke", {"room": "garage"})]
    specs += [(f"pk-bay-{n}", "parking", {"bay_id": f"B{n}", "zone": "z1"}) for n in range(12)]
    specs += [("pk-fire", "parking", {"bay_id": "F1", "zone": "z1", "fire_lane": True})]
    specs += [("pk-lot-s", "parking", {"lot": "Small Lot", "capacity": 40})]
    specs += [("pk-lot-l", "parking", {"lot": "Big Lot", "capacity": 450})]
    data = {
        "site": "handsite",
        "name": "Hand-made test site",
        "timezone": "Asia/Shanghai",
        "cells": [
            {
                "id": "c1",
                "name": "Cell 1",
                "worker": {"id": "w1", "name": "Test Worker"},
                "polygon": [[113.39, 22.51], [113.40, 22.51], [113.40, 22.52], [113.39, 22.52]],
            }
        ],
        "devices": [_device(d, k, a, i) for i, (d, k, a) in enumerate(specs)],
        "schedules": {
            "office": {
                "rules": [
                    {"days": ["mon", "tue", "wed", "thu", "fri"], "open": "08:00", "close": "18:00"}
                ]
            }
        },
    }
    return Site.model_validate(data)


def with_extra_device(site: Site) -> Site:
    """The same site plus one smoke detector (in the first cell, at a point inside it)."""
    data = site.model_dump(mode="python")
    first = data["devices"][0]
    extra = {
        "id": "sm-newcomer",
        "kind": "smoke",
        "cell": first["cell"],
        "location": first["location"],
        "attributes": {"room": "kitchen"},
    }
    data["devices"] = [*data["devices"][:3], extra, *data["devices"][3:]]
    return Site.model_validate(data)


@pytest.fixture(scope="module")
def generated() -> Site:
    return generate_site(cells=4, devices=40, seed=7)


@pytest.fixture(scope="module")
def day() -> list[SimMessage]:
    """One simulated Monday of the hand-made site (read-only: messages are frozen)."""
    return list(simulate(hand_site(), start=MONDAY, duration_s=DAY_S, seed=11))


def body(message: SimMessage) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(message.payload)
    return decoded


def local_hour(message: SimMessage) -> float:
    return LocalClock(TZ).hour(message.sim_ms)


def by_device(messages: list[SimMessage]) -> dict[str, list[bytes]]:
    streams: dict[str, list[bytes]] = defaultdict(list)
    for m in messages:
        streams[m.device_id].append(serialise([m]))
    return streams


# --- determinism and independence -----------------------------------------------------


def test_same_seed_same_bytes_on_a_generated_site(generated: Site) -> None:
    first = serialise(simulate(generated, start=MONDAY, duration_s=TWO_HOURS_S, seed=3))
    again = serialise(simulate(generated, start=MONDAY, duration_s=TWO_HOURS_S, seed=3))
    other = serialise(simulate(generated, start=MONDAY, duration_s=TWO_HOURS_S, seed=4))
    assert first == again
    assert first != other
    assert first.count(b"\n") > 1_500


@pytest.mark.parametrize("name", ["yingyang", "melbourne_bays"])
def test_same_seed_same_bytes_on_a_demo_site(name: str) -> None:
    site = load_site(demo_site_path(name))
    start = datetime(2025, 3, 3, 6, 30, tzinfo=site.tz)
    first = serialise(simulate(site, start=start, duration_s=TWO_HOURS_S, seed=1))
    assert first == serialise(simulate(site, start=start, duration_s=TWO_HOURS_S, seed=1))
    assert first != serialise(simulate(site, start=start, duration_s=TWO_HOURS_S, seed=2))


def test_adding_a_device_leaves_the_others_unchanged(generated: Site) -> None:
    before = by_device(list(simulate(generated, start=MONDAY, duration_s=TWO_HOURS_S, seed=5)))
    after = by_device(
        list(simulate(with_extra_device(generated), start=MONDAY, duration_s=TWO_HOURS_S, seed=5))
    )
    assert after.pop("sm-newcomer")
    assert after == before


def test_device_seed_is_stable_across_processes() -> None:
    # A fixed value: Python's hash() is salted per process and would change it.
    assert device_seed(1, "ac-0001") == 3621009871013390529
    assert device_seed(2, "ac-0001") != device_seed(1, "ac-0001")


# --- protocol -----------------------------------------------------------------------


def test_messages_are_in_time_order_within_the_window(day: list[SimMessage]) -> None:
    times = [m.sim_ms for m in day]
    assert times == sorted(times)
    assert times[0] >= epoch_ms(MONDAY)
    assert times[-1] < epoch_ms(MONDAY) + DAY_S * 1000


def test_each_device_starts_with_a_retained_online_status(day: list[SimMessage]) -> None:
    first: dict[str, SimMessage] = {}
    for m in day:
        first.setdefault(m.device_id, m)
    assert len(first) == len(hand_site().devices)
    for m in first.values():
        assert m.channel == STATUS and m.retain and m.qos == 1
        assert body(m)["status"] == "online"
    assert all(not m.retain for m in day if m.channel != STATUS)


def test_seq_counts_by_one_and_ts_strictly_increases_per_device(
    day: list[SimMessage], generated: Site
) -> None:
    two_hours = list(simulate(generated, start=MONDAY, duration_s=TWO_HOURS_S, seed=9))
    for messages in (day, two_hours):
        seqs: dict[str, list[int]] = defaultdict(list)
        stamps: dict[str, list[int]] = defaultdict(list)
        for m in messages:
            payload = body(m)
            stamps[m.device_id].append(payload["ts"])
            assert 0 <= payload["ts"] - m.sim_ms < 10  # device time is simulated time
            if m.channel != STATUS:
                seqs[m.device_id].append(payload["seq"])
        for device, seq in seqs.items():
            assert seq == list(range(1, len(seq) + 1)), device
        for device, ts in stamps.items():
            assert all(a < b for a, b in pairwise(ts)), device


def decode_all(site: Site, messages: list[SimMessage]) -> list[Reading]:
    readings: list[Reading] = []
    for m in messages:
        received_ns = body(m)["ts"] * 1_000_000
        reading = DECODER.decode(m.topic, m.payload, received_ns)
        assert isinstance(reading, Reading), (m.topic, m.payload, reading)
        assert reading.ts_from_device and reading.ts_ns == received_ns
        assert (reading.site, reading.kind, reading.device) == (site.site, m.kind, m.device_id)
        if m.channel != STATUS:
            assert reading.cell == site.device(m.device_id).cell
        readings.append(reading)
    return readings


def test_every_message_decodes_as_a_valid_reading(day: list[SimMessage]) -> None:
    readings = decode_all(hand_site(), day)
    # Smoke events (faults) are rare on an ordinary day: test_fault_episodes covers them.
    assert {(r.kind, r.channel) for r in readings} >= {
        (kind, channel)
        for kind in ("access", "smoke", "parking")
        for channel in ("status", "telemetry", "event")
        if (kind, channel) != ("smoke", "event")
    }
    grants = [r for r in readings if r.fields.get("event") == "access_granted"]
    assert grants and all(len(str(r.fields["credential_hash"])) == 32 for r in grants)


def test_demo_site_traffic_decodes() -> None:
    site = load_site(demo_site_path("yingyang"))
    start = datetime(2025, 3, 3, 7, 0, tzinfo=site.tz)
    decode_all(site, list(simulate(site, start=start, duration_s=TWO_HOURS_S, seed=1)))


# --- rhythms and background rules -----------------------------------------------------


def test_doors_peak_at_commute_and_are_quiet_at_night(day: list[SimMessage]) -> None:
    per_hour: Counter[int] = Counter()
    for m in day:
        if m.kind == "access" and m.channel == "event":
            per_hour[int(local_hour(m))] += 1
    peak = sum(per_hour[h] for h in (7, 8, 17, 18, 19)) / 5
    night = sum(per_hour[h] for h in (1, 2, 3, 4)) / 4
    assert peak > 3 * night
    assert peak > 20


def test_scheduled_doors_grant_only_in_opening_hours(day: list[SimMessage]) -> None:
    office = [
        m for m in day
        if m.device_id.startswith("ac-off") and body(m).get("event") == "access_granted"
    ]  # fmt: skip
    assert office
    assert all(8 <= local_hour(m) < 18 for m in office)


def test_denials_are_rare_and_emergency_exits_stay_shut(day: list[SimMessage]) -> None:
    events = Counter(body(m).get("event") for m in day if m.kind == "access")
    assert 0 < events["access_denied"] < 0.06 * events["access_granted"]
    assert events["access_granted"] == events["door_opened"] == events["door_closed"]
    assert not [m for m in day if m.device_id == "ac-exit" and m.channel == "event"]


def test_background_smoke_never_alarms(day: list[SimMessage]) -> None:
    smoke = [body(m) for m in day if m.kind == "smoke" and m.channel != STATUS]
    assert sum(m.kind == "smoke" and m.channel == "telemetry" for m in day) == 11 * 1440
    assert all(p.get("alarm") is not True for p in smoke)
    assert all(p.get("event") not in ("alarm", "alarm_cleared") for p in smoke)


def test_shower_steam_in_bathrooms(day: list[SimMessage]) -> None:
    humidity = [
        body(m)["humidity"]
        for m in day
        if m.device_id.startswith("sm-bath") and m.channel == "telemetry"
    ]
    assert max(humidity) >= 90
    elsewhere = [
        body(m)["humidity"]
        for m in day
        if m.device_id.startswith("sm-cor") and m.channel == "telemetry"
    ]
    assert max(elsewhere) < 70


def test_cooking_raises_kitchen_obscuration(day: list[SimMessage]) -> None:
    meals: list[float] = []
    night: list[float] = []
    for m in day:
        if m.device_id.startswith("sm-kit") and m.channel == "telemetry":
            hour = local_hour(m)
            target = night if 1 <= hour < 5 else meals if 11.5 <= hour < 21 else None
            if target is not None:
                target.append(body(m)["obscuration"])
    assert max(night) <= 0.06
    assert max(meals) > 0.5


def test_lot_occupancy_stays_within_capacity_and_follows_commute(
    day: list[SimMessage],
) -> None:
    by_hour: dict[int, list[float]] = defaultdict(list)
    for m in day:
        if m.device_id.startswith("pk-lot") and m.channel == "telemetry":
            payload = body(m)
            assert 0 <= payload["occupancy"] <= payload["capacity"]
            by_hour[int(local_hour(m))].append(payload["occupancy"] / payload["capacity"])
    assert min(by_hour[3]) > max(by_hour[12])


def test_bays_empty_in_the_morning_and_fill_in_the_evening(day: list[SimMessage]) -> None:
    changes: Counter[str] = Counter()
    left_in_morning = arrived_in_evening = 0
    for m in day:
        event = body(m).get("event")
        if m.kind == "parking" and event in ("vehicle_arrived", "vehicle_left"):
            changes[m.device_id] += 1
            hour = local_hour(m)
            left_in_morning += event == "vehicle_left" and 6 <= hour < 10
            arrived_in_evening += event == "vehicle_arrived" and 16 <= hour < 21
    assert left_in_morning >= 4 and arrived_in_evening >= 4
    assert "pk-fire" not in changes
    heartbeats = [m for m in day if m.device_id == "pk-fire" and m.channel == "telemetry"]
    assert len(heartbeats) == 48 and all(body(m)["occupied"] is False for m in heartbeats)


def test_fault_episodes_open_and_clear() -> None:
    site = hand_site()
    rates = Rates(smoke_faults_per_day=24.0, bay_faults_per_day=24.0)
    messages = list(simulate(site, start=MONDAY, duration_s=6 * 3600, seed=2, rates=rates))
    decode_all(site, messages)
    state: dict[str, bool] = {}
    opened = 0
    for m in messages:
        if m.kind != "smoke" or m.channel == STATUS:
            continue
        payload = body(m)
        if payload.get("event") == "fault":
            assert not state.get(m.device_id)
            state[m.device_id] = True
            opened += 1
        elif payload.get("event") == "fault_cleared":
            assert state.get(m.device_id)
            state[m.device_id] = False
        elif m.channel == "telemetry":
            assert payload["fault"] is state.get(m.device_id, False)
    assert opened >= 10
    assert any(body(m).get("event") == "fault" for m in messages if m.kind == "parking")


def test_battery_drains_slowly(day: list[SimMessage]) -> None:
    levels: dict[str, list[float]] = defaultdict(list)
    for m in day:
        if m.channel == "telemetry" and "battery" in (payload := body(m)):
            levels[m.device_id].append(payload["battery"])
    for device, battery in levels.items():
        assert all(a >= b for a, b in pairwise(battery)), device
        assert 0 < battery[0] - battery[-1] < 2.0, device  # a few %/day at most


def test_local_clock_follows_daylight_saving() -> None:
    clock = LocalClock(ZoneInfo("Australia/Melbourne"))
    # Melbourne leaves DST on 2025-04-06 at 03:00 AEDT (16:00 UTC the day before).
    before = epoch_ms(datetime(2025, 4, 5, 15, 30, tzinfo=ZoneInfo("UTC")))
    assert clock.hour(before) == pytest.approx(2.5)  # 02:30 AEDT (UTC+11)
    assert clock.hour(before + MS_PER_HOUR) == pytest.approx(2.5)  # 02:30 AEST again
    day = datetime(2025, 4, 6).date()
    assert clock.at(day, 12.0) == epoch_ms(datetime(2025, 4, 6, 12, tzinfo=clock.tz))


# --- time modes -------------------------------------------------------------------------


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay


def messages_at(*offsets_ms: int) -> Iterator[SimMessage]:
    for offset in offsets_ms:
        yield SimMessage(
            offset, "d", "smoke", "telemetry", "gw/v1/s/smoke/d/telemetry", b"{}", False
        )


async def test_pace_accelerated_releases_a_minute_per_second() -> None:
    fake = FakeTime()
    released: list[tuple[int, float]] = []
    paced = pace(
        messages_at(0, 0, 30_000, 60_000),
        speed=60,
        start_sim_ms=0,
        sleep=fake.sleep,
        clock=fake.clock,
    )
    async for m in paced:
        released.append((m.sim_ms, fake.now - 100.0))
    assert released == [(0, 0.0), (0, 0.0), (30_000, 0.5), (60_000, 1.0)]


async def test_pace_real_time_waits_the_simulated_offset() -> None:
    fake = FakeTime()
    start = epoch_ms(MONDAY)
    paced = pace(
        messages_at(start + 2_500), speed=1, start_sim_ms=start, sleep=fake.sleep, clock=fake.clock
    )
    assert [m.sim_ms async for m in paced] == [start + 2_500]
    assert fake.sleeps == [pytest.approx(2.5)]


async def test_pace_as_fast_as_possible_never_sleeps() -> None:
    fake = FakeTime()
    paced = pace(
        messages_at(0, 3_600_000), speed=None, start_sim_ms=0, sleep=fake.sleep, clock=fake.clock
    )
    assert [m.sim_ms async for m in paced] == [0, 3_600_000]
    assert fake.sleeps == []


async def test_pace_refuses_a_non_positive_speed() -> None:
    with pytest.raises(ValueError, match="speed"):
        async for _ in pace(messages_at(0), speed=0, start_sim_ms=0):
            pass


def test_start_must_be_timezone_aware(generated: Site) -> None:
    naive = datetime(2025, 3, 3) + timedelta(hours=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        next(simulate(generated, start=naive, duration_s=60, seed=1))
