"""Ground truth the alarm-quality figures rest on: the elderly residents' daily routine
in background traffic, welfare labels for real silences in it, where detection delay
is measured from, and door-state labels read as held-open incidents (real Room-Climate
recordings, data/doors, Morgner et al. 2017)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evaluation.alarm_quality import score
from evaluation.rules_eval import door_episodes, evaluate, reannunciations
from events.manager import EventManager
from events.model import Detection, SecurityEvent, Severity, Source
from events.store import EventStore
from ingest.decode import Decoder
from rules.engine import Engine, EngineState
from rules.schema import load_rules
from rules.site_directory import directory_from_sites
from sensors.base import DecodeContext, Reading
from sensors.registry import KINDS
from simulators.behaviour import AccessBehaviour, LocalClock
from simulators.engine import SimMessage, simulate
from simulators.labels import HELD_OPEN_MS, IncidentKind, Label, held_open_labels
from simulators.replay import replay_doors
from simulators.scenarios import WELFARE_SILENCE_MS, background_labels
from sites.model import Site, load_site_ref

HOUR = 3_600_000
DOORS = Path(__file__).resolve().parents[3] / "shared" / "data" / "doors"
START = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def yingyang() -> Site:
    return load_site_ref("yingyang")


def elderly_doors(site: Site) -> list[str]:
    return sorted(d.id for d in site.devices_of("access") if d.attributes.elderly_resident)


# --- the elderly residents' routine ---------------------------------------------------------


def test_elderly_outings_go_out_and_come_back_at_habitual_hours(yingyang: Site) -> None:
    doors = set(elderly_doors(yingyang))
    grants: dict[str, list[tuple[int, str]]] = {d: [] for d in doors}
    for m in simulate(yingyang, start=START, duration_s=4 * 24 * 3600.0, seed=11):
        if m.device_id in doors and m.channel == "event":
            body = json.loads(m.payload)
            assert body["event"] != "access_denied"  # their own card, every time
            if body["event"] == "access_granted":
                grants[m.device_id].append((body["ts"], body["direction"]))
    clock = LocalClock(yingyang.tz)
    earliest = min(lo for lo, _, _ in AccessBehaviour.ROUTINE)
    latest = max(hi for _, hi, _ in AccessBehaviour.ROUTINE) + max(AccessBehaviour.OUTING_H)
    outings = 0
    for door, seen in grants.items():
        directions = [d for _, d in seen]
        assert directions == ["out", "in"] * (len(seen) // 2), door  # nobody vanishes
        for (left, _), (back, _) in zip(seen[::2], seen[1::2], strict=True):
            hours = (back - left) / HOUR
            assert min(AccessBehaviour.OUTING_H) <= hours <= max(AccessBehaviour.OUTING_H) + 0.01
            assert earliest <= clock.hour(left) and clock.hour(back) <= latest
            outings += 1
    # Six residents, four days, up to two outings a day: most days see one.
    assert 6 * 4 <= outings <= 6 * 4 * 2


# --- welfare labels for silences in background traffic ---------------------------------------


def message(at_ms: int, device: str, channel: str, body: dict[str, object]) -> SimMessage:
    payload = json.dumps({"ts": at_ms, **body}).encode()
    return SimMessage(
        at_ms, device, "access", channel, f"gw/v1/yingyang/access/{device}/x", payload, False
    )


def test_background_silence_at_an_elderly_door_is_labelled(yingyang: Site) -> None:
    door, other = elderly_doors(yingyang)[:2]
    t0 = int(START.timestamp() * 1000)
    quiet = WELFARE_SILENCE_MS
    messages = [
        message(t0, door, "telemetry", {"door_open": False}),
        message(t0, other, "telemetry", {"door_open": False}),
        message(t0 + HOUR, door, "event", {"event": "door_closed"}),
        message(t0 + HOUR + quiet + 5_000, door, "event", {"event": "door_opened"}),  # 36 h+
        message(t0 + quiet - HOUR, other, "event", {"event": "door_opened"}),  # 35 h: no
        message(t0 + 3 * quiet, door, "telemetry", {"door_open": False}),  # to the end: 36 h+
    ]
    labels = background_labels(yingyang, messages, [])
    spans = [(label.devices, label.start_ms - t0, label.end_ms - t0) for label in labels]
    assert all(label.kind is IncidentKind.WELFARE_CHECK for label in labels)
    assert spans == [
        ((door,), HOUR, HOUR + quiet + 5_000),
        ((other,), quiet - HOUR, 3 * quiet),  # its last event until the traffic ends
        ((door,), HOUR + quiet + 5_000, 3 * quiet),
    ]
    # A scenario's welfare label on the same door and time already covers it.
    scenario = Label(
        "scn",
        IncidentKind.WELFARE_CHECK,
        "yingyang",
        "c",
        (door,),
        t0 + 2 * HOUR,
        t0 + 30 * HOUR,
    )
    covered = background_labels(yingyang, messages, [scenario])
    assert [(label.devices, label.start_ms - t0) for label in covered] == [
        ((other,), quiet - HOUR),
        ((door,), HOUR + quiet + 5_000),
    ]


# --- where delay is measured from --------------------------------------------------------------


def test_label_detectable_time_round_trips_and_is_checked() -> None:
    label = Label(
        "L", IncidentKind.CLONED_CARD, "s", "c", ("a", "b"), 1_000, 61_000, detectable_ms=61_000
    )
    body = json.loads(label.to_json())
    assert list(body)[-1] == "detectable"
    assert Label.from_json(label.to_json()) == label
    assert label.evident_ms == 61_000
    with pytest.raises(ValueError, match="detectable outside"):
        Label("L", IncidentKind.CLONED_CARD, "s", "c", ("a",), 1_000, 2_000, detectable_ms=3_000)


def security_event(incident: str, raised_ms: int, device: str = "a") -> SecurityEvent:
    return SecurityEvent(
        id=f"e{raised_ms}", rule_id="r", key="k", site="s", cell="c", device=device,
        severity=Severity.HIGH, title="", message="", incident=incident, source=Source.RULE,
        raised_ms=raised_ms, last_ms=raised_ms, updated_ms=raised_ms,
    )  # fmt: skip


def test_delay_counts_from_the_evidence_and_matching_from_the_start() -> None:
    cloned = Label(
        "L", IncidentKind.CLONED_CARD, "s", "c", ("a", "b"), 0, 60_000, detectable_ms=60_000
    )
    plain = Label("P", IncidentKind.DOOR_FORCED, "s", "c", ("a",), 0, 1_000)
    events = [security_event("cloned_card", 60_500), security_event("door_forced", 1_500)]
    report = score([cloned, plain], events, device_count=2, span_ms=HOUR)
    assert report.by_kind["cloned_card"].delay_median_s == 0.5  # not 60.5: the first use is no clue
    assert report.by_kind["door_forced"].delay_median_s == 1.5
    early = score([cloned], [security_event("cloned_card", 30_000)], device_count=2, span_ms=HOUR)
    assert early.by_kind["cloned_card"].tp == 1  # still inside the incident: it matches
    assert early.by_kind["cloned_card"].delay_median_s == -30.0  # and says it was early


# --- door-state ground truth as held-open incidents -----------------------------------------


def door_open(lid: str, start: int, seconds: float, device: str = "a") -> Label:
    end = start + round(seconds * 1000)
    return Label(lid, IncidentKind.DOOR_OPEN, "s", "c", (device,), start, end, source="doors")


def test_only_episodes_longer_than_the_limit_are_held_open() -> None:
    labels = [door_open("replay-doors-a-1", 0, 8), door_open("replay-doors-a-2", 100_000, 120)]
    (held,) = held_open_labels(labels)
    assert (held.id, held.kind, held.start_ms, held.end_ms) == (
        "replay-held-a-2", IncidentKind.DOOR_HELD_OPEN, 100_000, 220_000,
    )  # fmt: skip
    assert held_open_labels([door_open("x", 0, HELD_OPEN_MS / 1000)]) == []  # exactly: a passage


def test_door_episodes_count_alarms_on_passages_and_on_held_doors() -> None:
    labels = [door_open("p", 0, 8), door_open("h", 100_000, 120), door_open("q", 900_000, 5, "b")]
    events = [
        security_event("door_held_open", 145_000),  # the held door, 45 s in
        security_event("door_held_open", 900_001, "b"),  # a passage: a false alarm
        security_event("door_forced", 1_000),  # another kind: not counted here
    ]
    doors = door_episodes(labels, events)
    assert doors is not None
    assert doors.to_json() == {
        "episodes": 3, "held_open": 1, "alarmed": 2, "true_positives": 1, "false_alarms": 1,
        "precision": 0.5, "recall": 1.0, "specificity": 0.5, "shortest_s": 5.0, "longest_s": 120.0,
    }  # fmt: skip
    assert door_episodes([], events) is None


def recording(path: Path, t0_ms: int, states: list[tuple[float, int]]) -> None:
    """A Room-Climate file (12 columns, ", "-separated) of one node's door states."""
    lines = [
        f"{i}, {t0_ms + round(s * 1000)}, {s}, 1, 22.0, 40.0, 100.0, 500.0, 0, 0, {door}, 0"
        for i, (s, door) in enumerate(states, start=1)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_doors_replay_of_the_real_recordings_scores_every_passage(yingyang: Site) -> None:
    replay = replay_doors(yingyang, DOORS, start=START)
    run = evaluate([yingyang], replay.messages, replay.labels, load_rules(), span_ms=7 * 24 * HOUR)
    assert run.doors is not None
    assert (run.doors.episodes, run.doors.held_open) == (16, 0)  # all real passages, 3-16 s
    assert (run.doors.alarmed, run.doors.specificity) == (0, 1.0)
    held = run.report.by_kind["door_held_open"]  # reported although nothing happened
    assert (held.labels, held.events, held.fp, held.precision, held.recall) == (0, 0, 0, None, None)
    assert held.false_alarms_per_device_day == 0.0
    assert run.to_json()["door_episodes"] == run.doors.to_json()


def test_doors_replay_detects_a_door_held_open_in_a_recording(
    yingyang: Site, tmp_path: Path
) -> None:
    """The same path with one recording whose door stands open for 2 min."""
    t0 = int((START - timedelta(days=1)).timestamp() * 1000)
    states = [(0.0, 0), (60.0, 1), (65.0, 0), (300.0, 1), (420.0, 0), (600.0, 0)]
    recording(tmp_path / "room_climate-location_C-measurement01.csv", t0, states)
    replay = replay_doors(yingyang, tmp_path, start=START)
    run = evaluate([yingyang], replay.messages, replay.labels, load_rules(), span_ms=HOUR)
    quality = run.report.by_kind["door_held_open"]
    assert (quality.labels, quality.tp, quality.fp, quality.fn) == (1, 1, 0, 0)
    assert quality.delay_median_s == pytest.approx(45.0, abs=1.0)  # the rule's own wait
    assert run.doors is not None
    assert (run.doors.episodes, run.doors.held_open, run.doors.false_alarms) == (2, 1, 0)


def test_only_signs_of_life_end_a_welfare_silence(yingyang: Site) -> None:
    """A power-surge tamper report at an elderly resident's door (seed 1 put the storm's
    tamper inside the welfare scenario's silence) is the controller, not the resident,
    and a refused card is someone outside: neither the default rule's clock nor the
    ground truth restarts for them."""
    door = elderly_doors(yingyang)[0]
    t0 = int(START.timestamp() * 1000)
    quiet = WELFARE_SILENCE_MS
    messages = [
        message(t0, door, "telemetry", {"door_open": False}),
        message(t0 + HOUR, door, "event", {"event": "door_closed"}),
        message(t0 + 20 * HOUR, door, "event", {"event": "tamper"}),
        message(t0 + 21 * HOUR, door, "event", {"event": "access_denied", "credential": "1"}),
        message(t0 + HOUR + quiet + 60_000, door, "event", {"event": "access_granted"}),
    ]
    found = background_labels(yingyang, messages, [])
    (label,) = [x for x in found if x.kind is IncidentKind.WELFARE_CHECK]
    assert (label.start_ms, label.end_ms) == (t0 + HOUR, t0 + HOUR + quiet + 60_000)

    engine = Engine(load_rules(), directory_from_sites([yingyang]))
    state = EngineState()
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: v))
    raised = []
    for m in messages:
        reading = decoder.decode(
            m.topic.replace("/x", f"/{m.channel}"), m.payload, m.sim_ms * 10**6
        )
        assert isinstance(reading, Reading), reading
        raised += [
            d for d in engine.evaluate(reading, state, m.sim_ms) if d.rule_id == "welfare_check"
        ]
    assert [(d.raised, d.at_ms - t0) for d in raised] == [
        (True, HOUR + quiet),
        (False, HOUR + quiet + 60_000),
    ]


