"""Per-device threshold overrides: a rule's numbers, changed for the devices of a profile.

The registry's device profiles carry `{"<rule id>.<parameter>": value}`; the hub puts a
device's overrides into its `DeviceInfo.thresholds`. `<parameter>` is a key of the rule's
condition as written in rule files (`above`, `below`, `clear_at`, `at_least`, `at_most`,
`max_missing`, `max_speed_m_s`, `min_distance_m`, and the durations `for`, `within`,
`after`, `clear_for`, `confirm_after` in seconds). It replaces every numeric value under
that key anywhere in the condition, including inside its matches: `low_battery.below: 25`
raises that rule's battery alarm below 25 % instead of 15 %. Only values the rule
sets can be changed (an override never adds a test the rule does not make), and the
result is validated like a rule file, so an override cannot build a condition a rule
file could not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, BeforeValidator, TypeAdapter, ValidationError

from rules.conditions import Logic, compile_condition
from rules.directory import Directory
from rules.schema import Condition, Rule, parse_duration_ms

_CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)


class OverrideError(ValueError):
    """An override that names nothing in its rule, or makes its condition invalid."""


def split_key(key: str) -> tuple[str, str]:
    """`low_battery.below` -> (`low_battery`, `below`)."""
    rule_id, sep, parameter = key.rpartition(".")
    if not sep or not rule_id or not parameter:
        raise OverrideError(f"{key!r} is not '<rule id>.<parameter>'")
    return rule_id, parameter


def _is_duration(model: type[BaseModel], name: str) -> bool:
    info = model.model_fields[name]
    return any(
        isinstance(m, BeforeValidator) and m.func is parse_duration_ms for m in info.metadata
    )


def _as_input(model: BaseModel, params: Mapping[str, float], hits: set[str]) -> dict[str, Any]:
    """The model as rule-file input (aliases, durations in seconds), with overrides."""
    cls = type(model)
    out: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        key = info.alias or name.rstrip("_")
        value = getattr(model, name)
        duration = _is_duration(cls, name)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        field_limit = isinstance(value, str) and key in ("above", "below")
        if key in params and (number or field_limit):
            hits.add(key)
            value = params[key]
        elif duration and value is not None:
            value = value / 1000
        if isinstance(value, BaseModel):
            value = _as_input(value, params, hits)
        elif isinstance(value, list):
            value = [_as_input(v, params, hits) if isinstance(v, BaseModel) else v for v in value]
        if value is not None:
            out[key] = value
    return out


def override_condition(condition: Condition, params: Mapping[str, float]) -> Condition:
    """The condition with each named parameter replaced; raises OverrideError when a
    parameter names nothing in the condition or the result is not a valid condition."""
    hits: set[str] = set()
    data = _as_input(condition, params, hits)
    missing = sorted(set(params) - hits)
    if missing:
        raise OverrideError(f"the {condition.type} condition sets no {', '.join(missing)}")
    try:
        return _CONDITION.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        raise OverrideError(problems) from None


def compile_overrides(
    rules: Sequence[Rule], directory: Directory
) -> tuple[dict[tuple[str, str], Logic], list[str]]:
    """The logic of every (rule id, device id) whose device's profile overrides that
    rule, and the problems of overrides left out (unknown rule, nothing to change,
    invalid result): a bad profile never stops the rules, the hub logs what it skipped.
    Devices with the same overrides share one compiled logic."""
    by_id = {rule.id: rule for rule in rules}
    variants: dict[tuple[str, str], Logic] = {}
    problems: dict[str, str] = {}
    shared: dict[tuple[str, frozenset[tuple[str, float]]], Logic | None] = {}
    for device in directory.devices.values():
        per_rule: dict[str, dict[str, float]] = {}
        for key, value in device.thresholds.items():
            try:
                rule_id, parameter = split_key(key)
            except OverrideError as exc:
                problems.setdefault(key, str(exc))
                continue
            per_rule.setdefault(rule_id, {})[parameter] = value
        for rule_id, params in per_rule.items():
            rule = by_id.get(rule_id)
            if rule is None:
                for parameter in params:
                    problems.setdefault(f"{rule_id}.{parameter}", f"no rule {rule_id!r} is running")
                continue
            token = (rule_id, frozenset(params.items()))
            if token not in shared:
                try:
                    condition = override_condition(rule.condition, params)
                except OverrideError as exc:
                    shared[token] = None
                    problems.setdefault(f"{rule_id} {sorted(params.items())}", str(exc))
                    continue
                shared[token] = compile_condition(
                    condition, directory, rule_clears=rule.clear is not None
                )
            logic = shared[token]
            if logic is not None:
                variants[(rule_id, device.id)] = logic
    return variants, [f"threshold override {k}: {v}" for k, v in problems.items()]
