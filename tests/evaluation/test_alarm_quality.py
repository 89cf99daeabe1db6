"""Alarm quality scoring against hand-built labels and events."""

from __future__ import annotations

import json

import pytest

from evaluation.alarm_quality import Targets, format_table, misses, score, unmatched
from events.model import SecurityEvent, Severity, Source
from simulators.labels import IncidentKind, Label

MIN = 60_000
DAY = 86_400_000


def label(
    lid: str, kind: IncidentKind, start: int, end: int, devices: tuple[str, ...] = ("d1",)
) -> Label:
    return Label(lid, kind, "site", "c1", devices, start, end)


def event(
    eid: str,
    incident: str,
    raised: int,
    device: str | None = "d1",
    devices: tuple[str, ...] = (),
    parent_id: str | None = None,
) -> SecurityEvent:
    return SecurityEvent(
        id=eid,
        rule_id="r",
        key=eid,
        site="site",
        cell="c1",
        device=device,
        severity=Severity.HIGH,
        title="",
        message="",
        incident=incident,
        source=Source.RULE,
        raised_ms=raised,
        last_ms=raised,
        updated_ms=raised,
        parent_id=parent_id,
        devices=devices,
    )


FIRE = IncidentKind.FIRE


def test_exact_match_scores_perfectly() -> None:
    report = score(
        [label("L1", FIRE, 10_000, 20_000)],
        [event("E1", "fire", 11_500)],
        device_count=1,
        span_ms=DAY,
    )
    q = report.by_kind["fire"]
    assert (q.labels, q.events, q.tp, q.fp, q.fn, q.duplicates) == (1, 1, 1, 0, 0, 0)
    assert q.precision == 1.0 and q.recall == 1.0
    assert q.delay_median_s == q.delay_max_s == 1.5
    assert q.false_alarms_per_device_day == 0.0


def test_duplicates_for_one_label_lower_precision_not_recall() -> None:
    report = score(
        [label("L1", FIRE, 0, 60_000)],
        [event("E2", "fire", 5_000), event("E1", "fire", 1_000), event("E3", "fire", 9_000)],
        device_count=1,
        span_ms=DAY,
    )
    q = report.by_kind["fire"]
    assert (q.tp, q.fp, q.duplicates) == (1, 0, 2)
    assert q.precision == pytest.approx(1 / 3)
    assert q.recall == 1.0
    assert q.delay_median_s == 1.0  # the earliest event is the detection
    assert unmatched([label("L1", FIRE, 0, 60_000)], [event("E9", "fire", 5_000)]) == ([], [])


def test_false_positive_of_unlabelled_kind_and_false_negative() -> None:
    labels = [label("L1", FIRE, 0, 1_000), label("L2", IncidentKind.TAILGATING, 0, 1_000)]
    events = [event("E1", "fire", 500), event("E2", "door_forced", 500)]
    report = score(labels, events, device_count=1, span_ms=DAY)
    forced = report.by_kind["door_forced"]
    assert (forced.fp, forced.precision, forced.recall) == (1, 0.0, None)
    assert forced.delay_median_s is None
    tail = report.by_kind["tailgating"]
    assert (tail.fn, tail.recall, tail.precision) == (1, 0.0, None)
    assert list(report.by_kind) == ["door_forced", "fire", "tailgating"]
    missed, false_positives = unmatched(labels, events)
    assert [x.id for x in missed] == ["L2"]
    assert [e.id for e in false_positives] == ["E2"]


def test_kind_and_devices_must_agree() -> None:
    labels = [label("L1", FIRE, 0, 1_000, devices=("d1", "d2"))]
    events = [
        event("E1", "smoke_nuisance", 500),  # wrong kind
        event("E2", "fire", 500, device="d3"),  # wrong device
        event("E3", "fire", 600, device=None, devices=("d9", "d2")),  # `devices` counts
    ]
    missed, false_positives = unmatched(labels, events)
    assert missed == []
    assert [e.id for e in false_positives] == ["E1", "E2"]


