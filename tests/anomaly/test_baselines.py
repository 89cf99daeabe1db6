"""Online per-device baselines (anomaly/baselines.py): which fields are scored, warm-up
silence, the wording of range breaks and frozen readings, the per-device rate limit,
batching, and the learned state's round trip."""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Sequence

import pytest

from anomaly.baselines import SKIPPED, FieldNovelty, OnlineParams, OnlineScorer, scored_fields
from anomaly.cells import CELL_ROW, widen_cells
from events.model import Detection, Source
from sensors.base import Reading
from sensors.registry import KINDS
from tests.support.anomaly_fixtures import MS_PER_MIN, smoke_reading

T0 = 1_772_409_600_000  # 2026-03-02 00:00 UTC
DEVICE = "sm-kg-kitchen"
PARAMS = OnlineParams(warmup_readings=20, warmup_ms=120 * MS_PER_MIN)


def steady(minutes: int, *, seed: int = 3, first: int = 0, device: str = DEVICE) -> list[Reading]:
    """One reading a minute of a quiet room: temperature and eCO2 with noise."""
    rng = random.Random(seed)
    return [
        smoke_reading(
            device,
            T0 + i * MS_PER_MIN,
            i + 1,
            round(21.0 + rng.gauss(0, 0.1), 2),
            round(420.0 + rng.gauss(0, 8), 1),
        )
        for i in range(first, first + minutes)
    ]


def at(reading: Reading, minute: int, **fields: float) -> Reading:
    """`reading` moved to `minute` with some fields replaced."""
    return smoke_reading(
        reading.device,
        T0 + minute * MS_PER_MIN,
        minute + 1,
        float(fields.get("temperature", reading.fields["temperature"])),
        float(fields.get("eco2", reading.fields["eco2"])),
    )


def frozen(reading: Reading, minutes: range) -> list[Reading]:
    """`reading` sent again every minute in `minutes`, values unchanged (a stuck sensor)."""
    return [
        dataclasses.replace(
            reading,
            ts_ns=(T0 + m * MS_PER_MIN) * 1_000_000,
            seq=m + 1,
            fields={**reading.fields, "seq": m + 1},
        )
        for m in minutes
    ]


def run(
    readings: Sequence[Reading], params: OnlineParams = PARAMS, batch: int = 64
) -> list[Detection]:
    scorer = OnlineScorer(params)
    out: list[Detection] = []
    for i in range(0, len(readings), batch):
        detections, _ = scorer.score_batch(readings[i : i + batch])
        out += detections
    return out


def test_fields_come_from_the_sensor_definitions() -> None:
    fields = scored_fields(KINDS.values())
    smoke = {f.name for f in fields["smoke"]}
    assert {"obscuration", "temperature", "co", "eco2", "pm2_5", "raw_h2"} <= smoke
    # Counters, drains, weather, positions and configuration are not scored; neither
    # are states (booleans) and text.
    assert not smoke & {"seq", "battery", "pressure", "alarm", "fault", "test", "event"}
    assert "access" not in fields  # door states and a battery: nothing to score
    assert [f.name for f in fields["parking"]] == ["occupancy"]
    assert not fields["parking"][0].measured  # an integer count: no stuck check
    for kind in KINDS.values():
        numeric = {s.name for s in kind.fields if s.type in (int, float)}
        assert numeric - {f.name for f in fields.get(kind.name, ())} <= set(SKIPPED)
    units = {f.name: f.unit for f in fields["smoke"]}
    assert units["obscuration"] == "%/m" and units["temperature"] == "°C"


def test_normal_readings_raise_nothing() -> None:
    assert run(steady(600)) == []


def test_no_alarm_during_the_warm_up() -> None:
    quiet = steady(400)
    hot = at(quiet[60], 60, temperature=60.0)  # an hour in: still learning
    assert run([*quiet[:60], hot, *quiet[61:]]) == []
    late = at(quiet[300], 300, temperature=60.0)  # five hours in: learned
    (raised, cleared) = run([*quiet[:300], late, *quiet[301:]])
    assert raised.raised and raised.at_ms == late.ts_ns // 1_000_000
    # The fall back is a step never seen either (flagged, held): the clear comes 15 min
    # after the last flagged reading.
    assert not cleared.raised
    assert cleared.at_ms == raised.at_ms + MS_PER_MIN + PARAMS.clear_after_ms


