"""Rule files: YAML, strictly validated, every problem reported with its line.

A rule file is `rules: [...]`; each rule names what it detects (`incident`), where it
applies (`scope`), its `condition` (one of the kinds in `Condition`), how it clears,
its dedup `key`, `cooldown` and `message`. Templates use `{name}` placeholders only
(no attribute or index access: a rule file must not reach into Python objects).
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from events.model import Severity
from sensors.base import Identifier
from sensors.yaml_doc import DocumentError, Problem, compose, error_message, format_loc, locate

Scalar = str | int | float | bool

_UNITS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
MAX_DURATION_S: Final = 366 * 86_400
"""The longest duration a rule may wait (a year): anything longer is a typo, and
unbounded numbers (`1e308`) cannot become milliseconds."""


def parse_duration_ms(value: object) -> int:
    """`90s`, `5m`, `2h`, `1.5d`, or a number of seconds → milliseconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)] / 1000
    else:
        raise ValueError(f"{value!r} is not a duration (write e.g. 30s, 5m, 2h, 1d)")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"a duration of at most {MAX_DURATION_S // 86_400} days")
    return round(seconds * 1000)


DurationMs = Annotated[int, BeforeValidator(parse_duration_ms)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


class Match(_Strict):
    """A test on one reading: all given criteria must hold."""

    channel: Literal["telemetry", "event", "status", "rejected"] | None = None
    kind: Identifier | None = None
    field: str | None = None
    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None
    above: float | None = None
    below: float | None = None

    @model_validator(mode="after")
    def _field_for_comparisons(self) -> Match:
        compares = (self.equals, self.in_, self.not_in, self.above, self.below)
        if any(c is not None for c in compares) and self.field is None:
            raise ValueError("equals/in/not_in/above/below need a `field`")
        if self.channel is None and self.kind is None and self.field is None:
            raise ValueError("a match needs at least one of channel, kind, field")
        return self


def _as_list(value: object) -> object:
    """A single match or a list of them (any of which may hold)."""
    return value if isinstance(value, list) else [value]


AnyOf = Annotated[list[Match], BeforeValidator(_as_list), Field(min_length=1)]


class MatchCondition(_Strict):
    """Instant: any reading that matches raises (a door_forced event, a tamper)."""

    type: Literal["match"]
    when: AnyOf


class ThresholdCondition(_Strict):
    """A numeric field beyond a limit for a while, with hysteresis on the way back."""

    type: Literal["threshold"]
    field: str
    above: float | str | None = None
    below: float | str | None = None
    """A number, or the name of another field of the same reading (`capacity`)."""
    clear_at: float | None = None
    """Hysteresis: the value must come back past this to clear (default: the limit)."""
    for_: DurationMs = Field(default=0, alias="for")
    clear_for: DurationMs = 0

    @model_validator(mode="after")
    def _one_direction(self) -> ThresholdCondition:
        if (self.above is None) == (self.below is None):
            raise ValueError("a threshold needs exactly one of `above` and `below`")
        if self.clear_at is not None:
            if isinstance(self.above, str) or isinstance(self.below, str):
                raise ValueError("clear_at needs a numeric limit, not a field name")
            if self.above is not None and self.clear_at > self.above:
                raise ValueError("clear_at must not be above `above` (hysteresis goes down)")
            if self.below is not None and self.clear_at < self.below:
                raise ValueError("clear_at must not be below `below` (hysteresis goes up)")
        return self


class CountCondition(_Strict):
    """At least N matching readings within a sliding window (per dedup key)."""

    type: Literal["count"]
    when: AnyOf
    at_least: int = Field(ge=1)
    within: DurationMs = Field(gt=0)


class SequenceCondition(_Strict):
    """After a Y, too few (absence) or too many (excess) X within T."""

    type: Literal["sequence"]
    after: AnyOf
    then: AnyOf
    within: DurationMs = Field(gt=0)
    at_least: int | None = Field(default=None, ge=1)
    """Absence: raise when fewer than this many X follow within T."""
    at_most: int | None = Field(default=None, ge=0)
    """Excess: raise as soon as more than this many X follow within T."""
    reset: AnyOf | None = None
    """Readings that end the sequence early (e.g. the door closing)."""

    @model_validator(mode="after")
    def _one_bound(self) -> SequenceCondition:
        if (self.at_least is None) == (self.at_most is None):
            raise ValueError("a sequence needs exactly one of `at_least` and `at_most`")
        return self


class UnprecededCondition(_Strict):
    """An X not preceded by a Y within T (a door opening with no grant before it)."""

    type: Literal["unpreceded"]
    event: AnyOf
    preceded_by: AnyOf
    within: DurationMs = Field(gt=0)


class SilenceCondition(_Strict):
    """No matching reading at all within T (counted from the last one, or from the
    first reading of the key when none has matched yet)."""

    type: Literal["silence"]
    when: AnyOf | None = None
    """What counts as activity; default: any reading."""
    within: DurationMs = Field(gt=0)


class CorrelationCondition(_Strict):
    """At least k distinct devices matching within T (key them by cell)."""

    type: Literal["correlation"]
    when: AnyOf
    at_least: int = Field(ge=2)
    within: DurationMs = Field(gt=0)
    confirm_after: DurationMs | None = None
    """Also raise when one device keeps matching this long without a non-matching
    telemetry reading in between (alarm verification by persistence: a lone detector
    that stays in alarm is a fire too)."""


class TravelCondition(_Strict):
    """The same credential at two devices farther apart than anyone can go in between."""

    type: Literal["travel"]
    when: AnyOf
    by: str = "credential_hash"
    max_speed_m_s: float = Field(gt=0)
    min_distance_m: float = Field(default=0.0, ge=0)
    within: DurationMs = Field(default=3_600_000, gt=0)
    """How long a sighting is remembered."""


class ScheduleCondition(_Strict):
    """Instant: a matching reading outside the device's opening hours (site time zone)."""

    type: Literal["schedule"]
    when: AnyOf
    outside_hours: Literal[True] = True


class OfflineCondition(_Strict):
    """The device said offline (its will) and stayed so for T."""

    type: Literal["offline"]
    after: DurationMs = 0


class LatchCondition(_Strict):
    """Raised by one kind of reading, cleared by another (fault / fault_cleared);
    optionally only when still raised after `for`."""

    type: Literal["latch"]
    raise_when: AnyOf
    clear_when: AnyOf
    for_: DurationMs = Field(default=0, alias="for")


class StuckCondition(_Strict):
    """The same values over and over: at least N readings and T without any change."""

    type: Literal["stuck"]
    fields: list[str] = Field(min_length=1)
    at_least: int = Field(ge=2)
    for_: DurationMs = Field(default=0, alias="for")


class GapCondition(_Strict):
    """Lost messages: the device's `seq` jumps by more than `max_missing` + 1."""

    type: Literal["gap"]
    max_missing: int = Field(default=0, ge=0)


Condition = Annotated[
    MatchCondition
    | ThresholdCondition
    | CountCondition
    | SequenceCondition
    | UnprecededCondition
    | SilenceCondition
    | CorrelationCondition
    | TravelCondition
    | ScheduleCondition
    | OfflineCondition
    | LatchCondition
    | StuckCondition
    | GapCondition,
    Field(discriminator="type"),
]


class Scope(_Strict):
    """Where a rule applies; empty lists mean everywhere."""

    sites: list[Identifier] = Field(default_factory=list)
    cells: list[Identifier] = Field(default_factory=list)
    kinds: list[Identifier] = Field(default_factory=list)
    attributes: dict[str, Scalar | None] = Field(default_factory=dict)
    """Device attributes from the directory that must equal these values."""


class Clear(_Strict):
    """How an open condition clears besides its own logic."""

    when: AnyOf | None = None
    after: DurationMs | None = None
    """Return to normal this long after the last raise (default for instant conditions:
    the cooldown, at least 5 min)."""


_TEMPLATE_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@functools.cache
def template_names(template: str) -> tuple[str, ...]:
    """The `{name}` placeholders of a template; anything fancier is an error. Cached:
    the engine renders each rule's key for every reading."""
    names: list[str] = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not _TEMPLATE_NAME.match(name) or spec or conversion:
            raise ValueError(f"placeholder {{{name}}} must be a plain name like {{device}}")
        names.append(name)
    return tuple(names)


class Rule(_Strict):
    id: Identifier
    title: str = Field(min_length=1, max_length=200)
    severity: Severity
    incident: Identifier | None = None
    """The incident kind this rule detects (default: its id); scoring matches on it."""
    description: str = ""
    enabled: bool = True
    scope: Scope = Field(default_factory=Scope)
    condition: Condition
    clear: Clear | None = None
    key: str = "{device}"
    """Dedup key: one open event per rule and key."""
    cooldown: DurationMs = 0
    """After a raise, further raises of the same key within this are repeats."""
    message: str = Field(min_length=1, max_length=500)

    @field_validator("key", "message")
    @classmethod
    def _plain_templates(cls, value: str) -> str:
        template_names(value)
        return value

    @property
    def incident_kind(self) -> str:
        return self.incident or self.id


class _DuplicateId(ValueError):
    """A rule id used twice; `index` lets `parse_rules` report the second id's line."""

    def __init__(self, rule_id: str, index: int) -> None:
        super().__init__(f"rule id {rule_id!r} is used twice")
        self.index = index


def rule_wait_ms(rule: Rule) -> int:
    """How long the rule itself waits before it can raise: its window, `for` or
    offline delay (0 for conditions that raise on the reading itself)."""
    c = rule.condition
    if isinstance(c, SequenceCondition | CountCondition | CorrelationCondition | SilenceCondition):
        return c.within
    if isinstance(c, ThresholdCondition | LatchCondition | StuckCondition):
        return c.for_
    if isinstance(c, OfflineCondition):
        return c.after
    return 0


class RuleFile(_Strict):
    rules: list[Rule]

    @model_validator(mode="after")
    def _unique_ids(self) -> RuleFile:
        seen: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.id in seen:
                raise _DuplicateId(rule.id, index)
            seen.add(rule.id)
        return self


class RuleError(DocumentError):
    """A rule file that cannot be used; lists every problem with its line."""


def parse_rules(text: str, source: str = "<rules>") -> list[Rule]:
    """Validate one rule file's text."""
    root, data, problems = compose(text)
    if root is None and problems:
        raise RuleError(source, problems)
    if not isinstance(data, dict):
        raise RuleError(
            source, [*problems, Problem("", 1, "a rule file is a mapping: rules: [...]")]
        )
    try:
        parsed = RuleFile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = error["loc"]
            if isinstance(cause := error.get("ctx", {}).get("error"), _DuplicateId):
                loc = ("rules", cause.index, "id")  # a model-level error has no loc of its own
            clean, line = locate(root, loc)
            problems.append(Problem(format_loc(clean), line, error_message(error)))
        raise RuleError(source, problems) from None
    if problems:
        raise RuleError(source, problems)
    return parsed.rules


DEFAULT_PACK: Final = Path(__file__).parent / "packs" / "default.yaml"


def load_rules(paths: Sequence[str | Path] = ()) -> list[Rule]:
    """Rules from files (default: the built-in pack); ids must be unique across files."""
    rules: list[Rule] = []
    problems: list[str] = []
    for path in paths or [DEFAULT_PACK]:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RuleError(str(path), [Problem("", None, f"cannot read: {exc}")]) from exc
        rules += parse_rules(text, str(path))
    ids: dict[str, int] = {}
    for rule in rules:
        ids[rule.id] = ids.get(rule.id, 0) + 1
    problems = [f"rule id {rid!r} defined {n} times" for rid, n in ids.items() if n > 1]
    if problems:
        raise RuleError(", ".join(map(str, paths)), [Problem("", None, p) for p in problems])
    return [r for r in rules if r.enabled]


def dump_json_schema() -> dict[str, Any]:
    """JSON Schema of rule files (for editors)."""
    return RuleFile.model_json_schema(by_alias=True)
