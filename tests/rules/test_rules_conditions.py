"""Every condition kind through `Engine`, on hand-written reading sequences.

Times are seconds after T0 (a Monday, 00:00 UTC); `now` is the reading's own time
unless a test says otherwise. Detections are compared as (raise|clear, seconds).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from events.model import Detection, Location, Severity, Source
from rules.directory import DeviceInfo, Directory, OpeningHours, SiteInfo
from rules.engine import Engine, EngineState, open_conditions, rejected_reading
from rules.schema import load_rules, parse_rules
from sensors.base import FieldValue, Reading
from tests.support.rules import (
    CLOSED,
    DENIED,
    GRANTED,
    HOUR,
    MIN,
    OPENED,
    RELOAD,
    T0,
    TRAVEL,
    TRAVEL_DIRECTORY,
    Ev,
    Run,
    at,
    ev,
    event,
    grant,
    reading,
    rules_yaml,
    status,
)

# --- match ----------------------------------------------------------------------------

FORCED = "{type: match, when: {channel: event, field: event, equals: door_forced}}"


def test_match_raises_on_matching_readings_only() -> None:
    run = Run(rules_yaml(FORCED, severity="high", incident="door_forced"))
    assert run.feed(event("access", "a1", 0, "door_opened")) == []
    assert run.feed(reading("access", "a1", 1, {"event": "door_forced"})) == []  # telemetry
    (d,) = run.feed(event("access", "a1", 2, "door_forced"))
    assert (d.raised, d.at_ms, d.rule_id, d.key) == (True, at(2), "r1", "a1")
    assert (d.site, d.cell, d.device) == ("s1", "c1", "a1")
    assert (d.severity, d.incident, d.source, d.title) == (
        Severity.HIGH, "door_forced", Source.RULE, "R1",
    )  # fmt: skip
    assert d.location is None  # no directory entry
    assert list(open_conditions(run.state)) == [("r1", "a1")]


def test_match_any_of_in_not_in_above_below() -> None:
    cond = (
        "{type: match, when: [{field: event, in: [a, b]}, "
        "{channel: telemetry, field: battery, below: 10}, "
        "{channel: telemetry, field: temperature, above: 50}, "
        "{channel: event, field: reason, not_in: [ok]}]}"
    )
    run = Run(rules_yaml(cond, key='"{device}-{n}"', clear="{after: 1s}"))

    def hits(r: Reading) -> bool:
        return any(d.raised for d in run.feed(r))  # (the previous raise's 1 s clear aside)

    assert hits(event("smoke", "d1", 0, "a", n="1"))
    assert not hits(event("smoke", "d1", 1, "c", n="2"))
    assert hits(reading("smoke", "d1", 2, {"battery": 5.0, "n": "3"}))
    assert not hits(reading("smoke", "d1", 3, {"battery": 10.0, "n": "4"}))
    assert not hits(reading("smoke", "d1", 4, {"battery": True, "n": "5"}))  # a bool is no number
    assert hits(reading("smoke", "d1", 5, {"temperature": 51, "n": "6"}))
    assert not hits(reading("smoke", "d1", 6, {"temperature": "hot", "n": "7"}))
    assert hits(event("smoke", "d1", 7, "c", reason="jam", n="8"))
    assert not hits(event("smoke", "d1", 8, "c", reason="ok", n="9"))


def test_match_on_tag_and_directory_attribute() -> None:
    directory = Directory(
        devices={"p1": DeviceInfo("p1", "parking", "s1", "c1", 0, 0, {"zone_type": "vip"})}
    )
    cond = "{type: match, when: [{field: door, equals: north}, {field: zone_type, equals: vip}]}"
    run = Run(rules_yaml(cond, clear="{after: 1s}"), directory)
    assert run.feed(reading("access", "a1", 0, {"x": 1}, tags={"door": "north"}))
    assert not run.feed(reading("access", "a2", 0, {"x": 1}, tags={"door": "south"}))
    assert run.feed(reading("parking", "p1", 0, {"x": 1}))


# --- threshold ------------------------------------------------------------------------

HOT = "{type: threshold, field: temperature, above: 80, clear_at: 70}"


def test_threshold_hysteresis_raises_once_and_clears_once_past_clear_at() -> None:
    run = Run(rules_yaml(HOT, message='"{value} over {limit}"'))
    values = [79, 80, 81, 79, 81, 79.5, 85, 71, 70.5, 81, 69.5, 75, 79, 80, 81]
    for t, v in enumerate(values):
        run.feed(reading("smoke", "d1", t, {"temperature": float(v)}))
    assert ev(run.all) == [("raise", 2), ("clear", 10), ("raise", 14)]
    assert dict(run.all[0].values) == {"value": 81.0, "limit": 80.0}
    assert run.all[0].message == "81.0 over 80.0"
    assert dict(run.all[1].values) == {"value": 69.5, "limit": 80.0}


def test_threshold_below_with_hysteresis() -> None:
    run = Run(rules_yaml("{type: threshold, field: battery, below: 15, clear_at: 30}"))
    for t, v in enumerate([20, 14, 16, 29, 14, 30, 10]):
        run.feed(reading("smoke", "d1", t, {"battery": float(v)}))
    assert ev(run.all) == [("raise", 1), ("clear", 5), ("raise", 6)]


def test_threshold_ignores_readings_without_the_field() -> None:
    run = Run(rules_yaml(HOT))
    assert run.feed(reading("smoke", "d1", 0, {"humidity": 99.0})) == []
    assert run.feed(reading("smoke", "d1", 1, {"temperature": "n/a"})) == []
    assert list(open_conditions(run.state)) == []


def test_threshold_for_raises_only_when_held_and_is_fired_by_tick() -> None:
    run = Run(rules_yaml("{type: threshold, field: temperature, above: 80, for: 30s}"))
    assert run.feed(reading("smoke", "d1", 0, {"temperature": 81.0})) == []
    assert run.feed(reading("smoke", "d1", 10, {"temperature": 90.0})) == []
    assert run.tick(29.999) == []
    assert ev(run.tick(45)) == [("raise", 30)]  # no reading at 30 s: the timer raises
    assert run.tick(60) == []
    assert ev(run.feed(reading("smoke", "d1", 70, {"temperature": 75.0}))) == [("clear", 70)]

    # Back under the limit before `for` ran out: never raised.
    assert run.feed(reading("smoke", "d1", 100, {"temperature": 81.0})) == []
    assert run.feed(reading("smoke", "d1", 120, {"temperature": 79.0})) == []
    assert run.tick(1000) == []
    # A reading after the `for` (its timer not yet fired) raises at that reading.
    assert run.feed(reading("smoke", "d1", 2000, {"temperature": 81.0})) == []
    assert ev(run.feed(reading("smoke", "d1", 2040, {"temperature": 82.0}), now=2020)) == [
        ("raise", 2040)
    ]


def test_threshold_clear_for() -> None:
    cond = "{type: threshold, field: temperature, above: 80, clear_at: 70, clear_for: 1m}"
    run = Run(rules_yaml(cond))
    assert ev(run.feed(reading("smoke", "d1", 0, {"temperature": 90.0}))) == [("raise", 0)]
    assert run.feed(reading("smoke", "d1", 10, {"temperature": 65.0})) == []
    assert run.feed(reading("smoke", "d1", 20, {"temperature": 75.0})) == []  # not past clear_at
    assert run.tick(200) == []  # the clearing was abandoned
    assert run.feed(reading("smoke", "d1", 300, {"temperature": 60.0})) == []
    assert run.feed(reading("smoke", "d1", 330, {"temperature": 62.0})) == []
    assert run.tick(359) == []
    assert ev(run.tick(400)) == [("clear", 360)]
    assert run.tick(1000) == []


def test_threshold_field_named_limit() -> None:
    cond = "{type: threshold, field: occupancy, above: capacity}"
    run = Run(rules_yaml(cond, message='"{lot}: {value} for {limit}"'))

    def lot(t: float, occupancy: int, capacity: int | None = 50) -> list[Detection]:
        fields: dict[str, FieldValue] = {"occupancy": occupancy}
        if capacity is not None:
            fields["capacity"] = capacity
        return run.feed(reading("parking", "p1", t, fields, tags={"lot": "L1"}))

    assert lot(0, 50) == []
    (d,) = lot(1, 51)
    assert d.raised
    assert d.message == "L1: 51.0 for 50.0"
    assert lot(2, 55) == []
    assert lot(3, 99, capacity=None) == []  # no limit in this reading: nothing to say
    assert ev(lot(4, 60, capacity=60)) == [("clear", 4)]  # the limit moved
    assert ev(lot(5, 61, capacity=60)) == [("raise", 5)]


# --- count ----------------------------------------------------------------------------


def test_count_sliding_window() -> None:
    cond = f"{{type: count, when: {DENIED}, at_least: 3, within: 2m}}"
    run = Run(rules_yaml(cond, message='"{count} denials"'))
    assert run.feed(event("access", "a1", 0, "access_denied")) == []
    assert run.feed(event("access", "a1", 70, "access_denied")) == []
    assert run.feed(event("access", "a1", 140, "access_denied")) == []  # the first slid out
    assert run.feed(event("access", "a1", 145, "access_granted")) == []
    (d,) = run.feed(event("access", "a1", 150, "access_denied"))
    assert ev([d]) == [("raise", 150)]
    assert d.message == "3 denials"
    assert run.feed(event("access", "a2", 151, "access_denied")) == []  # another key
    assert run.tick(189) == []
    assert ev(run.tick(1000)) == [("clear", 190)]  # 70 + 120: down to two


def test_count_clears_when_the_window_empties_via_tick() -> None:
    cond = f"{{type: count, when: {DENIED}, at_least: 2, within: 10s}}"
    run = Run(rules_yaml(cond))
    for t in (0, 1, 2):
        run.feed(event("access", "a1", t, "access_denied"))
    assert ev(run.all) == [("raise", 1), ("raise", 2)]  # no cooldown: every raise repeats
    # One tick long after: the window loses 0 s at 10 s (still two) and 1 s at 11 s.
    assert ev(run.tick(100)) == [("clear", 11)]
    assert run.tick(200) == []


def _count_oracle(
    times: list[float], at_least: int, within_s: float, end_s: float
) -> list[tuple[str, float]]:
    """Raise and clear times of a sliding count, by brute force. At each moment a
    reading leaves the window, the event clears if too few are left (before a reading
    of that moment counts); at each reading, it raises if the window (t - within, t]
    holds enough (no cooldown: every reading at the count raises again)."""
    out: list[tuple[str, float]] = []
    open_ = False
    moments = sorted({*times, *(t + within_s for t in times)})
    for m in (m for m in moments if m <= end_s):
        before = sum(1 for t in times if m - within_s < t < m)
        if open_ and before < at_least:
            out.append(("clear", m))
            open_ = False
        if m in times and before + 1 >= at_least:
            out.append(("raise", m))
            open_ = True
    return out


@pytest.mark.parametrize("seed", range(6))
def test_count_raises_and_clears_as_brute_force_says(seed: int) -> None:
    import random

    rng = random.Random(seed)
    at_least, within = rng.choice([(2, 10), (3, 20), (5, 30)])
    cond = f"{{type: count, when: {DENIED}, at_least: {at_least}, within: {within}s}}"
    run = Run(rules_yaml(cond))
    times, t = [], 0.0
    for _ in range(300):  # bursts and lulls, whole seconds (no two readings at once)
        t += rng.choice([1, 1, 2, 3, 5, 8, 40])
        times.append(t)
        run.feed(event("access", "a1", t, "access_denied"))
    run.tick(t + 1000)
    assert ev(run.all) == _count_oracle(times, at_least, within, t + 1000)
    assert run.state.slots == {}


def test_a_busy_device_under_the_count_fires_no_timer_per_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under the count, a reading leaving the window changes nothing anyone sees: the
    window is looked at once it could be forgotten, not at every expiry (a timer per
    reading of every busy device was a fifth of the rules' cost in the ingest bench)."""
    from rules.conditions import CountLogic

    fired: list[int] = []
    original = CountLogic.fire

    def counted(self: CountLogic, st: dict[str, object], at_ms: int) -> object:
        fired.append(at_ms)
        return original(self, st, at_ms)

    monkeypatch.setattr(CountLogic, "fire", counted)
    cond = f"{{type: count, when: {DENIED}, at_least: 200, within: 10s}}"
    run = Run(rules_yaml(cond))
    for i in range(600):  # 10 a second for a minute: 100 a window, never 200
        run.feed(event("access", "a1", i / 10 + 0.05, "access_denied"))
    assert run.all == []
    assert len(fired) <= 60 / 10 + 1
    run.tick(200)
    assert run.state.slots == {}


