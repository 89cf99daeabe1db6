"""Rule files: the default pack loads, and every mistake is reported at its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from events.model import Severity
from rules.conditions import Logic
from rules.engine import Engine
from rules.schema import (
    DEFAULT_PACK,
    RuleError,
    ThresholdCondition,
    dump_json_schema,
    load_rules,
    parse_duration_ms,
    parse_rules,
    template_names,
)
from sensors.yaml_doc import Problem

# One valid rule; the tests below break one thing in it at a known line.
VALID = """\
rules:
  - id: hot
    title: Too hot
    severity: high
    scope: {kinds: [smoke]}
    condition:
      type: threshold
      field: temperature
      above: 60
      for: 30s
    message: "{device} at {value}"
"""


def problems(text: str) -> list[Problem]:
    with pytest.raises(RuleError) as info:
        parse_rules(text, "test.yaml")
    assert info.value.source == "test.yaml"
    return info.value.problems


def lines(text: str) -> list[tuple[str, int | None]]:
    return [(p.path, p.line) for p in problems(text)]


# --- the default pack ---------------------------------------------------------------


def test_default_pack_loads_and_compiles() -> None:
    rules = load_rules()
    assert len(rules) == len(parse_rules(DEFAULT_PACK.read_text(encoding="utf-8")))
    ids = [r.id for r in rules]
    assert len(ids) == len(set(ids))
    assert {"door_forced", "confirmed_fire", "device_offline", "cloned_card"} <= set(ids)
    kinds = {r.condition.type for r in rules}
    # Every condition kind but `unpreceded` (tailgating is a sequence in the pack).
    assert kinds == {
        "match", "threshold", "count", "sequence", "silence", "correlation",
        "travel", "schedule", "offline", "latch", "stuck", "gap",
    }  # fmt: skip
    fire = next(r for r in rules if r.id == "confirmed_fire")
    assert fire.severity is Severity.CRITICAL
    assert fire.incident_kind == "fire"
    assert fire.key == "{cell}"
    Engine(rules)  # every condition compiles


def test_valid_rule_parses_with_aliases_and_defaults() -> None:
    (rule,) = parse_rules(VALID)
    assert isinstance(rule.condition, ThresholdCondition)
    assert rule.condition.for_ == 30_000
    assert rule.condition.above == 60
    assert rule.key == "{device}"
    assert rule.cooldown == 0
    assert rule.incident_kind == "hot"
    assert rule.enabled


def test_disabled_rules_are_dropped_by_load(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(VALID.replace("    scope:", "    enabled: false\n    scope:"))
    assert load_rules([path]) == []


def test_same_id_in_two_files_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(VALID)
    b.write_text(VALID)
    with pytest.raises(RuleError, match="'hot' defined 2 times"):
        load_rules([a, b])


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="cannot read"):
        load_rules([tmp_path / "missing.yaml"])


def test_json_schema_uses_aliases() -> None:
    text = str(dump_json_schema())
    assert "'for'" in text
    assert "'in'" in text


# --- line-numbered errors -------------------------------------------------------------


def test_wrong_severity() -> None:
    found = problems(VALID.replace("severity: high", "severity: urgent"))
    assert [(p.path, p.line) for p in found] == [("rules[0].severity", 4)]
    assert "'critical', 'high', 'medium' or 'low'" in found[0].message


def test_unknown_key() -> None:
    text = VALID.replace("    message:", "    colour: red\n    message:")
    found = problems(text)
    assert [(p.path, p.line, p.message) for p in found] == [
        ("rules[0].colour", 11, "unknown key 'colour'")
    ]


def test_unknown_key_inside_condition() -> None:
    text = VALID.replace("      for: 30s", "      for: 30s\n      hysteresis: 2")
    assert lines(text) == [("rules[0].condition.hysteresis", 11)]


def test_missing_condition_field() -> None:
    found = problems(VALID.replace("      field: temperature\n", ""))
    # A missing key is reported at the mapping that lacks it (the condition, line 7).
    assert [(p.path, p.line, p.message) for p in found] == [
        ("rules[0].condition.field", 7, "missing key 'field'")
    ]


def test_missing_rule_keys_point_at_the_rule() -> None:
    text = "# a comment\n\nrules:\n  - id: t\n    severity: low\n"
    assert lines(text) == [
        ("rules[0].title", 4),
        ("rules[0].condition", 4),
        ("rules[0].message", 4),
    ]


def test_bad_duration() -> None:
    found = problems(VALID.replace("for: 30s", "for: 5 minutes"))
    assert [(p.path, p.line) for p in found] == [("rules[0].condition.for", 10)]
    assert "'5 minutes' is not a duration" in found[0].message


def test_bad_condition_type() -> None:
    found = problems(VALID.replace("type: threshold", "type: thresh"))
    assert [p.line for p in found] == [7]
    assert "thresh" in found[0].message


def test_condition_rule_violation_is_located() -> None:
    text = VALID.replace("      above: 60\n", "      above: 60\n      below: 10\n")
    found = problems(text)
    assert [(p.path, p.line) for p in found] == [("rules[0].condition", 7)]
    assert "exactly one of `above` and `below`" in found[0].message


@pytest.mark.parametrize("template", ["{x.y}", "{x[0]}", "{x!r}", "{x:>10}", "{0}", "{}"])
def test_template_with_access_or_format_is_refused(template: str) -> None:
    text = VALID.replace('"{device} at {value}"', f'"{template}"')
    found = problems(text)
    assert [(p.path, p.line) for p in found] == [("rules[0].message", 11)]
    assert "must be a plain name" in found[0].message


def test_key_template_is_checked_too() -> None:
    text = VALID.replace("    message:", '    key: "{device.__class__}"\n    message:')
    assert lines(text) == [("rules[0].key", 11)]


def test_template_names() -> None:
    assert template_names("{device} in {cell}: {{literal}} {value}") == ("device", "cell", "value")
    with pytest.raises(ValueError, match="plain name"):
        template_names("{a.b}")


def test_duplicate_rule_ids_point_at_the_second_id() -> None:
    second = VALID.removeprefix("rules:\n").replace("title: Too hot", "title: Again")
    text = VALID + second
    found = problems(text)
    assert [(p.path, p.line, p.message) for p in found] == [
        ("rules[1].id", 12, "rule id 'hot' is used twice")
    ]


def test_duplicate_yaml_keys() -> None:
    text = VALID.replace("    severity: high\n", "    severity: high\n    severity: low\n")
    text = text.replace("      for: 30s\n", "      for: 30s\n      field: humidity\n")
    found = problems(text)
    assert [(p.path, p.line, p.message) for p in found] == [
        ("rules[0].severity", 5, "duplicate key"),
        ("rules[0].condition.field", 12, "duplicate key"),
    ]


def test_duplicate_key_and_validation_error_are_both_reported() -> None:
    text = VALID.replace("    severity: high\n", "    severity: high\n    severity: nope\n")
    assert lines(text) == [("rules[0].severity", 5), ("rules[0].severity", 5)]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "", "42\n"])
def test_not_a_mapping(text: str) -> None:
    found = problems(text)
    assert [(p.path, p.line, p.message) for p in found] == [
        ("", 1, "a rule file is a mapping: rules: [...]")
    ]


def test_invalid_yaml() -> None:
    text = "rules:\n  - id: t\n    title: [unclosed\n    severity: low\n"
    found = problems(text)
    assert len(found) == 1
    assert found[0].line == 4
    assert found[0].message.startswith("not valid YAML")


def test_invalid_yaml_tab_indent() -> None:
    found = problems("rules:\n  - id: t\n\ttitle: x\n")
    assert [p.line for p in found] == [3]


def test_several_problems_all_reported() -> None:
    text = VALID.replace("severity: high", "severity: urgent").replace("for: 30s", "for: soon")
    assert lines(text) == [("rules[0].severity", 4), ("rules[0].condition.for", 10)]


def test_error_message_lists_lines() -> None:
    with pytest.raises(RuleError) as info:
        parse_rules(VALID.replace("severity: high", "severity: urgent"), "pack.yaml")
    text = str(info.value)
    assert text.startswith("pack.yaml: 1 problem(s)")
    assert "line 4: rules[0].severity:" in text


# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30s", 30_000),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("1.5d", 129_600_000),
        ("250ms", 250),
        (" 10 s ", 10_000),
        (90, 90_000),
        (1.5, 1_500),
        (0, 0),
    ],
)
def test_durations(text: str | int | float, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("bad", ["5 minutes", "5", "m", "-5s", "1e3s", True, None, -1, [5]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(bad)


def test_durations_in_a_file() -> None:
    text = VALID.replace("for: 30s", "for: 90").replace(
        "    message:", "    cooldown: 1.5d\n    message:"
    )
    (rule,) = parse_rules(text)
    assert isinstance(rule.condition, ThresholdCondition)
    assert rule.condition.for_ == 90_000
    assert rule.cooldown == 129_600_000


def test_instant_kinds_are_the_ones_without_state_to_clear() -> None:
    instant = {cls.__name__ for cls in Logic.__subclasses__() if cls.instant}
    assert instant == {"MatchLogic", "ScheduleLogic", "TravelLogic", "UnprecededLogic", "GapLogic"}