def test_an_out_of_range_reading_says_what_was_unusual() -> None:
    quiet = steady(400)
    hot = at(quiet[180], 180, temperature=60.0)  # 03:00 UTC
    detections = run([*quiet[:180], hot, *quiet[181:]])
    raised = detections[0]
    assert raised.rule_id == "anomaly.smoke" and raised.key == DEVICE
    assert raised.device == DEVICE and raised.source is Source.ANOMALY
    assert raised.title == "Unusual smoke: air temperature"
    pattern = (
        r"Air temperature 60\.00 °C, usual (2\d\.\d\d) to (2\d\.\d\d) °C "
        r"\(learned over 3 h\); unusual since 03:00 UTC"
    )
    match = re.fullmatch(pattern, raised.message)
    assert match, raised.message
    values = raised.values
    assert values["reason"] == "range" and values["field"] == "temperature"
    assert values["value"] == 60.0 and values["score"] == 1.0
    assert float(values["usual_low"]) < 21.0 < float(values["usual_high"]) < 22.0
    assert f"{values['usual_low']:.2f}" == match.group(1)
    assert values["since_ms"] == raised.at_ms and values["learned_s"] == 3 * 3600


def test_a_sudden_step_inside_the_range_is_unusual_context() -> None:
    # A smooth two-hour cycle: learned, a level is only ever reached by small steps.
    rng = random.Random(5)
    cycle = [
        smoke_reading(
            DEVICE,
            T0 + i * MS_PER_MIN,
            i + 1,
            round(21.0 + math.sin(2 * math.pi * i / 120), 3),
            round(420.0 + rng.gauss(0, 8), 1),
        )
        for i in range(400)
    ]
    trough = 300 + 90 - 300 % 120  # sin at its lowest (minute 390)
    jump = at(cycle[trough], trough, temperature=21.9)  # to near the crest in one step
    detections = run([*cycle[:trough], jump, *cycle[trough + 1 :]])
    raised = [d for d in detections if d.raised]
    assert raised and raised[0].at_ms == T0 + trough * MS_PER_MIN
    values = raised[0].values
    assert values["reason"] == "context" and values["field"] == "temperature"
    assert float(values["usual_low"]) <= 21.9 <= float(values["usual_high"])  # inside
    message = raised[0].message
    assert message.startswith("Air temperature 21.90 °C after 20.00 °C (a change of +1.90 °C")
    assert "has not shown at this level" in message