def test_count_out_of_order_readings_fall_into_their_place() -> None:
    cond = f"{{type: count, when: {DENIED}, at_least: 3, within: 10s}}"
    run = Run(rules_yaml(cond))
    run.feed(event("access", "a1", 20, "access_denied"))
    run.feed(event("access", "a1", 5, "access_denied"), now=20)  # too old to count
    assert run.all == []
    run.feed(event("access", "a1", 15, "access_denied"), now=21)
    assert ev(run.feed(event("access", "a1", 22, "access_denied"))) == [("raise", 22)]


# --- sequence -------------------------------------------------------------------------


def test_sequence_absence_raises_at_after_plus_within_by_tick() -> None:
    cond = f"{{type: sequence, after: {OPENED}, then: {CLOSED}, within: 45s, at_least: 1}}"
    run = Run(rules_yaml(cond, clear=f"{{when: {CLOSED}}}", message='"{count} closes"'))
    assert run.feed(event("access", "a1", 0, "door_opened")) == []
    assert run.tick(44.9) == []
    (d,) = run.tick(50)
    assert ev([d]) == [("raise", 45)]
    assert d.values["count"] == 0
    assert d.message == "0 closes"
    assert run.tick(500) == []  # raised once
    assert ev(run.feed(event("access", "a1", 600, "door_closed"))) == [("clear", 600)]
    assert run.feed(event("access", "a1", 601, "door_closed")) == []


