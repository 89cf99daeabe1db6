"""Allowed lateness (`rules.allowed_lateness_s`): readings that arrive out of order across
devices, as they do when each device has its own broker connection, are decided as if
they had arrived in order, up to the lateness.

Times are seconds after T0 unless a test says otherwise.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import pytest

from evaluation.rules_eval import HASH_KEY
from events.model import Detection
from ingest.decode import Decoder
from rules.directory import Directory
from rules.engine import Engine, EngineState
from rules.schema import load_rules
from rules.site_directory import directory_from_sites
from sensors import topics
from sensors.base import DecodeContext, Reading, keyed_hash
from sensors.registry import KINDS
from tests.support.drill_fixtures import TIMED_SCENARIOS, short_stream
from tests.support.rules import at, reading

DOOR = {"door": "D1"}


def door(device: str, t: float, name: str) -> Reading:
    return reading("access", device, t, {"event": name}, channel="event", tags=DOOR)


def feed(engine: Engine, state: EngineState, readings: Sequence[Reading]) -> list[Detection]:
    out: list[Detection] = []
    for r in readings:
        out += engine.evaluate(r, state, r.ts_ns // 1_000_000)
    return out


def decided(detections: Sequence[Detection]) -> list[tuple[str, str, bool, int]]:
    return [(d.rule_id, d.key, d.raised, d.at_ms) for d in detections]


def outcomes(detections: Sequence[Detection]) -> list[tuple[object, ...]]:
    """What operators see of each detection. Not which device's reading completed it:
    two detectors in alarm in the same millisecond are completed by whichever the hub
    read second."""
    return [
        (d.rule_id, d.key, d.raised, d.at_ms, d.site, d.cell, d.message, d.values, d.devices)
        for d in detections
    ]


def test_a_close_that_arrives_after_another_devices_later_reading() -> None:
    """The door closes 0.05 s before its held-open timer, but the close reaches the hub
    after a reading of another device stamped 0.5 s later (its own connection was
    slower). Without lateness the timer fires first: a false alarm, then its clear."""
    arrived = [door("a1", 0, "door_opened"), door("a2", 45.5, "access_granted")]
    arrived.append(door("a1", 44.95, "door_closed"))

    strict = Engine(load_rules())
    found = decided(feed(strict, EngineState(), arrived))
    assert found == [
        ("door_held_open", "a1", True, at(45)),
        ("door_held_open", "a1", False, at(44.95)),
    ]
    assert strict.late_readings == 1

    patient = Engine(load_rules(), lateness_ms=2_000)
    assert decided(feed(patient, EngineState(), arrived)) == []
    assert patient.late_readings == 0


def test_a_slots_own_reading_fires_its_due_timer_first() -> None:
    """Lateness holds back timers for other devices' late readings, never for the slot's
    own: a close after the timer's time raises and clears, as without lateness."""
    readings = [door("a1", 0, "door_opened"), door("a1", 46, "door_closed")]
    expected = [("door_held_open", "a1", True, at(45)), ("door_held_open", "a1", False, at(46))]
    for lateness_ms in (0, 2_000, 60_000):
        engine = Engine(load_rules(), lateness_ms=lateness_ms)
        assert decided(feed(engine, EngineState(), readings)) == expected


def test_timers_fire_once_the_watermark_is_past_them_by_the_lateness() -> None:
    engine = Engine(load_rules(), lateness_ms=2_000)
    state = EngineState()
    feed(engine, state, [door("a1", 0, "door_opened")])
    assert engine.tick(state, at(46.9)) == []
    assert decided(engine.tick(state, at(47))) == [("door_held_open", "a1", True, at(45))]


