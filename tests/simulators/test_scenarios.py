"""Scenarios inject incidents into background traffic: every message stays valid (but
the labelled malformed ones), device protocols stay intact, and each label's devices and
times are those of the messages that carry its incident."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any, Final
from zoneinfo import ZoneInfo

import pytest

from ingest.decode import Decoder, Rejected
from sensors.base import STATUS, DecodeContext, Reading
from sensors.registry import KINDS
from simulators.engine import SimMessage, serialise, simulate
from simulators.labels import IncidentKind, Label, dumps_labels
from simulators.scenarios import (
    SCENARIOS,
    Injection,
    ScenarioError,
    ScenarioPlan,
    apply,
    run_scenarios,
)
from sites.generate import generate_site
from sites.model import Site, distance_m

TZ: Final = ZoneInfo("Asia/Shanghai")
START: Final = datetime(2025, 3, 3, 20, 0, tzinfo=TZ)  # a Monday evening into the night
DURATION_S: Final = 6 * 3600.0
SEED: Final = 5
LONG: Final = frozenset({"welfare_check", "parking_overstay"})
"""Scenarios that need more than the shared window (tested on their own)."""
SHORT: Final = [name for name in SCENARIOS if name not in LONG]
FORCED_QUIET_MS: Final = 10_000


@dataclass(frozen=True)
class Run:
    site: Site
    messages: list[SimMessage]
    labels: list[Label]


@pytest.fixture(scope="module")
def site() -> Site:
    return generate_site(4, 40, seed=3)


@pytest.fixture(scope="module")
def run(site: Site) -> Run:
    messages, labels = run_scenarios(site, SHORT, start=START, duration_s=DURATION_S, seed=SEED)
    return Run(site, messages, labels)


def body(message: SimMessage) -> dict[str, Any] | None:
    """The JSON object of a message, None for raw or plain-text payloads."""
    try:
        decoded = json.loads(message.payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return decoded if isinstance(decoded, dict) else None


def ts_of(message: SimMessage) -> int:
    decoded = body(message)
    ts = decoded.get("ts") if decoded is not None else None
    return ts if isinstance(ts, int) else message.sim_ms


def of_device(run: Run, device: str) -> list[tuple[int, dict[str, Any], SimMessage]]:
    out = []
    for m in run.messages:
        if m.device_id == device:
            decoded = body(m)
            if decoded is not None:
                out.append((ts_of(m), decoded, m))
    return out


def events(run: Run, device: str, name: str) -> list[int]:
    return [
        ts for ts, b, m in of_device(run, device) if m.channel == "event" and b.get("event") == name
    ]


def label_of(run: Run, kind: IncidentKind) -> Label:
    found = [label for label in run.labels if label.kind == kind]
    assert len(found) == 1, kind
    return found[0]


def carrying(run: Run, label: Label) -> list[int]:
    """Times of messages of the label's devices within the label's span."""
    return [
        ts_of(m)
        for m in run.messages
        if m.device_id in label.devices and label.start_ms <= ts_of(m) <= label.end_ms
    ]


# --- every scenario -------------------------------------------------------------------


def test_registry_names_and_kinds(run: Run) -> None:
    assert all(name == s.name for name, s in SCENARIOS.items())
    assert len({s.kind for s in SCENARIOS.values()}) == len(SCENARIOS)
    assert {label.kind for label in run.labels} == {SCENARIOS[name].kind for name in SHORT}
    for label in run.labels:
        name = label.id.removeprefix("scn-").rsplit("-", 1)[0]
        assert SCENARIOS[name].kind == label.kind
        assert label.cell in {run.site.device(d).cell for d in label.devices}
        assert list(label.devices) == sorted(label.devices)


def test_every_message_decodes_and_rejects_are_labelled_malformed(run: Run) -> None:
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=str))
    malformed = [label for label in run.labels if label.kind == IncidentKind.MALFORMED_PAYLOADS]
    rejected = 0
    for m in run.messages:
        result = decoder.decode(m.topic, m.payload, ts_of(m) * 1_000_000)
        if isinstance(result, Rejected):
            rejected += 1
            assert any(
                m.device_id in label.devices and label.start_ms <= m.sim_ms <= label.end_ms
                for label in malformed
            ), (m.topic, m.payload, result.reason)
        else:
            assert isinstance(result, Reading)
    assert rejected >= 5


def test_seq_and_ts_per_device(run: Run) -> None:
    seqs: dict[str, list[int]] = defaultdict(list)
    stamps: dict[str, list[int]] = defaultdict(list)
    for m in run.messages:
        decoded = body(m)
        if decoded is None or not isinstance(decoded.get("ts"), int):
            continue
        stamps[m.device_id].append(decoded["ts"])
        if m.channel != STATUS:
            seqs[m.device_id].append(decoded["seq"])
    for device, seq in seqs.items():
        assert seq == list(range(1, len(seq) + 1)), device
    for device, ts in stamps.items():
        assert all(a < b for a, b in pairwise(ts)), device
    assert all(a.sim_ms <= b.sim_ms for a, b in pairwise(run.messages))


def test_label_bounds_are_messages_of_its_devices(run: Run) -> None:
    for label in run.labels:
        times = carrying(run, label)
        assert label.start_ms in times, label.id
        assert label.end_ms in times, label.id


def test_untouched_devices_keep_their_background_bytes(run: Run) -> None:
    touched = {d for label in run.labels for d in label.devices}
    background = simulate(run.site, start=START, duration_s=DURATION_S, seed=SEED)
    keep = [m for m in background if m.device_id not in touched]
    assert keep == [m for m in run.messages if m.device_id not in touched]
    assert keep


# --- per scenario ---------------------------------------------------------------------


def test_door_forced(run: Run) -> None:
    label = label_of(run, IncidentKind.DOOR_FORCED)
    (door,) = label.devices
    opened = events(run, door, "door_opened")
    assert label.start_ms in opened
    grants = events(run, door, "access_granted")
    assert not [g for g in grants if label.start_ms - FORCED_QUIET_MS <= g <= label.start_ms]
    assert [t for t in events(run, door, "door_forced") if label.start_ms <= t <= label.end_ms]
    assert label.end_ms in events(run, door, "door_closed")


def test_door_held_open(run: Run) -> None:
    label = label_of(run, IncidentKind.DOOR_HELD_OPEN)
    (door,) = label.devices
    assert label.start_ms in events(run, door, "door_opened")
    assert label.end_ms in events(run, door, "door_closed")
    closes = events(run, door, "door_closed")
    assert not [t for t in closes if label.start_ms < t < label.end_ms]
    assert [t for t in events(run, door, "door_held") if label.start_ms < t < label.end_ms]
    assert label.end_ms - label.start_ms >= 3 * 60_000
    grants = events(run, door, "access_granted")
    assert [g for g in grants if label.start_ms - FORCED_QUIET_MS <= g < label.start_ms]


def test_after_hours_access(run: Run) -> None:
    label = label_of(run, IncidentKind.AFTER_HOURS_ACCESS)
    (door,) = label.devices
    assert label.start_ms in events(run, door, "access_granted")
    device = run.site.device(door)
    assert device.kind == "access"
    schedule = run.site.schedule_of(device)
    assert schedule is not None
    local = datetime.fromtimestamp(label.start_ms / 1000, TZ)
    assert not schedule.is_open(local)


def test_repeated_denials(run: Run) -> None:
    label = label_of(run, IncidentKind.REPEATED_DENIALS)
    (door,) = label.devices
    denied = [t for t in events(run, door, "access_denied") if label.start_ms <= t <= label.end_ms]
    assert len(denied) >= 5
    assert denied[0] == label.start_ms
    assert denied[-1] == label.end_ms
    assert label.end_ms - label.start_ms <= 2 * 60_000


def test_low_battery(run: Run) -> None:
    label = label_of(run, IncidentKind.LOW_BATTERY)
    (detector,) = label.devices
    assert events(run, detector, "low_battery")[0] == label.start_ms
    after = [
        b["battery"]
        for ts, b, m in of_device(run, detector)
        if m.channel == "telemetry" and ts >= label.start_ms
    ]
    assert after
    assert all(level < 20 for level in after)


def test_lot_over_capacity(run: Run) -> None:
    label = label_of(run, IncidentKind.LOT_OVER_CAPACITY)
    (lot,) = label.devices
    counts = [(ts, b) for ts, b, m in of_device(run, lot) if m.channel == "telemetry"]
    over = [ts for ts, b in counts if b["occupancy"] > b["capacity"]]
    assert over
    assert over[0] == label.start_ms
    assert over[-1] == label.end_ms
    inside = [b for ts, b in counts if label.start_ms <= ts <= label.end_ms]
    assert all(b["occupancy"] > b["capacity"] for b in inside)


def _alarms(run: Run, kind: str = "smoke") -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for m in run.messages:
        decoded = body(m)
        if m.kind == kind and decoded is not None and decoded.get("event") == "alarm":
            out[m.device_id].append(ts_of(m))
    return out


def test_fire_spreads_across_detectors_of_one_cell(run: Run) -> None:
    label = label_of(run, IncidentKind.FIRE)
    assert len(label.devices) >= 3
    assert {run.site.device(d).cell for d in label.devices} == {label.cell}
    alarms = _alarms(run)
    firsts = sorted(
        min(t for t in alarms[d] if label.start_ms <= t <= label.end_ms) for d in label.devices
    )
    assert all(b - a >= 60_000 for a, b in pairwise(firsts))
    for detector in label.devices:
        alarm = min(t for t in alarms[detector] if label.start_ms <= t <= label.end_ms)
        readings = [  # from just after the detector first sees smoke (alarm - 3 min)
            b
            for ts, b, m in of_device(run, detector)
            if m.channel == "telemetry" and alarm - 170_000 <= ts <= label.end_ms
        ]
        obscuration = [b["obscuration"] for b in readings]
        temperature = [b["temperature"] for b in readings]
        assert obscuration == sorted(obscuration)
        assert temperature[-1] > temperature[0] + 5
        assert readings[-1]["alarm"] is True


def test_smoke_nuisance_is_one_brief_alarm_at_one_detector(run: Run) -> None:
    label = label_of(run, IncidentKind.SMOKE_NUISANCE)
    (detector,) = label.devices
    alarms = [t for t in _alarms(run)[detector] if label.start_ms <= t <= label.end_ms]
    cleared = [
        t for t in events(run, detector, "alarm_cleared") if label.start_ms <= t <= label.end_ms
    ]
    assert len(alarms) == 1
    assert len(cleared) == 1
    assert 0 < cleared[0] - alarms[0] <= 2 * 60_000
    fire = label_of(run, IncidentKind.FIRE)
    others = [
        t
        for device, times in _alarms(run).items()
        if device != detector and device not in fire.devices
        for t in times
        if label.start_ms - 600_000 <= t <= label.end_ms + 600_000
    ]
    assert not others


def test_stuck_sensor_repeats_its_values(run: Run) -> None:
    label = label_of(run, IncidentKind.STUCK_SENSOR)
    (detector,) = label.devices
    readings = [
        (ts, {k: v for k, v in b.items() if k not in {"ts", "seq", "cell"}})
        for ts, b, m in of_device(run, detector)
        if m.channel == "telemetry"
    ]
    inside = [values for ts, values in readings if label.start_ms <= ts <= label.end_ms]
    assert len(inside) >= 10
    assert all(values == inside[0] for values in inside)
    before = [values for ts, values in readings if ts < label.start_ms]
    assert before[-1] == inside[0]
    assert readings[0][0] <= label.start_ms


def test_malformed_payloads_are_all_rejected(run: Run) -> None:
    label = label_of(run, IncidentKind.MALFORMED_PAYLOADS)
    (device,) = label.devices
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=str))
    inside = [
        m
        for m in run.messages
        if m.device_id == device and label.start_ms <= m.sim_ms <= label.end_ms
    ]
    rejected = [
        m
        for m in inside
        if isinstance(decoder.decode(m.topic, m.payload, m.sim_ms * 10**6), Rejected)
    ]
    assert len(rejected) >= 5
    assert rejected[0].sim_ms == label.start_ms
    assert rejected[-1].sim_ms == label.end_ms


def test_message_flood(run: Run) -> None:
    label = label_of(run, IncidentKind.MESSAGE_FLOOD)
    (device,) = label.devices
    inside = [ts for ts, b, m in of_device(run, device) if label.start_ms <= ts <= label.end_ms]
    assert len(inside) >= 400
    assert label.end_ms - label.start_ms <= 10_000


# --- runs ---------------------------------------------------------------------------


def _run_bytes(site: Site, names: list[str], seed: int) -> tuple[bytes, str]:
    messages, labels = run_scenarios(site, names, start=START, duration_s=DURATION_S, seed=seed)
    return serialise(messages), dumps_labels(labels)


def test_same_seed_same_bytes_other_seed_other_bytes(site: Site, run: Run) -> None:
    again = _run_bytes(site, SHORT, SEED)
    assert again == (serialise(run.messages), dumps_labels(run.labels))
    other = _run_bytes(site, SHORT, SEED + 1)
    assert other[0] != again[0]
    assert other[1] != again[1]


def test_scenarios_compose_into_the_union_of_their_labels(site: Site) -> None:
    def labels(names: list[str]) -> set[str]:
        _, found = run_scenarios(site, names, start=START, duration_s=DURATION_S, seed=SEED)
        return {label.to_json() for label in found}

    assert labels(["door_forced", "fire"]) == labels(["door_forced"]) | labels(["fire"])


def test_unknown_scenario_and_short_window_are_refused(site: Site) -> None:
    with pytest.raises(ScenarioError, match="no scenario"):
        run_scenarios(site, ["nope"], start=START, duration_s=60.0, seed=1)
    with pytest.raises(ScenarioError, match=r"at least \d+"):
        run_scenarios(site, ["fire"], start=START, duration_s=300.0, seed=1)


def test_after_hours_needs_a_closed_schedule_in_the_window(site: Site) -> None:
    noon = datetime(2025, 3, 3, 11, 0, tzinfo=TZ)
    with pytest.raises(ScenarioError, match="schedule is closed"):
        run_scenarios(site, ["after_hours_access"], start=noon, duration_s=3600.0, seed=1)


def test_apply_bumps_a_colliding_injection_and_renumbers(site: Site) -> None:
    background = list(simulate(site, start=START, duration_s=600.0, seed=SEED))
    first = next(m for m in background if m.channel == "telemetry")
    at = first.sim_ms
    plan = ScenarioPlan(
        injections=[Injection(at, first.device_id, "event", {"event": "tamper"}, "x")]
    )
    heard: list[tuple[str, int]] = []
    merged = list(apply(background, [plan], site, observe=lambda *a: heard.append(a)))
    mine = [body(m) for m in merged if m.device_id == first.device_id]
    stamps = [b["ts"] for b in mine if b is not None]
    assert all(a < b for a, b in pairwise(stamps))
    seqs = [b["seq"] for b in mine if b is not None and "seq" in b]
    assert seqs == list(range(1, len(seqs) + 1))
    assert heard == [("x", ts_of(first) + 1)]
    assert len(merged) == len(background) + 1


def test_tailgating(run: Run) -> None:
    label = label_of(run, IncidentKind.TAILGATING)
    (door,) = label.devices
    grants = [t for t in events(run, door, "access_granted") if label.start_ms <= t <= label.end_ms]
    opens = [t for t in events(run, door, "door_opened") if label.start_ms <= t <= label.end_ms]
    assert grants == [label.start_ms]
    assert len(opens) >= 2
    assert label.end_ms in events(run, door, "door_closed")
    assert label.end_ms - label.start_ms <= FORCED_QUIET_MS


def test_cloned_card_is_faster_than_walking(run: Run) -> None:
    label = label_of(run, IncidentKind.CLONED_CARD)
    a, b = (run.site.device(d) for d in label.devices)
    metres = distance_m(a.location, b.location)
    assert metres >= 300
    grants = {
        d: [
            (ts, body_)
            for ts, body_, m in of_device(run, d)
            if body_.get("event") == "access_granted" and label.start_ms <= ts <= label.end_ms
        ]
        for d in label.devices
    }
    (card,) = {
        b["credential"] for found in grants.values() for ts, b in found if ts == label.start_ms
    }
    times = sorted(ts for found in grants.values() for ts, b in found if b["credential"] == card)
    assert times == [label.start_ms, label.end_ms]
    assert {d for d, found in grants.items() for ts, _ in found if ts in times} == set(
        label.devices
    )
    assert (label.end_ms - label.start_ms) / 1000 < metres / 1.5


def test_device_offline(run: Run) -> None:
    label = label_of(run, IncidentKind.DEVICE_OFFLINE)
    (device,) = label.devices
    mine = [m for m in run.messages if m.device_id == device]
    statuses = [(m.sim_ms, m.payload) for m in mine if m.channel == STATUS]
    assert (label.start_ms, b"offline") in statuses
    assert (label.end_ms, b"online") in statuses
    inside = [m for m in mine if label.start_ms < m.sim_ms < label.end_ms]
    assert not inside
    assert label.end_ms - label.start_ms >= 30 * 60_000


def test_device_tamper(run: Run) -> None:
    label = label_of(run, IncidentKind.DEVICE_TAMPER)
    (device,) = label.devices
    tampers = [t for t in events(run, device, "tamper") if label.start_ms <= t <= label.end_ms]
    assert tampers[0] == label.start_ms
    assert tampers[-1] == label.end_ms
    assert len(tampers) >= 2


def test_device_fault(run: Run) -> None:
    label = label_of(run, IncidentKind.DEVICE_FAULT)
    (device,) = label.devices
    assert label.start_ms in events(run, device, "fault")
    assert label.end_ms in events(run, device, "fault_cleared")
    flags = [
        b["fault"]
        for ts, b, m in of_device(run, device)
        if m.channel == "telemetry" and label.start_ms < ts < label.end_ms
    ]
    assert flags
    assert all(flags)


@pytest.mark.parametrize(
    ("kind", "flag"),
    [
        (IncidentKind.FIRE_LANE_VIOLATION, "fire_lane"),
        (IncidentKind.RESERVED_BAY_VIOLATION, "reserved"),
    ],
)
def test_vehicle_in_a_forbidden_bay(run: Run, kind: IncidentKind, flag: str) -> None:
    label = label_of(run, kind)
    (bay,) = label.devices
    device = run.site.device(bay)
    assert getattr(device.attributes, flag) is True
    assert events(run, bay, "vehicle_arrived")[-1] <= label.start_ms
    assert label.start_ms in events(run, bay, "vehicle_arrived")
    assert label.end_ms in events(run, bay, "vehicle_left")
    states = [
        b["occupied"]
        for ts, b, m in of_device(run, bay)
        if m.channel == "telemetry" and label.start_ms <= ts < label.end_ms
    ]
    assert states
    assert all(states)
    inside = [
        t
        for name in ("vehicle_arrived", "vehicle_left")
        for t in events(run, bay, name)
        if label.start_ms < t < label.end_ms
    ]
    assert not inside


def test_incident_storm(run: Run) -> None:
    label = label_of(run, IncidentKind.INCIDENT_STORM)
    assert len(label.devices) >= 10
    assert label.end_ms - label.start_ms <= 30_000
    for device in label.devices:
        assert [t for t in events(run, device, "tamper") if label.start_ms <= t <= label.end_ms]


def test_welfare_check_silences_an_elderly_door_for_36_hours(site: Site) -> None:
    with pytest.raises(ScenarioError, match=r"welfare_check.*at least \d+ s \(36\.\d h\)"):
        run_scenarios(site, ["welfare_check"], start=START, duration_s=DURATION_S, seed=SEED)
    messages, labels = run_scenarios(
        site, ["welfare_check"], start=START, duration_s=38 * 3600.0, seed=SEED
    )
    (label,) = labels
    assert label.kind == IncidentKind.WELFARE_CHECK
    (door,) = label.devices
    device = site.device(door)
    assert device.kind == "access"
    assert device.attributes.elderly_resident
    mine = [m for m in messages if m.device_id == door]
    assert not [
        m for m in mine if m.channel == "event" and label.start_ms <= m.sim_ms <= label.end_ms
    ]
    telemetry = [ts_of(m) for m in mine if m.channel == "telemetry"]
    inside = [t for t in telemetry if label.start_ms <= t <= label.end_ms]
    assert inside[0] == label.start_ms
    assert inside[-1] == label.end_ms
    assert label.end_ms - label.start_ms >= 36 * 3600_000 - 20 * 60_000


def test_parking_overstay_keeps_one_vehicle_beyond_a_day(site: Site) -> None:
    with pytest.raises(ScenarioError, match=r"parking_overstay.*at least"):
        run_scenarios(site, ["parking_overstay"], start=START, duration_s=DURATION_S, seed=SEED)
    messages, labels = run_scenarios(
        site, ["parking_overstay"], start=START, duration_s=27 * 3600.0, seed=SEED
    )
    (label,) = labels
    run = Run(site, messages, labels)
    (bay,) = label.devices
    device = site.device(bay)
    assert device.kind == "parking"
    assert not device.attributes.fire_lane
    assert not device.attributes.reserved
    assert label.start_ms in events(run, bay, "vehicle_arrived")
    assert label.end_ms in events(run, bay, "vehicle_left")
    assert label.end_ms - label.start_ms > 24 * 3600_000
    states = [
        b["occupied"]
        for ts, b, m in of_device(run, bay)
        if m.channel == "telemetry" and label.start_ms <= ts < label.end_ms
    ]
    assert len(states) >= 40
    assert all(states)


def test_labels_are_detectable_from_their_first_evidence(run: Run) -> None:
    """Where the devices' messages first show the incident: detection delay counts from
    there (evaluation.alarm_quality), never from before any detector could know."""
    cloned = label_of(run, IncidentKind.CLONED_CARD)
    grants = sorted(
        t
        for d in cloned.devices
        for t in events(run, d, "access_granted")
        if cloned.start_ms <= t <= cloned.end_ms
    )
    assert len(grants) >= 2
    assert cloned.detectable_ms == grants[-1] == cloned.end_ms  # the too-distant second use
    nuisance = label_of(run, IncidentKind.SMOKE_NUISANCE)
    (detector,) = nuisance.devices
    assert nuisance.detectable_ms in _alarms(run)[detector]  # the alarm, not the first smoke
    assert nuisance.detectable_ms is not None
    assert nuisance.detectable_ms - nuisance.start_ms >= 3 * 60_000
    fire = label_of(run, IncidentKind.FIRE)
    firsts = [min(t for t in _alarms(run)[d] if t >= fire.start_ms) for d in fire.devices]
    assert fire.detectable_ms == min(firsts)
    storm = label_of(run, IncidentKind.INCIDENT_STORM)
    tampers = sorted(
        t
        for d in storm.devices
        for t in events(run, d, "tamper")
        if storm.start_ms <= t <= storm.end_ms
    )
    assert storm.detectable_ms == tampers[10]  # the 11th: a flood from here on (ISA-18.2)
    plain = label_of(run, IncidentKind.DOOR_FORCED)
    assert plain.detectable_ms is None
    assert plain.evident_ms == plain.start_ms
    assert Label.from_json(cloned.to_json()) == cloned