def test_sequence_absence_satisfied_in_time_does_not_raise() -> None:
    cond = f"{{type: sequence, after: {OPENED}, then: {CLOSED}, within: 45s, at_least: 2}}"
    run = Run(rules_yaml(cond))
    run.feed(event("access", "a1", 0, "door_opened"))
    run.feed(event("access", "a1", 10, "door_closed"))
    run.feed(event("access", "a1", 44, "door_closed"))
    assert run.tick(1000) == []
    # Too few in time raises, even though more come later.
    run.feed(event("access", "a1", 2000, "door_opened"))
    run.feed(event("access", "a1", 2010, "door_closed"))
    run.feed(event("access", "a1", 2050, "door_closed"))  # after the window: no longer counts
    # ... but with no `clear` in the rule, the awaited event coming at last ends it.
    assert ev(run.all) == [("raise", 2045), ("clear", 2050)]


def test_sequence_absence_reset_ends_it_early() -> None:
    cond = (
        f"{{type: sequence, after: {OPENED}, then: {CLOSED}, within: 45s, at_least: 1, "
        "reset: {channel: event, field: event, equals: door_locked}}"
    )
    run = Run(rules_yaml(cond))
    run.feed(event("access", "a1", 0, "door_opened"))
    run.feed(event("access", "a1", 5, "door_locked"))
    assert run.tick(100) == []


def test_sequence_excess() -> None:
    cond = f"{{type: sequence, after: {GRANTED}, then: {OPENED}, within: 15s, at_most: 1}}"
    run = Run(rules_yaml(cond, clear="{after: 5m}", message='"opened {count} times"'))
    assert run.feed(event("access", "a1", 0, "access_granted")) == []
    assert run.feed(event("access", "a1", 2, "door_opened")) == []
    (d,) = run.feed(event("access", "a1", 5, "door_opened"))
    assert ev([d]) == [("raise", 5)]
    assert d.message == "opened 2 times"
    assert run.feed(event("access", "a1", 7, "door_opened")) == []  # once per sequence
    assert run.feed(event("access", "a1", 20, "door_opened")) == []  # after the window
    assert run.tick(304) == []
    assert ev(run.tick(1000)) == [("clear", 305)]
    # A new grant starts a new count: one opening per grant is fine.
    for t, name in [(2000, "access_granted"), (2002, "door_opened"), (2010, "access_granted")]:
        run.feed(event("access", "a1", t, name))
    assert run.feed(event("access", "a1", 2012, "door_opened")) == []
    assert run.feed(event("access", "a1", 2013, "door_opened")) != []


def test_sequence_excess_clears_after_a_single_late_tick() -> None:
    """Two timers of one slot due within one tick (window end, then the clear) both fire."""
    cond = f"{{type: sequence, after: {GRANTED}, then: {OPENED}, within: 15s, at_most: 0}}"
    run = Run(rules_yaml(cond, clear="{after: 1m}"))
    run.feed(event("access", "a1", 0, "access_granted"))
    assert ev(run.feed(event("access", "a1", 3, "door_opened"))) == [("raise", 3)]
    assert ev(run.tick(1000)) == [("clear", 63)]


def test_sequence_older_anchor_does_not_restart() -> None:
    cond = f"{{type: sequence, after: {OPENED}, then: {CLOSED}, within: 45s, at_least: 1}}"
    run = Run(rules_yaml(cond))
    run.feed(event("access", "a1", 10, "door_opened"))
    run.feed(event("access", "a1", 5, "door_opened"), now=11)
    assert ev(run.tick(100)) == [("raise", 55)]


# --- unpreceded -----------------------------------------------------------------------


def test_unpreceded() -> None:
    cond = f"{{type: unpreceded, event: {OPENED}, preceded_by: {GRANTED}, within: 10s}}"
    run = Run(rules_yaml(cond, clear="{after: 1m}"))
    run.feed(event("access", "a1", 0, "access_granted"))
    assert run.feed(event("access", "a1", 5, "door_opened")) == []
    assert run.feed(event("access", "a1", 10, "door_opened")) == []  # exactly within
    assert ev(run.feed(event("access", "a1", 30, "door_opened"))) == [("raise", 30)]
    assert ev(run.tick(100)) == [("clear", 90)]
    assert ev(run.feed(event("access", "a2", 200, "door_opened"))) == [("raise", 200)]  # no grant
    # A grant from another door does not cover this one (key: device).
    run.feed(event("access", "a3", 300, "access_granted"))
    assert ev(run.feed(event("access", "a1", 301, "door_opened"))) == [("raise", 301)]


# --- silence --------------------------------------------------------------------------

SILENCE = "{type: silence, when: {channel: event}, within: 1h}"


