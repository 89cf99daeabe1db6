"""Grafana's InfluxQL macro and variable expansion, as its InfluxDB plugin does it.

`$timeFilter` becomes `time >= <from>ms and time <= <to>ms`; `$__interval` the panel's
automatic interval; `$var` / `${var}` a variable's value, formatted for regex when it
stands in `/.../` (Grafana's InfluxDB plugin escapes regex characters and joins several
values as `(a|b)`); All becomes the variable's custom all value. `$__timeFilter` (the SQL
datasources' macro) is expanded the same way, so a query using it is still tested.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

_INTERVALS_MS: Final = (
    (1_000, "1s"),
    (5_000, "5s"),
    (10_000, "10s"),
    (30_000, "30s"),
    (60_000, "1m"),
    (300_000, "5m"),
    (600_000, "10m"),
    (1_800_000, "30m"),
    (3_600_000, "1h"),
)
ALL: Final = "$__all"


@dataclass(frozen=True)
class TimeRange:
    from_ms: int
    to_ms: int

    def interval(self, max_data_points: int = 1000) -> str:
        """The smallest round interval giving at most `max_data_points` buckets."""
        wanted = (self.to_ms - self.from_ms) / max_data_points
        for ms, text in _INTERVALS_MS:
            if ms >= wanted:
                return text
        return _INTERVALS_MS[-1][1]


_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_REGEX_SPECIALS = re.compile(r"([\\/^$*+?.()|\[\]{}])")


def _regex_escape(value: str) -> str:
    return _REGEX_SPECIALS.sub(r"\\\1", value)


def _in_regex(text: str, position: int) -> bool:
    """Is `position` inside a `/.../` regex literal (an odd number of unescaped slashes
    before it on the same statement)?"""
    return len(re.findall(r"(?<!\\)/", text[:position])) % 2 == 1


def expand(
    query: str,
    time_range: TimeRange,
    variables: Mapping[str, Sequence[str]],
    all_values: Mapping[str, str],
) -> str:
    """The query as Grafana sends it to InfluxDB."""
    time_filter = f"time >= {time_range.from_ms}ms and time <= {time_range.to_ms}ms"
    text = query.replace("$__timeFilter", time_filter).replace("$timeFilter", time_filter)
    text = text.replace("$__interval", time_range.interval())

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"query uses ${name}, which the dashboard does not define")
        values = list(variables[name])
        if values == [ALL]:
            return all_values[name]
        if _in_regex(text, match.start()):
            escaped = [_regex_escape(v) for v in values]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        return ",".join(values)

    expanded = _VAR.sub(substitute, text)
    if re.search(r"\$[{\w]", expanded):
        raise ValueError(f"unexpanded macro left in {expanded!r}")
    return expanded


def apply_regex(values: Sequence[str], regex: str | None) -> list[str]:
    """A query variable's `regex` option: keep the values it matches (Grafana syntax
    `/pattern/`)."""
    if not regex:
        return list(values)
    pattern = re.compile(regex.strip("/"))
    return [v for v in values if pattern.search(v)]