def test_late_readings_are_counted_behind_what_moved_event_time() -> None:
    """A device whose clock runs ahead moves event time; the others' readings then come
    late behind it, and the count says whom they came behind."""
    engine = Engine(load_rules(), lateness_ms=2_000)
    state = EngineState()
    feed(engine, state, [door("a1", 0, "door_opened"), door("fast", 300, "door_closed")])
    feed(engine, state, [door("a1", t, "access_granted") for t in range(10, 60, 10)])
    feed(engine, state, [door("fast", 301, "door_closed"), door("a2", 299, "door_opened")])
    engine.tick(state, at(400))  # the hub's idle ticks move it on
    feed(engine, state, [door("a2", 390, "door_closed")])
    assert engine.late_readings == 6
    assert engine.late_behind == {"fast": 5, "(hub clock ticks)": 1}


def test_a_negative_lateness_is_refused() -> None:
    with pytest.raises(ValueError, match="lateness_ms"):
        Engine(load_rules(), lateness_ms=-1)


def _scenario_readings(seed: int) -> tuple[Directory, list[Reading]]:
    """Four hours of the Yingyang site's timed scenarios, decoded (device time only)."""
    stream = short_stream(TIMED_SCENARIOS, seed=seed)
    decoder = Decoder(
        KINDS,
        DecodeContext(hash_identifier=lambda v: keyed_hash(HASH_KEY, v)),
        topic_prefix=topics.DEFAULT_PREFIX,
    )
    out = []
    for message in stream.messages:
        item = decoder.decode(message.topic, message.payload, message.sim_ms * 1_000_000)
        if isinstance(item, Reading) and item.ts_from_device:
            out.append(item)
    return directory_from_sites([stream.site]), out


def _arrival_order(readings: Sequence[Reading], max_delay_ms: int, seed: int) -> list[Reading]:
    """As the hub would read them if each device had its own connection: every reading
    delayed by up to `max_delay_ms`, each device's own order kept."""
    rng = random.Random(seed)
    last: dict[str, int] = {}
    arrivals = []
    for i, r in enumerate(readings):
        ts_ms = r.ts_ns // 1_000_000
        arrives = max(ts_ms + rng.randrange(max_delay_ms), last.get(r.device, 0))
        last[r.device] = arrives
        arrivals.append((arrives, i, r))
    return [r for _arrives, _i, r in sorted(arrivals)]


def _run(
    directory: Directory, readings: Sequence[Reading], lateness_ms: int
) -> tuple[list[Detection], int]:
    """Every detection, in time order (the devices a correlation names sorted: they are
    listed as they arrived), and how many readings came later than the lateness allows."""
    engine = Engine(load_rules(), directory, lateness_ms=lateness_ms)
    state = EngineState()
    out = feed(engine, state, readings)
    out += engine.tick(state, max(r.ts_ns // 1_000_000 for r in readings) + 10 * 86_400_000)
    out = [dataclasses.replace(d, devices=tuple(sorted(d.devices))) for d in out]
    return sorted(out, key=lambda d: (d.at_ms, d.rule_id, d.key, d.raised)), engine.late_readings


@pytest.mark.parametrize("seed", [3, 5])
def test_scenarios_delayed_up_to_the_lateness_decide_as_in_order(seed: int) -> None:
    """Every detection (rule, key, raise or clear, time, message, values) of the site's
    scenarios is the same when each device's readings arrive up to 30 s late, with a
    lateness of 31 s. Without it, count windows emptied by other devices' time lose
    bursts that arrive late (2 and 4 detections of these streams when measured)."""
    directory, readings = _scenario_readings(seed)
    shuffled = _arrival_order(readings, 30_000, seed)
    assert shuffled != readings

    in_order, _ = _run(directory, readings, 31_000)
    assert len(in_order) > 50
    assert in_order == _run(directory, readings, 0)[0]  # in order, lateness changes nothing
    late, late_count = _run(directory, shuffled, 31_000)
    assert late_count == 0
    assert outcomes(late) == outcomes(in_order)
    strict, strict_late = _run(directory, shuffled, 0)
    assert strict_late > 0
    assert decided(strict) != decided(in_order)