def test_silence_starts_at_the_first_reading_of_the_key() -> None:
    run = Run(rules_yaml(SILENCE, message='"quiet for {silent_s} s"'))
    assert run.tick(10 * HOUR) == []  # never heard of: nothing to miss
    assert run.feed(reading("access", "a1", 10 * HOUR, {"door_open": False})) == []
    assert run.tick(11 * HOUR - 1) == []
    (d,) = run.tick(12 * HOUR)
    assert ev([d]) == [("raise", 11 * HOUR)]
    assert d.message == "quiet for 3600.0 s"
    assert run.tick(20 * HOUR) == []  # raised once
    assert run.feed(reading("access", "a1", 20 * HOUR, {"door_open": True})) == []  # not activity
    assert ev(run.feed(event("access", "a1", 21 * HOUR, "door_opened"))) == [("clear", 21 * HOUR)]
    assert run.tick(22 * HOUR - 1) == []
    assert ev(run.tick(23 * HOUR)) == [("raise", 22 * HOUR)]


def test_silence_activity_pushes_the_deadline() -> None:
    run = Run(rules_yaml(SILENCE))
    run.feed(event("access", "a1", 0, "door_opened"))
    run.feed(event("access", "a1", 50 * MIN, "door_closed"))
    assert run.tick(HOUR + 10 * MIN) == []
    assert ev(run.tick(2 * HOUR)) == [("raise", HOUR + 50 * MIN)]


# --- correlation ----------------------------------------------------------------------

ALARM = "{channel: event, field: event, equals: alarm}"


def test_correlation_needs_k_distinct_devices_in_a_cell() -> None:
    cond = f"{{type: correlation, when: {ALARM}, at_least: 2, within: 10m}}"
    run = Run(
        rules_yaml(cond, key='"{cell}"', message='"Fire in cell {cell}: {devices} detectors"')
    )
    assert run.feed(event("smoke", "d1", 0, "alarm")) == []
    assert run.feed(event("smoke", "d1", 60, "alarm")) == []  # the same device twice
    assert (
        run.feed(reading("smoke", "d3", 90, {"event": "alarm"}, channel="event", cell="c2")) == []
    )
    assert run.feed(event("smoke", "d2", 100, "alarm_cleared")) == []  # not an alarm
    (d,) = run.feed(event("smoke", "d2", 120, "alarm"))
    assert ev([d]) == [("raise", 120)]
    assert (d.key, d.cell, d.devices) == ("c1", "c1", ("d1", "d2"))
    assert d.message == "Fire in cell c1: 2 detectors"
    assert run.tick(659) == []
    # d1's latest alarm (60 s) leaves the window at 660 s.
    assert ev(run.tick(2000)) == [("clear", 660)]


def test_correlation_window_too_long_apart() -> None:
    cond = f"{{type: correlation, when: {ALARM}, at_least: 2, within: 10m}}"
    run = Run(rules_yaml(cond, key='"{cell}"'))
    run.feed(event("smoke", "d1", 0, "alarm"))
    assert run.feed(event("smoke", "d2", 601, "alarm")) == []


def test_correlation_confirm_after_a_lone_device_that_stays_in_alarm() -> None:
    cond = (
        "{type: correlation, when: {channel: telemetry, field: alarm, equals: true}, "
        "at_least: 2, within: 10m, confirm_after: 90s}"
    )
    run = Run(rules_yaml(cond, key='"{cell}"'))

    def alarm(device: str, t: float, on: bool, cell: str) -> list[Ev]:
        return ev(run.feed(reading("smoke", device, t, {"alarm": on}, cell=cell)))

    assert [alarm("d1", t, True, "c1") for t in (0, 30, 60)] == [[], [], []]
    assert alarm("d1", 90, True, "c1") == [("raise", 90)]
    # A non-matching reading in between restarts the run.
    assert alarm("d2", 0, True, "c2") == []
    assert alarm("d2", 40, False, "c2") == []
    assert [alarm("d2", t, True, "c2") for t in (50, 100)] == [[], []]
    assert alarm("d2", 140, True, "c2") == [("raise", 140)]
    # Back to normal: clears once the alarm has left the window.
    assert alarm("d1", 200, False, "c1") == []
    assert ev(run.tick(695)) == [("clear", 690)]


# --- travel ---------------------------------------------------------------------------

# a1 and a2 are 853 m apart (0.01° of longitude at 39.9° N); a3 is 10 m from a1.


def test_travel_too_fast_between_two_doors() -> None:
    run = Run(
        rules_yaml(TRAVEL, key='"{credential_hash}"', message='"{distance_m} m in {elapsed_s} s"'),
        TRAVEL_DIRECTORY,
    )
    assert run.feed(grant("a1", 0, "card1")) == []
    (d,) = run.feed(grant("a2", 60, "card1"))
    assert ev([d]) == [("raise", 60)]
    assert d.key == "card1"
    assert d.devices == ("a1", "a2")
    assert d.values["other_device"] == "a1"
    assert d.values["distance_m"] == pytest.approx(853.0, abs=0.1)
    assert d.values["speed_m_s"] == pytest.approx(14.2, abs=0.1)
    assert d.message == "853.0 m in 60.0 s"
    assert d.location == Location(116.41, 39.90)


def test_travel_slow_walk_same_door_or_close_doors_do_not_raise() -> None:
    run = Run(rules_yaml(TRAVEL, key='"{credential_hash}"'), TRAVEL_DIRECTORY)
    run.feed(grant("a1", 0, "walker"))
    assert run.feed(grant("a2", 600, "walker")) == []  # 1.4 m/s
    assert run.feed(grant("a2", 601, "walker")) == []  # the same door again
    run.feed(grant("a1", 5000, "near"))
    assert run.feed(grant("a3", 5001, "near")) == []  # 10 m: below min_distance_m
    run.feed(grant("a1", 10_000, "late"))
    assert run.feed(grant("a2", 10_000 + HOUR + 1, "late")) == []  # beyond `within`
    run.feed(grant("a1", 20_000, "ghost"))
    assert run.feed(grant("zz", 20_001, "ghost")) == []  # not in the directory


def test_travel_needs_the_credential() -> None:
    """Grants without a credential (exit buttons, PINs) are not one card at two doors."""
    run = Run(rules_yaml(TRAVEL, key='"{credential_hash}"'), TRAVEL_DIRECTORY)
    run.feed(grant("a1", 0, None))
    assert run.feed(grant("a2", 10, None)) == []
    assert run.all == []


# --- schedule -------------------------------------------------------------------------

