"""Hostile threshold overrides never stop the rules: bounded durations, finite numbers,
per-parameter ranges; a bad stored value is skipped (reported) and the rule's own value
applies."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest

from rules.directory import DeviceInfo, Directory
from rules.engine import Engine
from rules.overrides import PARAMETER_BOUNDS, compile_overrides, value_problem
from rules.schema import MAX_DURATION_S, load_rules, parse_duration_ms, parse_rules


def device(ident: str, thresholds: Mapping[str, object]) -> DeviceInfo:
    return DeviceInfo(ident, "smoke", "s1", "c1", 0.0, 0.0, thresholds=dict(thresholds))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1e308, math.inf, -math.inf, math.nan, MAX_DURATION_S + 1, -1])
def test_a_duration_must_be_finite_non_negative_and_bounded(value: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_ms(value)


def test_durations_within_bounds_still_parse() -> None:
    assert parse_duration_ms("36h") == 36 * 3_600_000
    assert parse_duration_ms(MAX_DURATION_S) == MAX_DURATION_S * 1000


def test_a_rule_file_with_an_infinite_limit_is_refused() -> None:
    text = """
rules:
  - id: hot
    title: Hot
    severity: high
    condition: {type: threshold, field: temperature, above: .inf}
    message: hot
"""
    with pytest.raises(ValueError, match="finite"):
        parse_rules(text)


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("device_offline.after", 1e308, "out of range"),
        ("device_offline.after", 31 * 86_400, "out of range"),
        ("device_offline.after", -5, "out of range"),
        ("low_battery.below", math.nan, "finite"),
        ("low_battery.below", math.inf, "finite"),
        ("low_battery.below", "25", "not a number"),
        ("low_battery.below", [25], "not a number"),
        ("low_battery.below", True, "not a number"),
        ("low_battery.below", 1e7, "out of range"),
        ("repeated_denials.at_least", 2.5, "whole number"),
        ("repeated_denials.at_least", 10**9, "out of range"),
        ("low_battery.colour", 3, "not a parameter"),
    ],
)
def test_a_stored_bad_value_is_skipped_reported_and_never_raises(
    key: str, value: object, why: str
) -> None:
    rules = load_rules()
    directory = Directory(devices={"sm-1": device("sm-1", {key: value})})
    variants, problems = compile_overrides(rules, directory)  # must not raise
    assert variants == {}
    assert len(problems) == 1 and key in problems[0] and why in problems[0]
    engine = Engine(rules, directory)  # the hub's path: the engine is built, rules run
    assert engine.override_problems == problems


def test_only_the_bad_parameter_is_dropped() -> None:
    rules = load_rules()
    thresholds = {"device_offline.after": 1e308, "low_battery.below": 25}
    variants, problems = compile_overrides(
        rules, Directory(devices={"sm-1": device("sm-1", thresholds)})
    )
    assert set(variants) == {("low_battery", "sm-1")}  # device_offline keeps its own 60 s
    assert [p for p in problems if "device_offline.after" in p]


def test_every_listed_parameter_has_bounds_and_in_range_values_pass() -> None:
    for parameter, bounds in PARAMETER_BOUNDS.items():
        assert value_problem(parameter, bounds.high) is None
        assert value_problem(parameter, bounds.high * 2 + 1) is not None
