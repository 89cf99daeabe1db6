"""Per-profile threshold overrides (`DeviceInfo.thresholds`) through `Engine`, on
hand-written reading sequences: the same readings raise for a device whose profile
changes a rule's number and stay quiet for its neighbour on the defaults."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from rules.directory import DeviceInfo, Directory
from rules.engine import Engine, EngineState
from rules.overrides import OverrideError, override_condition, split_key
from rules.schema import ThresholdCondition, load_rules, parse_rules
from sensors.base import FieldValue, Reading

T0 = 1_741_000_000_000


def reading(kind: str, device: str, t: float, fields: Mapping[str, FieldValue]) -> Reading:
    ts_ns = (T0 + round(t * 1000)) * 1_000_000
    return Reading(kind, "s1", kind, device, "telemetry", "c1", ts_ns, True, None, {}, dict(fields))


def info(device: str, kind: str, thresholds: Mapping[str, float] | None = None) -> DeviceInfo:
    return DeviceInfo(device, kind, "s1", "c1", 0.0, 0.0, thresholds=dict(thresholds or {}))


def run(engine: Engine, readings: list[Reading]) -> list[tuple[str, str, bool, float]]:
    """(rule, device, raised, seconds after T0) of every detection, ticking with time."""
    state = EngineState()
    out = []
    for r in readings:
        for d in engine.evaluate(r, state, r.ts_ns // 1_000_000):
            out.append((d.rule_id, d.device or "", d.raised, (d.at_ms - T0) / 1000))
    return out


def test_profile_raising_the_low_battery_limit_raises_where_the_default_does_not() -> None:
    directory = Directory(
        devices={
            "sm-1": info("sm-1", "smoke", {"low_battery.below": 25}),
            "sm-2": info("sm-2", "smoke"),
        }
    )
    engine = Engine([r for r in load_rules() if r.id == "low_battery"], directory)
    assert engine.override_problems == []
    seq = [
        reading("smoke", dev, t, {"battery": level})
        for t, level in ((0, 40.0), (60, 20.0), (120, 18.0), (180, 35.0))
        for dev in ("sm-1", "sm-2")
    ]
    # 20 % is below the profile's 25 (raise) but not below the pack's 15 (sm-2 quiet);
    # clearing still uses the pack's `above: 30`, which the profile left alone.
    assert run(engine, seq) == [
        ("low_battery", "sm-1", True, 60.0),
        ("low_battery", "sm-1", False, 180.0),
    ]
    # Without the directory's overrides the same readings raise nothing at all.
    assert run(Engine([engine.rules[0].rule]), seq) == []


THRESHOLD = """
rules:
  - id: smoke_high
    title: Smoke high
    severity: high
    condition: {type: threshold, field: obscuration, above: 0.5, clear_at: 0.2, for: 60s}
    message: "{device} {value}"
"""


def test_threshold_limit_and_duration_overrides_with_timers_fired_by_tick() -> None:
    directory = Directory(
        devices={
            "k1": info("k1", "smoke", {"smoke_high.above": 0.3, "smoke_high.for": 10}),
            "k2": info("k2", "smoke"),
        }
    )
    engine = Engine(parse_rules(THRESHOLD), directory)
    state = EngineState()
    for dev in ("k1", "k2"):
        assert engine.evaluate(reading("smoke", dev, 0, {"obscuration": 0.4}), state, T0) == []
    # k1: 0.4 is above its 0.3 and held for its 10 s: the timer fires at 10 s.
    fired = engine.tick(state, T0 + 15_000)
    assert [(d.device, d.raised, d.at_ms - T0) for d in fired] == [("k1", True, 10_000)]
    assert fired[0].values == {"value": 0.4}
    # k2 on the defaults: 0.4 is not above 0.5, nothing is pending even after 60 s.
    assert engine.tick(state, T0 + 120_000) == []


def test_a_field_named_limit_can_be_replaced_by_a_number() -> None:
    rules = [r for r in load_rules() if r.id == "lot_over_capacity"]
    directory = Directory(
        devices={"lot-1": info("lot-1", "parking", {"lot_over_capacity.above": 5})}
    )
    seq = [reading("parking", "lot-1", 0, {"occupancy": 8, "capacity": 10})]
    assert run(Engine(rules, directory), seq) == [("lot_over_capacity", "lot-1", True, 0.0)]
    assert run(Engine(rules), seq) == []


def test_bad_overrides_are_reported_and_left_out_not_fatal() -> None:
    directory = Directory(
        devices={
            "k1": info("k1", "smoke", {"smoke_high.at_least": 3}),  # not in a threshold
            "k2": info("k2", "smoke", {"smoke_high.above": 0.1}),  # below clear_at 0.2
            "k3": info("k3", "smoke", {"no_such_rule.above": 1}),
            "k4": info("k4", "smoke", {"nodot": 1}),
        }
    )
    engine = Engine(parse_rules(THRESHOLD), directory)
    problems = "\n".join(engine.override_problems)
    assert "sets no at_least" in problems
    assert "clear_at must not be above" in problems
    assert "no rule 'no_such_rule'" in problems
    assert "'nodot' is not '<rule id>.<parameter>'" in problems
    assert len(engine.override_problems) == 4
    # Every device runs on the rule's own numbers: 0.4 raises nobody after 60 s.
    state = EngineState()
    for dev in ("k1", "k2", "k3", "k4"):
        engine.evaluate(reading("smoke", dev, 0, {"obscuration": 0.4}), state, T0)
    assert engine.tick(state, T0 + 120_000) == []


def test_override_condition_replaces_inside_matches_and_keeps_durations() -> None:
    (rule,) = [r for r in load_rules() if r.id == "low_battery"]
    changed = override_condition(rule.condition, {"below": 22.5, "above": 40})
    text = changed.model_dump_json(by_alias=True, exclude_none=True)
    assert '"below":22.5' in text and '"above":40.0' in text
    threshold = parse_rules(THRESHOLD)[0].condition
    assert isinstance(threshold, ThresholdCondition)
    same = override_condition(threshold, {})
    assert same == threshold  # durations survive the round trip in ms (60 s, not 60,000 s)
    assert isinstance(same, ThresholdCondition) and same.for_ == 60_000
    with pytest.raises(OverrideError, match="sets no within"):
        override_condition(threshold, {"within": 5})
    assert split_key("a.b.c") == ("a.b", "c")