WEEKDAYS_8_TO_18 = OpeningHours({day: ((8 * 60, 18 * 60),) for day in range(5)})
SCHEDULE_DIRECTORY = Directory(
    sites={"s1": SiteInfo("s1", "Asia/Shanghai")},
    devices={
        "a1": DeviceInfo("a1", "access", "s1", "c1", 116.4, 39.9, hours=WEEKDAYS_8_TO_18),
        "a2": DeviceInfo("a2", "access", "s1", "c1", 116.4, 39.9),
    },
)


@pytest.mark.parametrize(
    ("utc", "local"),
    [
        (datetime(2025, 3, 3, 2, 0, tzinfo=UTC), None),  # Mon 10:00 in Shanghai
        (datetime(2025, 3, 3, 1, 0, tzinfo=UTC), None),  # Mon 09:00 (01:00 UTC would be shut)
        (datetime(2025, 3, 3, 9, 59, tzinfo=UTC), None),  # Mon 17:59
        (datetime(2025, 3, 3, 10, 0, tzinfo=UTC), "Mon 18:00"),
        (datetime(2025, 3, 3, 12, 0, tzinfo=UTC), "Mon 20:00"),
        (datetime(2025, 3, 2, 23, 30, tzinfo=UTC), "Mon 07:30"),  # Sunday in UTC
        (datetime(2025, 3, 8, 2, 0, tzinfo=UTC), "Sat 10:00"),
    ],
)
def test_schedule_in_site_time_zone(utc: datetime, local: str | None) -> None:
    cond = f"{{type: schedule, when: {GRANTED}}}"
    run = Run(rules_yaml(cond, message='"at {local_time}"'), SCHEDULE_DIRECTORY)
    t = (utc.timestamp() * 1000 - T0) / 1000
    out = run.feed(grant("a1", t, "card"))
    if local is None:
        assert out == []
    else:
        (d,) = out
        assert d.raised
        assert d.message == f"at {local}"
    assert run.feed(grant("a2", t, "card")) == []  # no opening hours: never after hours


# --- offline --------------------------------------------------------------------------


def test_offline_after_a_while_and_back() -> None:
    run = Run(rules_yaml("{type: offline, after: 60s}", message='"{device} off {offline_s} s"'))
    assert run.feed(status("access", "a1", 0, False)) == []
    assert run.tick(59) == []
    (d,) = run.tick(90)
    assert ev([d]) == [("raise", 60)]
    assert d.message == "a1 off 60.0 s"
    assert run.feed(status("access", "a1", 100, False)) == []  # the retained will again
    assert ev(run.feed(status("access", "a1", 120, True))) == [("clear", 120)]
    # Back before `after`: nothing.
    run.feed(status("access", "a1", 200, False))
    assert run.feed(status("access", "a1", 230, True)) == []
    assert run.tick(1000) == []
    # Any message from the device proves it is back.
    run.feed(status("access", "a1", 2000, False))
    assert ev(run.tick(2100)) == [("raise", 2060)]
    assert ev(run.feed(reading("access", "a1", 2110, {"door_open": False}))) == [("clear", 2110)]


def test_offline_after_zero_raises_immediately_and_once() -> None:
    run = Run(rules_yaml("{type: offline, after: 0}"))
    assert ev(run.feed(status("access", "a1", 0, False))) == [("raise", 0)]
    assert run.feed(status("access", "a1", 5, False)) == []  # still the same outage
    assert ev(run.feed(status("access", "a1", 10, True))) == [("clear", 10)]
    assert ev(run.feed(status("access", "a1", 20, False))) == [("raise", 20)]


def test_offline_ignores_an_older_message() -> None:
    run = Run(rules_yaml("{type: offline, after: 0}"))
    run.feed(status("access", "a1", 10, False))
    assert run.feed(reading("access", "a1", 5, {"door_open": True}), now=11) == []
    assert list(open_conditions(run.state)) == [("r1", "a1")]


# --- latch ----------------------------------------------------------------------------

OCCUPIED = "{field: occupied, equals: true}"
FREE = "{field: occupied, equals: false}"


def bay(t: float, occupied: bool, device: str = "p1") -> Reading:
    return reading("parking", device, t, {"occupied": occupied}, tags={"bay_id": "B7"})


def test_latch_with_for() -> None:
    cond = f"{{type: latch, raise_when: {OCCUPIED}, clear_when: {FREE}, for: 2m}}"
    run = Run(rules_yaml(cond, message='"bay {bay_id}"'))
    assert run.feed(bay(0, True)) == []
    assert run.feed(bay(60, True)) == []
    assert run.tick(119) == []
    (d,) = run.tick(200)
    assert ev([d]) == [("raise", 120)]
    assert d.message == "bay B7"
    assert run.feed(bay(250, True)) == []
    assert ev(run.feed(bay(300, False))) == [("clear", 300)]
    # Left before `for`: nothing.
    run.feed(bay(400, True))
    run.feed(bay(460, False))
    assert run.tick(1000) == []


def test_latch_without_for() -> None:
    cond = f"{{type: latch, raise_when: {OCCUPIED}, clear_when: {FREE}}}"
    run = Run(rules_yaml(cond))
    assert ev(run.feed(bay(0, True))) == [("raise", 0)]
    assert run.feed(bay(1, True)) == []
    assert ev(run.feed(bay(2, False))) == [("clear", 2)]
    assert run.feed(bay(3, False)) == []


# --- stuck ----------------------------------------------------------------------------


def smoke(t: float, temperature: float, humidity: float = 40.0) -> Reading:
    return reading("smoke", "d1", t, {"temperature": temperature, "humidity": humidity})


def test_stuck_needs_count_and_duration() -> None:
    cond = "{type: stuck, fields: [temperature, humidity], at_least: 3, for: 1m}"
    run = Run(rules_yaml(cond, message='"{repeats} repeats"'))
    for t in (0, 30, 45):
        assert run.feed(smoke(t, 21.5)) == []  # three, but only 45 s
    (d,) = run.feed(smoke(60, 21.5))
    assert ev([d]) == [("raise", 60)]
    assert d.message == "4 repeats"
    assert run.feed(smoke(90, 21.5)) == []
    assert run.feed(reading("smoke", "d1", 95, {"temperature": 30.0})) == []  # lacks humidity
    assert ev(run.feed(smoke(120, 21.5, humidity=41.0))) == [("clear", 120)]


# --- gap ------------------------------------------------------------------------------