@pytest.mark.parametrize(
    ("raised", "detected"),
    [
        (10_000 - 2_000, True),  # early_ms, inclusive
        (10_000 - 2_001, False),
        (20_000 + 120_000, True),  # inclusive end + default grace
        (20_000 + 120_001, False),
    ],
)
def test_window_edges(raised: int, detected: bool) -> None:
    labels = [label("L1", FIRE, 10_000, 20_000)]
    report = score(labels, [event("E1", "fire", raised)], device_count=1, span_ms=DAY)
    assert report.by_kind["fire"].tp == int(detected)


def test_grace_per_kind_and_early_parameter() -> None:
    labels = [label("L1", IncidentKind.WELFARE_CHECK, 0, 1_000)]
    late = [event("E1", "welfare_check", 1_000 + 30 * MIN)]
    assert score(labels, late, device_count=1, span_ms=DAY).by_kind["welfare_check"].tp == 0
    graced = score(labels, late, device_count=1, span_ms=DAY, grace_ms={"welfare_check": 30 * MIN})
    assert graced.by_kind["welfare_check"].tp == 1
    assert graced.by_kind["welfare_check"].delay_max_s == 1_801.0
    early = [event("E1", "welfare_check", -5_000)]
    assert score(labels, early, device_count=1, span_ms=DAY).by_kind["welfare_check"].tp == 0
    skewed = score(labels, early, device_count=1, span_ms=DAY, early_ms=5_000)
    assert skewed.by_kind["welfare_check"].tp == 1
    assert skewed.by_kind["welfare_check"].delay_median_s == -5.0


def test_one_event_detects_one_label() -> None:
    labels = [label("L1", FIRE, 0, 10_000), label("L2", FIRE, 1_000, 10_000)]
    report = score(labels, [event("E1", "fire", 2_000)], device_count=1, span_ms=DAY)
    q = report.by_kind["fire"]
    assert (q.tp, q.fn, q.fp, q.duplicates) == (1, 1, 0, 0)
    missed, _ = unmatched(labels, [event("E1", "fire", 2_000)])
    assert [x.id for x in missed] == ["L2"]  # earliest label takes the event


def test_flood_parent_scored_as_storm_children_by_when_they_were_shown() -> None:
    labels = [
        label("S1", IncidentKind.INCIDENT_STORM, 0, 60_000, devices=("d1", "d2", "d3")),
        label("L1", FIRE, 0, 60_000),
    ]
    events = [
        event("P", "incident_storm", 3_000, device=None, devices=("d1", "d2", "d3")),
        event("C1", "fire", 1_000, parent_id="P"),  # shown before the flood: it detected L1
        event("C2", "fire", 2_000, device="d2", parent_id="P"),  # no fire at d2: the storm's
        event("C3", "fire", 4_000, parent_id="P"),  # joined the flood: never shown alone
    ]
    report = score(labels, events, device_count=3, span_ms=DAY)
    storm = report.by_kind["incident_storm"]
    assert (storm.tp, storm.events, storm.delay_median_s) == (1, 1, 3.0)
    fire = report.by_kind["fire"]
    assert (fire.events, fire.tp, fire.fp, fire.duplicates, fire.fn) == (1, 1, 0, 0, 0)
    assert fire.delay_median_s == 1.0
    assert report.peak_events_per_10min == 1.0  # the desk shows the flood as one row


def test_a_child_shown_before_the_flood_outside_any_storm_is_a_false_alarm() -> None:
    labels = [label("S1", IncidentKind.INCIDENT_STORM, 500_000, 560_000, devices=("d2",))]
    events = [
        event("P", "incident_storm", 500_000, device=None, devices=("d1", "d2")),
        event("C1", "door_forced", 100_000, parent_id="P"),  # d1: not the storm's device
        event("C2", "door_forced", 499_000, device="d2", parent_id="P"),  # d2, but before it
    ]
    report = score(labels, events, device_count=2, span_ms=DAY)
    forced = report.by_kind["door_forced"]
    assert (forced.events, forced.fp) == (1, 1)  # C1; C2 is within the early slack: covered
    missed, false_alarms = unmatched(labels, events)
    assert (missed, [e.id for e in false_alarms]) == ([], ["C1"])


