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

Every value is checked against `PARAMETER_BOUNDS` first (finite numbers, durations of
at most 30 days, sensible ranges per parameter): the registry refuses a bad value where
it enters, and a bad value an older database still holds is skipped here, logged, and
the rule's own value applies. Nothing here raises on a stored value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel, BeforeValidator, TypeAdapter, ValidationError

from rules.conditions import Logic, compile_condition
from rules.directory import Directory
from rules.schema import Condition, Rule, parse_duration_ms

_CONDITION: TypeAdapter[Condition] = TypeAdapter(Condition)


class OverrideError(ValueError):
    """An override that names nothing in its rule, or makes its condition invalid."""


MAX_OVERRIDE_DURATION_S: Final = 30 * 86_400
"""The longest duration a profile may set (30 days)."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """The values a parameter may take (inclusive unless `low_open`)."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False

    def problem(self, value: object) -> str | None:
        """Why `value` is refused, or None."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"{value!r} is not a number"
        if not math.isfinite(value):
            return f"{value!r} is not a finite number"
        if self.integer and value != int(value):
            return f"{value!r} is not a whole number"
        below = value <= self.low if self.low_open else value < self.low
        if below or value > self.high:
            low = "above" if self.low_open else "at least"
            return f"{value!r} is out of range ({low} {self.low:.15g}, at most {self.high:.15g})"
        return None


_DURATION_BOUNDS: Final = Bounds(0, MAX_OVERRIDE_DURATION_S)
_LIMIT_BOUNDS: Final = Bounds(-1e6, 1e6)
PARAMETER_BOUNDS: Final[Mapping[str, Bounds]] = {
    "above": _LIMIT_BOUNDS,
    "below": _LIMIT_BOUNDS,
    "clear_at": _LIMIT_BOUNDS,
    "at_least": Bounds(0, 100_000, integer=True),
    "at_most": Bounds(0, 100_000, integer=True),
    "max_missing": Bounds(0, 1_000_000, integer=True),
    "max_speed_m_s": Bounds(0, 1_000, low_open=True),
    "min_distance_m": Bounds(0, 20_000_000),
    "for": _DURATION_BOUNDS,
    "within": _DURATION_BOUNDS,
    "after": _DURATION_BOUNDS,
    "clear_for": _DURATION_BOUNDS,
    "confirm_after": _DURATION_BOUNDS,
}
"""What each overridable parameter accepts; durations in seconds. (The registry's
profile schema mirrors this table: `registry.schema.THRESHOLD_BOUNDS`.)"""


def value_problem(parameter: str, value: object) -> str | None:
    """Why an override value is refused for `parameter`, or None."""
    bounds = PARAMETER_BOUNDS.get(parameter)
    if bounds is None:
        return f"{parameter!r} is not a parameter an override can change"
    return bounds.problem(value)


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
    except (ArithmeticError, TypeError) as exc:  # belt and braces: never stop the rules
        raise OverrideError(f"{type(exc).__name__}: {exc}") from None
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
    invalid result, a value out of `PARAMETER_BOUNDS`): a bad profile never stops the
    rules, the hub logs what it skipped and the rule's own value applies. Devices with
    the same overrides share one compiled logic."""
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
            if (problem := value_problem(parameter, value)) is not None:
                problems.setdefault(key, problem)
                continue
            per_rule.setdefault(rule_id, {})[parameter] = float(value)
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
                    shared[token] = compile_condition(
                        condition, directory, rule_clears=rule.clear is not None
                    )
                except Exception as exc:  # noqa: BLE001 (a stored value must never stop the rules)
                    shared[token] = None
                    problems.setdefault(f"{rule_id} {sorted(params.items())}", str(exc))
                    continue
            logic = shared[token]
            if logic is not None:
                variants[(rule_id, device.id)] = logic
    return variants, [f"threshold override {k}: {v}" for k, v in problems.items()]