def test_gap_in_seq() -> None:
    run = Run(rules_yaml("{type: gap, max_missing: 2}", message='"{missing} lost"'))

    def seq(t: float, n: int) -> list[Detection]:
        return run.feed(reading("smoke", "d1", t, {"temperature": 20.0}, seq=n))

    assert seq(0, 1) == []
    assert seq(1, 2) == []
    assert seq(2, 5) == []  # two missing: allowed
    (d,) = seq(3, 9)
    assert d.raised
    assert d.values["missing"] == 3
    assert d.message == "3 lost"
    assert seq(4, 9) == []  # duplicate
    assert seq(5, 1) == []  # device restart
    assert seq(6, 2) == []
    assert run.feed(reading("smoke", "d1", 7, {"temperature": 20.0})) == []  # no seq
    assert ev(run.tick(1000)) == [("clear", 303)]  # instant: back to normal after 5 min


# --- out-of-order readings ------------------------------------------------------------


def test_out_of_order_reading_is_ignored_by_threshold() -> None:
    run = Run(rules_yaml("{type: threshold, field: temperature, above: 80}"))
    assert ev(run.feed(reading("smoke", "d1", 10, {"temperature": 85.0}))) == [("raise", 10)]
    assert run.feed(reading("smoke", "d1", 5, {"temperature": 50.0}), now=11) == []
    assert ev(run.feed(reading("smoke", "d1", 20, {"temperature": 60.0}))) == [("clear", 20)]
    # And an old high value does not raise again.
    assert run.feed(reading("smoke", "d1", 15, {"temperature": 99.0}), now=21) == []


def test_out_of_order_reading_is_ignored_by_latch() -> None:
    cond = f"{{type: latch, raise_when: {OCCUPIED}, clear_when: {FREE}}}"
    run = Run(rules_yaml(cond))
    assert ev(run.feed(bay(10, True))) == [("raise", 10)]
    assert run.feed(bay(5, False), now=11) == []
    assert ev(run.feed(bay(20, False))) == [("clear", 20)]
    assert run.feed(bay(15, True), now=21) == []


def test_out_of_order_reading_is_ignored_by_stuck() -> None:
    run = Run(rules_yaml("{type: stuck, fields: [temperature], at_least: 3}"))
    for t in (0, 10):
        run.feed(smoke(t, 21.0))
    assert ev(run.feed(smoke(20, 21.0))) == [("raise", 20)]
    assert run.feed(smoke(15, 25.0), now=21) == []  # older and different: not a change
    assert ev(run.feed(smoke(30, 25.0))) == [("clear", 30)]


# --- clock jumps ----------------------------------------------------------------------


def test_clock_going_backwards_never_refires_timers() -> None:
    run = Run(rules_yaml("{type: threshold, field: temperature, above: 80, for: 30s}"))
    run.feed(reading("smoke", "d1", 0, {"temperature": 81.0}))
    assert ev(run.tick(100)) == [("raise", 30)]
    assert run.tick(10) == []
    assert run.feed(reading("smoke", "d1", 40, {"temperature": 82.0}), now=20) == []
    assert run.tick(100) == []
    assert run.state.clock_ms == at(100)


def test_clock_going_backwards_holds_pending_timers_until_time_catches_up() -> None:
    run = Run(rules_yaml(SILENCE))
    run.feed(event("access", "a1", 1000, "door_opened"), now=1000)
    assert run.tick(500) == []  # `now` went back: the deadline (1000 s + 1 h) is not due
    assert run.tick(1000 + HOUR - 1) == []
    assert ev(run.tick(1000 + HOUR)) == [("raise", 1000 + HOUR)]
    assert run.tick(1000) == []
    assert run.tick(1000 + 2 * HOUR) == []


def test_forward_jump_fires_due_timers_at_their_due_time_in_order() -> None:
    run = Run(rules_yaml(SILENCE))
    run.feed(event("access", "a1", 30 * MIN, "door_opened"))
    run.feed(event("access", "a2", 0, "door_opened"), now=30 * MIN)
    out = run.tick(10 * HOUR)
    assert [(d.device, d.at_ms) for d in out] == [("a2", at(HOUR)), ("a1", at(HOUR + 30 * MIN))]
    assert [d.values["silent_s"] for d in out] == [3600.0, 3600.0]


# --- restart from a snapshot ----------------------------------------------------------


def test_restart_pending_for_fires_once() -> None:
    run = Run(rules_yaml("{type: threshold, field: temperature, above: 80, for: 30s}"))
    run.feed(reading("smoke", "d1", 0, {"temperature": 81.0}))
    after = run.restarted()
    assert after.state.clock_ms == at(0)
    assert after.tick(29) == []
    assert ev(after.tick(45)) == [("raise", 30)]
    assert after.tick(60) == []
    assert ev(after.feed(reading("smoke", "d1", 70, {"temperature": 70.0}))) == [("clear", 70)]


def test_restart_open_condition_is_not_raised_again_and_clears_normally() -> None:
    run = Run(rules_yaml(HOT, message='"{device}: {value}"'))
    assert ev(run.feed(reading("smoke", "d1", 0, {"temperature": 90.0}))) == [("raise", 0)]
    after = run.restarted()
    assert list(open_conditions(after.state)) == [("r1", "d1")]
    assert after.feed(reading("smoke", "d1", 10, {"temperature": 95.0})) == []
    assert after.feed(reading("smoke", "d1", 20, {"temperature": 75.0})) == []  # hysteresis kept
    (d,) = after.feed(reading("smoke", "d1", 30, {"temperature": 60.0}))
    assert ev([d]) == [("clear", 30)]
    assert d.message == "d1: 60.0"
    assert after.feed(reading("smoke", "d1", 40, {"temperature": 50.0})) == []


def test_restart_keeps_instant_auto_clear_and_count_window() -> None:
    text = rules_yaml(f"{{type: count, when: {DENIED}, at_least: 2, within: 1m}}")
    run = Run(text)
    run.feed(event("access", "a1", 0, "access_denied"))
    after = run.restarted()
    assert ev(after.feed(event("access", "a1", 30, "access_denied"))) == [("raise", 30)]
    after = after.restarted()
    assert ev(after.tick(500)) == [("clear", 60)]


def test_restart_tick_fired_message_keeps_reading_context() -> None:
    cond = f"{{type: sequence, after: {OPENED}, then: {CLOSED}, within: 45s, at_least: 1}}"
    run = Run(rules_yaml(cond, message='"Door {door} ({device}, {kind}) in {cell}"'))
    run.feed(
        reading("access", "a1", 0, {"event": "door_opened"}, channel="event", tags={"door": "N"})
    )
    (d,) = run.restarted().tick(100)
    assert d.message == "Door N (a1, access) in c1"