def test_background_overstay_in_an_ordinary_bay_is_labelled(yingyang: Site) -> None:
    """A car left in an ordinary bay beyond the overstay limit in background traffic is
    an overstay by the incident's own definition; fire-lane and reserved bays are the
    scenarios' (they have rules of their own)."""
    bays = sorted(
        d.id
        for d in yingyang.devices_of("parking")
        if d.attributes.bay_id and not d.attributes.fire_lane and not d.attributes.reserved
    )
    bay, other = bays[:2]
    t0 = int(START.timestamp() * 1000)

    def bay_message(at_ms: int, device: str, body: dict[str, object]) -> SimMessage:
        payload = json.dumps({"ts": at_ms, **body}).encode()
        channel = "event" if "event" in body else "telemetry"
        return SimMessage(
            at_ms,
            device,
            "parking",
            channel,
            f"gw/v1/yingyang/parking/{device}/{channel}",
            payload,
            False,
        )

    messages = [
        bay_message(t0, bay, {"occupied": True}),
        bay_message(t0, other, {"occupied": False}),
        bay_message(t0 + HOUR, other, {"event": "vehicle_arrived"}),
        bay_message(t0 + 23 * HOUR, other, {"event": "vehicle_left"}),  # 22 h: no
        bay_message(t0 + 25 * HOUR, bay, {"occupied": False}),  # 25 h: an overstay
        bay_message(t0 + 26 * HOUR, other, {"occupied": True}),
        bay_message(t0 + 51 * HOUR, other, {"occupied": True}),  # still there at the end
    ]
    found = [
        x
        for x in background_labels(yingyang, messages, [])
        if x.kind is IncidentKind.PARKING_OVERSTAY
    ]
    assert [(x.devices, x.start_ms - t0, x.end_ms - t0) for x in found] == [
        ((bay,), 0, 25 * HOUR),
        ((other,), 26 * HOUR, 51 * HOUR),
    ]