def test_frozen_readings_raise_and_repeats_are_rate_limited() -> None:
    quiet = steady(500)
    stuck = frozen(quiet[299], range(300, 340))  # 40 min of one repeated reading
    detections = run([*quiet[:300], *stuck, *quiet[340:]])
    raised = [d for d in detections if d.raised]
    minutes = [(d.at_ms - T0) // MS_PER_MIN for d in raised]
    # The first repeat is already a step this device never took (its humidity always
    # moved); 15 repeats in, the device is stuck. One detection per repeat_after_ms
    # (10 min) at most, the flags in between held and counted.
    assert minutes == [300, 299 + PARAMS.stuck_min, 309 + PARAMS.stuck_min, 319 + PARAMS.stuck_min]
    assert [d.values["reason"] for d in raised] == ["context", "stuck", "stuck", "stuck"]
    assert [d.values["held"] for d in raised] == [0, 0, 9, 9]
    assert raised[1].message.startswith(
        f"Readings frozen: the same values {PARAMS.stuck_min + 1} times in a row (smoke "
        "obscuration per metre 0.01 %/m, air temperature "
    )
    assert raised[1].values["repeats"] == PARAMS.stuck_min + 1
    assert "unusual since 05:00 UTC" in raised[3].message  # since the raise
    (cleared,) = [d for d in detections if not d.raised]
    # The first live reading after the freeze moves again by a step not seen at that
    # level (flagged, held); the condition clears 15 min after it.
    assert cleared.at_ms == T0 + 340 * MS_PER_MIN + PARAMS.clear_after_ms
    assert "back to usual" in cleared.message


def test_quiet_devices_clear_on_the_watermark_at_the_same_time() -> None:
    quiet = steady(400)
    hot = at(quiet[300], 300, temperature=60.0)
    scorer = OnlineScorer(PARAMS)
    (raised,), _ = scorer.score_batch([*quiet[:300], hot])
    assert scorer.tick(raised.at_ms + PARAMS.clear_after_ms - 1) == []
    (cleared,) = scorer.tick(raised.at_ms + 10 * PARAMS.clear_after_ms)
    assert cleared.at_ms == raised.at_ms + PARAMS.clear_after_ms  # not the watermark's time


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_batching_does_not_change_the_detections(batch: int) -> None:
    quiet = steady(500)
    stream = [
        *quiet[:200],
        at(quiet[200], 200, temperature=60.0),
        *quiet[201:300],
        *frozen(quiet[299], range(300, 330)),
        *quiet[330:],
    ]
    reference = run(stream, batch=len(stream))
    assert len([d for d in reference if d.raised]) >= 3
    assert run(stream, batch=batch) == reference


def test_state_round_trip_resumes_exactly() -> None:
    quiet = steady(500)
    stream = [
        *quiet[:250],
        at(quiet[250], 250, temperature=60.0),
        *quiet[251:300],
        *frozen(quiet[299], range(300, 330)),
        *quiet[330:],
    ]
    reference = run(stream)
    for cut in (10, 100, 255, 310):
        first = OnlineScorer(PARAMS)
        before, _ = first.score_batch(stream[:cut])
        rows = first.state_changes()
        assert rows and all(isinstance(v, bytes) for v in rows.values())
        second = OnlineScorer(PARAMS)
        second.load_state(rows)
        after, _ = second.score_batch(stream[cut:])
        assert before + after == reference, cut


def test_only_changed_devices_are_written() -> None:
    a = steady(100, device="sm-a")
    b = steady(100, device="sm-b", seed=4)
    scorer = OnlineScorer(PARAMS)
    scorer.score_batch([*a[:50], *b[:50]])
    rows = scorer.state_changes()
    assert {k for k in rows if k.count("/") == 1} == {"smoke/sm-a", "smoke/sm-b"}
    assert {"smoke/sm-a/temperature", "smoke/sm-b/eco2"} <= set(rows)  # cells after warm-up
    assert scorer.state_changes() == {}
    scorer.score_batch(a[50:52])
    assert {k for k in scorer.state_changes() if k.count("/") == 1} == {"smoke/sm-a"}


def test_a_foreign_state_is_refused() -> None:
    scorer = OnlineScorer(PARAMS)
    with pytest.raises(ValueError, match="version"):
        scorer.load_state({"smoke/x": b'{"v": 99}'})
    scorer.score_batch(steady(30))
    rows = scorer.state_changes()
    cells = f"smoke/{DEVICE}/temperature"
    with pytest.raises(ValueError, match="cut short"):
        OnlineScorer(PARAMS).load_state({**rows, cells: b"\x01"})
    with pytest.raises(ValueError, match="trailing"):
        OnlineScorer(PARAMS).load_state({**rows, cells: rows[cells] + b"\x00"})


def test_field_cells_survive_their_byte_form() -> None:
    field = FieldNovelty(PARAMS)
    for i in range(200):
        field.step(20.0 + (i % 17) * 0.3, PARAMS)
    copy = FieldNovelty(PARAMS)
    copy.seen, copy.lo, copy.hi, copy.prev = field.seen, field.lo, field.hi, field.prev
    copy.ready = field.ready
    copy.set_span(field.glo, field.ghi)
    copy.load_cells(field.cells_bytes())
    assert copy.masks == field.masks and all(field.masks)
    assert [copy.cells(k) for k in range(3)] == [field.cells(k) for k in range(3)]
    assert [copy.step(x, PARAMS) for x in (20.1, 29.0, 25.0)] == [
        field.step(x, PARAMS) for x in (20.1, 29.0, 25.0)
    ]


def test_a_regrid_on_bits_moves_the_cells_as_the_set_form_does() -> None:
    """`_Layout.widen` (the hub's fast path) against `anomaly.cells.widen_cells` (the
    reference, on sets of cell keys), over random grids and ranges, wider and shifted."""
    rng = random.Random(15)
    field = FieldNovelty(PARAMS)
    for _ in range(300):
        k = rng.randrange(len(field.layouts))
        layout = field.layouts[k]
        steps = layout.shift - 1
        cells = {
            rng.randrange(layout.g + 1) * CELL_ROW + rng.randint(-steps, steps)
            for _ in range(rng.randint(1, 120))
        }
        mask = sum(1 << layout.index(key) for key in cells)
        old_lo = rng.uniform(-50.0, 50.0)
        old_hi = old_lo + rng.choice([0.0, rng.uniform(0.01, 80.0)])
        lo = old_lo - rng.choice([0.0, rng.uniform(0.0, 40.0)])
        hi = max(old_hi + rng.uniform(0.0, 40.0), lo + 1e-3)
        expected = set(cells)
        widen_cells(expected, layout.g, old_lo, old_hi, lo, hi)
        got = layout.widen(mask, old_lo, old_hi, lo, hi)
        assert got == sum(1 << layout.index(key) for key in expected)


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="rising"):
        OnlineParams(resolutions=(32, 16))
    with pytest.raises(ValueError):
        OnlineParams(threshold=0.0)