def test_snapshot_version_is_checked() -> None:
    with pytest.raises(ValueError, match="version"):
        EngineState.from_json(b'{"version": 99, "clock_ms": 0, "slots": {}}')


# --- reload ---------------------------------------------------------------------------


def test_reload_keeps_unchanged_rules_and_drops_changed_or_removed_ones() -> None:
    old = Engine(parse_rules(RELOAD))
    state = EngineState()
    old.evaluate(reading("smoke", "d1", 0, {"temperature": 90.0}), state, at(0))
    old.evaluate(event("access", "a1", 1, "access_denied"), state, at(1))
    old.evaluate(event("access", "a1", 2, "access_denied"), state, at(2))
    old.evaluate(event("access", "a1", 3, "tamper"), state, at(3))
    assert len(list(open_conditions(state))) == 3

    text = RELOAD.replace("at_least: 2", "at_least: 3")
    text = text[: text.index("  - id: tamper")]
    new = Engine(parse_rules(text))
    assert new.carry_over(state, old) == 2
    assert list(open_conditions(state)) == [("hot", "d1")]

    # The kept slot goes on: no new raise while hot, a clear when it cools down.
    assert new.evaluate(reading("smoke", "d1", 10, {"temperature": 95.0}), state, at(10)) == []
    out = new.evaluate(reading("smoke", "d1", 20, {"temperature": 70.0}), state, at(20))
    assert ev(out) == [("clear", 20)]
    # The changed rule starts from nothing: two denials are not three.
    new.evaluate(event("access", "a1", 21, "access_denied"), state, at(21))
    assert new.evaluate(event("access", "a1", 22, "access_denied"), state, at(22)) == []
    assert ev(new.evaluate(event("access", "a1", 23, "access_denied"), state, at(23))) == [
        ("raise", 23)
    ]


def test_reload_of_identical_rules_drops_nothing() -> None:
    old = Engine(parse_rules(RELOAD))
    state = EngineState()
    old.evaluate(reading("smoke", "d1", 0, {"temperature": 90.0}), state, at(0))
    assert Engine(parse_rules(RELOAD)).carry_over(state, old) == 0
    assert list(open_conditions(state)) == [("hot", "d1")]


def test_tick_drops_slots_of_unknown_rules() -> None:
    run = Run(rules_yaml(SILENCE))
    run.feed(event("access", "a1", 0, "door_opened"))
    other = Engine(parse_rules(RELOAD))
    assert other.tick(run.state, at(2 * HOUR)) == []
    assert run.state.slots == {}


# --- cooldown and instant auto-clear --------------------------------------------------

TAMPER = "{type: match, when: {channel: event, field: event, equals: tamper}}"


def test_cooldown_suppresses_repeat_raises() -> None:
    run = Run(rules_yaml(TAMPER, cooldown="5m", clear="{after: 1h}"))
    assert ev(run.feed(event("smoke", "d1", 0, "tamper"))) == [("raise", 0)]
    assert run.feed(event("smoke", "d1", 60, "tamper")) == []
    assert run.feed(event("smoke", "d1", 299, "tamper")) == []
    assert ev(run.feed(event("smoke", "d1", 300, "tamper"))) == [("raise", 300)]  # a repeat
    assert run.feed(event("smoke", "d1", 400, "tamper")) == []
    assert ev(run.feed(event("smoke", "d2", 400, "tamper"))) == [("raise", 400)]  # another key
    assert ev(run.tick(10 * HOUR)) == [("clear", 3600 + 300), ("clear", 3600 + 400)]


def test_cooldown_does_not_hold_back_a_raise_after_a_clear() -> None:
    run = Run(rules_yaml(TAMPER, cooldown="10m"))
    run.feed(event("smoke", "d1", 0, "tamper"))
    assert ev(run.tick(601)) == [("clear", 600)]  # default clear: the cooldown (>= 5 min)
    assert ev(run.feed(event("smoke", "d1", 602, "tamper"))) == [("raise", 602)]


def test_instant_rule_auto_clears_after_5_minutes_by_default() -> None:
    run = Run(rules_yaml(TAMPER))
    run.feed(event("smoke", "d1", 0, "tamper"))
    assert run.tick(299) == []
    assert ev(run.tick(400)) == [("clear", 300)]
    # A repeat pushes the clear out.
    run.feed(event("smoke", "d1", 1000, "tamper"))
    run.feed(event("smoke", "d1", 1200, "tamper"))
    assert run.tick(1400) == []
    assert ev(run.tick(1600)) == [("clear", 1500)]
    assert run.state.slots == {}  # nothing left to remember


def test_instant_rule_clear_after_and_clear_when() -> None:
    run = Run(rules_yaml(TAMPER, clear="{after: 2m}"))
    run.feed(event("smoke", "d1", 0, "tamper"))
    assert ev(run.tick(1000)) == [("clear", 120)]

    plate = "{type: match, when: {channel: event, field: plate_hash}}"
    left = "{channel: event, field: event, equals: vehicle_left}"
    run = Run(rules_yaml(plate, clear=f"{{when: {left}, after: 2h}}"))
    assert run.feed(event("parking", "p1", 0, "vehicle_left")) == []  # nothing open
    assert run.state.slots == {}
    assert ev(run.feed(event("parking", "p1", 10, "plate_read", plate_hash="x"))) == [("raise", 10)]
    assert ev(run.feed(event("parking", "p1", 30, "vehicle_left"))) == [("clear", 30)]
    assert run.tick(3 * HOUR) == []


def test_non_instant_rule_does_not_auto_clear() -> None:
    run = Run(rules_yaml("{type: threshold, field: temperature, above: 80}"))
    run.feed(reading("smoke", "d1", 0, {"temperature": 90.0}))
    assert run.tick(100 * HOUR) == []
    assert list(open_conditions(run.state)) == [("r1", "d1")]


# --- message templates ----------------------------------------------------------------