def test_peak_sliding_window_excludes_the_boundary() -> None:
    times = [0, 1_000, 2_000, 600_000, 601_000]
    events = [event(f"E{i}", "fire", t) for i, t in enumerate(times)]
    # Every window [t, t + 600 s) holds 3; with the end included, [0, 600 s] would hold 4.
    report = score([], events, device_count=1, span_ms=DAY)
    assert report.peak_events_per_10min == 3.0
    children = [event(f"C{i}", "fire", 1_500, parent_id="E0") for i in range(5)]
    assert score([], events + children, device_count=1, span_ms=DAY).peak_events_per_10min == 3.0
    assert score([], events, device_count=1, span_ms=DAY, operators=2).peak_events_per_10min == 1.5
    assert score([], [], device_count=1, span_ms=DAY).peak_events_per_10min == 0.0


def test_false_alarms_normalised_per_device_day() -> None:
    events = [event(f"E{i}", "door_forced", i * MIN) for i in range(6)]
    report = score([], events, device_count=4, span_ms=DAY // 2)  # 2 device-days
    assert report.by_kind["door_forced"].false_alarms_per_device_day == 3.0
    with pytest.raises(ValueError, match="positive"):
        score([], events, device_count=0, span_ms=DAY)


def test_to_json_shape() -> None:
    report = score(
        [label("L1", FIRE, 0, 1_000)],
        [event("E1", "fire", 500), event("E2", "door_forced", 500)],
        device_count=1,
        span_ms=DAY,
    )
    body = report.to_json()
    assert set(body) == {"by_kind", "peak_events_per_10min"}
    assert body["peak_events_per_10min"] == 2.0
    assert body["by_kind"] == {
        "door_forced": {
            "precision": 0.0,
            "recall": None,
            "delay_median_s": None,
            "delay_max_s": None,
            "false_alarms_per_device_day": 1.0,
            "labels": 0,
            "events": 1,
            "tp": 0,
            "fp": 1,
            "fn": 0,
            "duplicates": 0,
        },
        "fire": {
            "precision": 1.0,
            "recall": 1.0,
            "delay_median_s": 0.5,
            "delay_max_s": 0.5,
            "false_alarms_per_device_day": 0.0,
            "labels": 1,
            "events": 1,
            "tp": 1,
            "fp": 0,
            "fn": 0,
            "duplicates": 0,
        },
    }
    text = json.dumps(body)
    assert '"recall": null' in text
    assert json.loads(text) == body


def test_table_marks_misses() -> None:
    labels = [label("L1", FIRE, 0, 1_000), label("L2", FIRE, 100_000, 101_000)]
    events = [event("E1", "fire", 5_000)] + [
        event(f"F{i}", "door_forced", 200_000 + i) for i in range(11)
    ]
    report = score(labels, events, device_count=1, span_ms=DAY)
    table = format_table(report, targets=Targets(wait_s={"door_forced": 1.0}))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["kind", "labels", "events"]
    fire = next(line for line in lines if line.startswith("fire "))
    assert "0.500!" in fire  # recall 1/2
    assert "5.0!" in fire  # median delay 5 s > 0 + 2 s
    assert "1.000 " in fire  # precision met: no mark
    forced = next(line for line in lines if line.startswith("door_forced "))
    assert "0.000!" in forced and "!" not in forced.replace("0.000!", "")
    assert lines[-1] == "peak events per 10 min per operator: 12.0!"
    assert "!" not in format_table(report, targets=None)
    assert misses(report, Targets()) == [
        "door_forced: precision 0.000 < 0.950",
        "fire: recall 0.500 < 0.950",
        "fire: median delay 5.0 s > 2.0 s",
        "peak 12.0 events per 10 min per operator > 10.0",
    ]
    assert misses(report, Targets(precision=0, recall=0, peak=12, wait_s={"fire": 3})) == []