def test_a_returned_event_raised_again_counts_as_a_new_alarm(tmp_path: Path) -> None:
    """A device's second fault repeats its returned event (one row per rule and key until
    an operator closes it); the operator was alerted again, so the scorer sees it."""

    def detection(raised: bool, at_ms: int) -> Detection:
        return Detection(
            rule_id="device_fault", key="sm-1", raised=raised, at_ms=at_ms, site="s",
            device="sm-1", incident="device_fault", severity=Severity.MEDIUM,
        )  # fmt: skip

    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        manager = EventManager(store, workers={})
        for raised, at_ms in [(True, 1_000), (True, 2_000), (False, 3_000), (True, HOUR)]:
            manager.handle(detection(raised, at_ms), at_ms)
        (event,) = store.list_events()
        again = reannunciations(store, [event])
    assert event.count == 3
    assert [(e.raised_ms, e.id) for e in again] == [(HOUR, f"{event.id}@4")]  # not the 2nd
    labels = [
        Label("F1", IncidentKind.DEVICE_FAULT, "s", "c", ("sm-1",), 1_000, 3_000),
        Label("F2", IncidentKind.DEVICE_FAULT, "s", "c", ("sm-1",), HOUR, HOUR + 1_000),
    ]
    report = score(labels, [event, *again], device_count=1, span_ms=2 * HOUR)
    assert report.by_kind["device_fault"].recall == 1.0
    assert (
        score(labels, [event], device_count=1, span_ms=2 * HOUR).by_kind["device_fault"].recall
        == 0.5
    )