def test_message_renders_names_values_attributes_and_unknowns() -> None:
    directory = Directory(
        devices={"d1": DeviceInfo("d1", "smoke", "s1", "c9", 116.4, 39.9, {"room": "kitchen"})}
    )
    message = (
        '"{device}/{kind}/{site}/{cell}/{room}: {value} > {limit} '
        '[{rule} {key} {title}] {temperature} {nope} {{literal}}"'
    )
    run = Run(
        rules_yaml("{type: threshold, field: temperature, above: 80}", message=message), directory
    )
    (d,) = run.feed(reading("smoke", "d1", 0, {"temperature": 85.0}, cell=None))
    assert d.message == "d1/smoke/s1/c9/kitchen: 85.0 > 80.0 [r1 d1 R1] 85.0 ? {literal}"
    assert d.cell == "c9"  # from the directory
    assert d.location == Location(116.4, 39.9)


def test_tick_fired_message_uses_the_slot_context() -> None:
    directory = Directory(
        devices={"a1": DeviceInfo("a1", "access", "s1", "c1", 0, 0, {"room": "hall"})}
    )
    cond = f"{{type: sequence, after: {OPENED}, then: {CLOSED}, within: 45s, at_least: 1}}"
    message = '"Door {door} ({device}, {kind}) in {cell}/{room}: {count} closes, {nope}"'
    run = Run(rules_yaml(cond, message=message), directory)
    run.feed(
        reading("access", "a1", 0, {"event": "door_opened"}, channel="event", tags={"door": "N"})
    )
    (d,) = run.tick(100)
    assert d.message == "Door N (a1, access) in c1/hall: 0 closes, ?"


def test_key_template_unknown_name_is_question_mark() -> None:
    run = Run(rules_yaml(TAMPER, key='"{zone}-{device}"'))
    (d,) = run.feed(event("smoke", "d1", 0, "tamper"))
    assert d.key == "?-d1"


# --- rejected messages ----------------------------------------------------------------


def test_rejected_readings_counted_by_a_count_rule() -> None:
    cond = "{type: count, when: {channel: rejected}, at_least: 3, within: 5m}"
    run = Run(rules_yaml(cond, message='"{device} sent {count} bad (last: {reason})"'))

    def bad(t: float, reason: str) -> list[Detection]:
        return run.feed(rejected_reading("s1", "access", "a1", reason, at(t) * 1_000_000))

    assert bad(0, "not_json") == []
    assert run.feed(event("access", "a1", 1, "door_opened")) == []  # good traffic: not counted
    assert bad(10, "schema") == []
    (d,) = bad(20, "schema")
    assert d.raised
    assert (d.device, d.cell, d.site) == ("a1", None, "s1")
    assert d.message == "a1 sent 3 bad (last: schema)"
    assert ev(run.tick(1000)) == [("clear", 300)]


def test_rejected_reading_shape() -> None:
    r = rejected_reading("s1", "smoke", "d1", "too_big", 5_000_000)
    assert (r.measurement, r.channel, r.kind, r.device, r.cell) == (
        "rejected", "rejected", "smoke", "d1", None,
    )  # fmt: skip
    assert dict(r.fields) == {"reason": "too_big"}


# --- scope ----------------------------------------------------------------------------


def test_scope_by_kinds_and_sites() -> None:
    run = Run(rules_yaml(TAMPER, scope="{kinds: [smoke, parking], sites: [s1]}"))
    assert run.feed(event("access", "a1", 0, "tamper")) == []
    assert (
        run.feed(reading("smoke", "d1", 0, {"event": "tamper"}, channel="event", site="s2")) == []
    )
    assert run.feed(event("smoke", "d1", 0, "tamper")) != []
    assert run.feed(event("parking", "p1", 0, "tamper")) != []


def test_scope_by_cells_uses_the_directory_when_the_reading_has_none() -> None:
    directory = Directory(devices={"d2": DeviceInfo("d2", "smoke", "s1", "c1", 0, 0)})
    run = Run(rules_yaml(TAMPER, scope="{cells: [c1]}"), directory)
    assert run.feed(event("smoke", "d1", 0, "tamper")) != []
    assert (
        run.feed(reading("smoke", "d3", 0, {"event": "tamper"}, channel="event", cell="c2")) == []
    )
    assert (
        run.feed(reading("smoke", "d4", 0, {"event": "tamper"}, channel="event", cell=None)) == []
    )
    (d,) = run.feed(reading("smoke", "d2", 0, {"event": "tamper"}, channel="event", cell=None))
    assert d.cell == "c1"


def test_scope_by_attributes() -> None:
    directory = Directory(
        devices={
            "p1": DeviceInfo("p1", "parking", "s1", "c1", 0, 0, {"fire_lane": True}),
            "p2": DeviceInfo("p2", "parking", "s1", "c1", 0, 0, {"fire_lane": False}),
            "p3": DeviceInfo("p3", "parking", "s1", "c1", 0, 0),
        }
    )
    cond = f"{{type: latch, raise_when: {OCCUPIED}, clear_when: {FREE}}}"
    run = Run(
        rules_yaml(cond, scope="{kinds: [parking], attributes: {fire_lane: true}}"), directory
    )
    assert run.feed(bay(0, True, "p1")) != []
    assert run.feed(bay(0, True, "p2")) == []
    assert run.feed(bay(0, True, "p3")) == []  # attribute unknown
    assert run.feed(bay(0, True, "p4")) == []  # device unknown
    assert list(open_conditions(run.state)) == [("r1", "p1")]


# --- the default pack end to end (a few of its rules) ---------------------------------


def test_default_pack_door_held_open_and_fire() -> None:
    engine = Engine(load_rules())
    state = EngineState()

    def feed(r: Reading) -> list[Detection]:
        return engine.evaluate(r, state, r.ts_ns // 1_000_000)

    door = {"door": "D1"}
    feed(reading("access", "a1", 0, {"event": "door_opened"}, channel="event", tags=door))
    out = engine.tick(state, at(60))
    assert [(d.rule_id, d.raised, d.at_ms) for d in out] == [("door_held_open", True, at(45))]
    assert out[0].message == "Door D1 (a1) has stood open for more than 45 s"
    out = feed(reading("access", "a1", 70, {"event": "door_closed"}, channel="event", tags=door))
    assert [(d.rule_id, d.raised) for d in out] == [("door_held_open", False)]

    feed(event("smoke", "d1", 100, "alarm"))
    out = feed(reading("smoke", "d2", 130, {"alarm": True}))
    assert [(d.rule_id, d.key, d.severity, d.incident) for d in out] == [
        ("confirmed_fire", "c1", Severity.CRITICAL, "fire")
    ]
    assert out[0].message == "Fire in cell c1: 2 detectors in alarm"
