"""The logic of each condition kind, on one slot's state (one rule, one dedup key).

Each `Logic` sees readings (`observe`) and timers (`fire`) and answers with a `Change`
(raise or clear) or nothing. Slot state is a plain JSON-able dict so the engine can
snapshot it; times are epoch milliseconds on the reading's own clock.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rules.directory import DeviceInfo, Directory, distance_m
from rules.schema import (
    Condition,
    CorrelationCondition,
    CountCondition,
    GapCondition,
    LatchCondition,
    Match,
    MatchCondition,
    OfflineCondition,
    ScheduleCondition,
    SequenceCondition,
    SilenceCondition,
    StuckCondition,
    ThresholdCondition,
    TravelCondition,
    UnprecededCondition,
)
from sensors.base import FieldValue, Reading

State = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Obs:
    """One reading as rules see it: its time in ms and how to look up a name."""

    reading: Reading
    ts_ms: int
    device: DeviceInfo | None

    def get(self, name: str) -> FieldValue | None:
        r = self.reading
        value = r.fields.get(name)
        if value is not None:
            return value
        tag = r.tags.get(name)
        if tag is not None:
            return tag
        if name in ("site", "kind", "device", "channel"):
            return str(getattr(r, name))
        if name == "cell":
            return r.cell or (self.device.cell if self.device else None)
        if self.device is not None:
            attr = self.device.attributes.get(name)
            if attr is not None:
                return attr
        return None


def matches(obs: Obs, match: Match) -> bool:
    r = obs.reading
    if match.channel is not None and r.channel != match.channel:
        return False
    if match.kind is not None and r.kind != match.kind:
        return False
    if match.field is None:
        return True
    value = obs.get(match.field)
    if value is None:
        return False
    if match.equals is not None and value != match.equals:
        return False
    if match.in_ is not None and value not in match.in_:
        return False
    if match.not_in is not None and value in match.not_in:
        return False
    if match.above is not None or match.below is not None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if match.above is not None and not value > match.above:
            return False
        if match.below is not None and not value < match.below:
            return False
    return True


Matcher = Callable[[Obs], bool]
"""Whether a reading matches any of a condition's options (None: anything), compiled
once per condition because it runs per reading."""


def _compile_match(m: Match) -> Matcher:
    """One match as a closure: the common shapes (channel/kind, and a field equal to a
    value) skip the criteria they do not use; anything else is `matches` itself."""
    channel, kind, name, equals = m.channel, m.kind, m.field, m.equals
    above, below = m.above, m.below
    if m.in_ is not None or m.not_in is not None:
        return lambda obs: matches(obs, m)
    if above is not None or below is not None:
        if name is None or equals is not None:
            return lambda obs: matches(obs, m)

        def number_match(obs: Obs) -> bool:
            r = obs.reading
            if (channel is not None and r.channel != channel) or (
                kind is not None and r.kind != kind
            ):
                return False
            value = r.fields.get(name)
            if value is None:
                value = obs.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            return (above is None or value > above) and (below is None or value < below)

        return number_match
    if name is None:
        return lambda obs: (
            (channel is None or obs.reading.channel == channel)
            and (kind is None or obs.reading.kind == kind)
        )

    def field_match(obs: Obs) -> bool:
        r = obs.reading
        if (channel is not None and r.channel != channel) or (kind is not None and r.kind != kind):
            return False
        value = r.fields.get(name)
        if value is None:
            value = obs.get(name)
            if value is None:
                return False
        return equals is None or value == equals

    return field_match


def compile_any(options: Sequence[Match] | None) -> Matcher:
    """A `Matcher` for these options: true when any matches (None means anything)."""
    if options is None:
        return lambda obs: True
    parts = [_compile_match(m) for m in options]
    if len(parts) == 1:
        return parts[0]

    def any_of(obs: Obs) -> bool:
        for part in parts:  # noqa: SIM110 (per reading: a loop beats any(<genexpr>))
            if part(obs):
                return True
        return False

    return any_of


EVENT_FIELD = "event"
"""The name whose value (the event type) the engine indexes rules by."""


@dataclass(frozen=True, slots=True)
class Trigger:
    """A kind of reading a condition may notice; None: any. The engine indexes rules
    by these so a reading visits only rules that can care about it."""

    channel: str | None = None
    kind: str | None = None
    event: FieldValue | None = None
    """The value of the `event` name (`Obs.get`) the reading must have."""


Triggers = list[Trigger] | None
"""Every reading a condition notices fits one of them; None: any reading may matter."""


def triggers_of(options: Sequence[Match] | None) -> Triggers:
    """The triggers of "any of these matches" (a superset: only a pre-filter)."""
    if options is None:
        return None
    out: list[Trigger] = []
    for m in options:
        events: list[FieldValue | None] = [None]
        if m.field == EVENT_FIELD and m.equals is not None:
            events = [m.equals]
        elif m.field == EVENT_FIELD and m.in_ is not None:
            events = list(m.in_)
        out += [Trigger(m.channel, m.kind, event) for event in events]
    return out


def union(*parts: Triggers) -> Triggers:
    """Triggers of "any of these": None (anything) wins."""
    out: list[Trigger] = []
    for part in parts:
        if part is None:
            return None
        out += part
    return out


@dataclass(frozen=True, slots=True)
class Change:
    raised: bool
    at_ms: int
    values: Mapping[str, FieldValue] = field(default_factory=dict)
    devices: tuple[str, ...] = ()


def _number(value: FieldValue | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class Logic(ABC):
    """A condition kind's behaviour; `due` is the next timer of a slot, if any."""

    instant = False
    """Raises on single readings and never clears by itself (the rule's `clear` does)."""

    @abstractmethod
    def observe(self, st: State, obs: Obs) -> Change | None: ...

    def due(self, st: State) -> int | None:
        value = st.get("due")
        return int(value) if value is not None else None

    def fire(self, st: State, at_ms: int) -> Change | None:
        st.pop("due", None)
        return None

    def relevant(self, obs: Obs) -> bool:
        """Whether a reading can matter to this condition at all (cheap pre-filter)."""
        return True

    def triggers(self) -> Triggers:
        """Readings that can matter at all (`relevant` or `observe`), as the engine's
        index sees them: a reading fitting none is never shown to this condition."""
        return None

    def partition(self, obs: Obs) -> str | None:
        """The state this reading belongs to when that is not the rule's dedup key (one
        card seen at two doors shares state across devices); None: the key's slot."""
        return None

    def starts(self, obs: Obs) -> bool:
        """Whether a relevant reading can change an empty slot at all; False spares the
        engine making a slot it would forget at once (most kinds keep what they see)."""
        return True

    def idle(self, st: State) -> bool:
        """Nothing left worth remembering: the engine may drop the slot (no timer due,
        no open event). Kinds whose state only grows say when it has emptied."""
        return not st


class MatchLogic(Logic):
    instant = True

    def __init__(self, c: MatchCondition) -> None:
        self.c = c
        self._when = compile_any(c.when)

    def triggers(self) -> Triggers:
        return triggers_of(self.c.when)

    def relevant(self, obs: Obs) -> bool:
        return self._when(obs)

    def observe(self, st: State, obs: Obs) -> Change | None:
        return Change(True, obs.ts_ms) if self._when(obs) else None


class ThresholdLogic(Logic):
    """phase: normal → pending (beyond, waiting `for`) → raised → clearing → normal."""

    def __init__(self, c: ThresholdCondition) -> None:
        self.c = c
        self.limit = c.above if c.above is not None else c.below
        self.upward = c.above is not None

    def relevant(self, obs: Obs) -> bool:
        return self.c.field in obs.reading.fields

    def _limits(self, obs: Obs) -> tuple[float, float] | None:
        """(raise limit, clear limit) for this reading; a field-named limit is read from it."""
        limit = _number(obs.get(self.limit)) if isinstance(self.limit, str) else self.limit
        if limit is None:
            return None
        return limit, self.c.clear_at if self.c.clear_at is not None else limit

    def observe(self, st: State, obs: Obs) -> Change | None:
        v = _number(obs.get(self.c.field))
        limits = self._limits(obs)
        if v is None or limits is None:
            return None
        limit, back = limits
        beyond = v > limit if self.upward else v < limit
        recovered = v <= back if self.upward else v >= back
        if obs.ts_ms < st.get("last", -1):
            return None  # out of order: a level is only as new as its latest reading
        st["last"] = obs.ts_ms
        st["value"] = v
        phase = st.get("phase", "normal")
        values: dict[str, FieldValue] = {"value": v, "limit": limit}
        if phase in ("normal", "pending"):
            if not beyond:
                st.update(phase="normal", due=None)
                return None
            if phase == "normal":
                st.update(phase="pending", since=obs.ts_ms, due=obs.ts_ms + self.c.for_)
            if obs.ts_ms >= st["since"] + self.c.for_:
                st.update(phase="raised", due=None)
                return Change(True, max(obs.ts_ms, st["since"] + self.c.for_), values)
            return None
        # raised or clearing
        if not recovered:
            st.update(phase="raised", due=None)
            return None
        if phase == "raised":
            st.update(phase="clearing", since=obs.ts_ms, due=obs.ts_ms + self.c.clear_for)
        if obs.ts_ms >= st["since"] + self.c.clear_for:
            st.update(phase="normal", due=None)
            return Change(False, obs.ts_ms, values)
        return None

    def fire(self, st: State, at_ms: int) -> Change | None:
        st["due"] = None
        values: dict[str, FieldValue] = {"value": st.get("value", 0.0)}
        if st.get("phase") == "pending":
            st["phase"] = "raised"
            return Change(True, at_ms, values)
        if st.get("phase") == "clearing":
            st["phase"] = "normal"
            return Change(False, at_ms, values)
        return None


class CountLogic(Logic):
    def __init__(self, c: CountCondition) -> None:
        self.c = c
        self._when = compile_any(c.when)

    def triggers(self) -> Triggers:
        return triggers_of(self.c.when)

    def relevant(self, obs: Obs) -> bool:
        return self._when(obs)

    def _trim(self, st: State, now_ms: int) -> list[int]:
        times: list[int] = st.setdefault("times", [])
        cut = bisect.bisect_right(times, now_ms - self.c.within)
        del times[:cut]
        st["due"] = self._due(times) if times else None
        return times

    def _due(self, times: list[int]) -> int:
        """The next time the window needs a look, for a non-empty window.

        At or over the count: when it falls below (the clear). Under it, nothing that
        happens before the newest reading leaves the window can be seen (readings trim
        it themselves), so only that moment, when the slot may be forgotten. A timer per
        expiring reading would fire once per reading of every busy device."""
        n, at_least = len(times), self.c.at_least
        return times[n - at_least if n >= at_least else -1] + self.c.within

    def observe(self, st: State, obs: Obs) -> Change | None:
        if not self._when(obs):
            return None
        times: list[int] = st.setdefault("times", [])
        ts = obs.ts_ms
        if not times or ts >= times[-1]:
            times.append(ts)  # in order, as nearly always: no search
        else:
            bisect.insort(times, ts)
        # `_trim` at the latest time, inline (per reading): the window's start moves on.
        start = times[-1] - self.c.within
        if times[0] <= start:
            del times[: bisect.bisect_right(times, start)]
        if len(times) >= self.c.at_least:
            st["due"] = self._due(times)
            return Change(True, obs.ts_ms, {"count": len(times)})
        due = st.get("due")
        if due is None or due <= ts:  # else a look already waits ahead: it re-arms then
            st["due"] = times[-1] + self.c.within
        return None

    def fire(self, st: State, at_ms: int) -> Change | None:
        times = self._trim(st, at_ms)
        if len(times) < self.c.at_least:
            return Change(False, at_ms, {"count": len(times)})
        return None

    def idle(self, st: State) -> bool:
        return not st.get("times")


class SequenceLogic(Logic):
    """Absence (`at_least`: too few `then` within the window after `after`) or excess
    (`at_most`: too many).

    A rule with no `clear` of its own returns to normal by what the condition means:
    an absence when the awaited `then` finally comes (the door closes at last) or a
    `reset`; an excess when its window ends."""

    def __init__(self, c: SequenceCondition, *, self_clearing: bool = True) -> None:
        self.c = c
        self._after = compile_any(c.after)
        self._then = compile_any(c.then)
        self._reset = compile_any(c.reset)
        self.self_clearing = self_clearing

    def triggers(self) -> Triggers:
        c = self.c
        reset = triggers_of(c.reset) if c.reset is not None else []
        return union(triggers_of(c.after), triggers_of(c.then), reset)

    def relevant(self, obs: Obs) -> bool:
        c = self.c
        return self._after(obs) or self._then(obs) or (c.reset is not None and self._reset(obs))

    def _absence_ends(self, st: State, obs: Obs) -> Change | None:
        """A raised absence returns to normal (rules without a `clear` of their own)."""
        raised = st.get("raised")
        if raised is None or self.c.at_least is None or obs.ts_ms < raised:
            return None
        del st["raised"]
        return Change(False, obs.ts_ms, {"count": st.get("n", 0)})

    def observe(self, st: State, obs: Obs) -> Change | None:
        c = self.c
        start = st.get("start")
        if self._then(obs):
            ended = self._absence_ends(st, obs)
            if start is None or not start <= obs.ts_ms <= start + c.within:
                return ended
            st["n"] = st.get("n", 0) + 1
            if c.at_most is not None and st["n"] > c.at_most and not st.get("done"):
                st["done"] = True
                if self.self_clearing:
                    st["raised"] = obs.ts_ms
                return Change(True, obs.ts_ms, {"count": st["n"]})
            if c.at_least is not None and st["n"] >= c.at_least:
                st.update(start=None, due=None)
                return Change(False, obs.ts_ms, {"count": st["n"]})
            return ended
        if c.reset is not None and self._reset(obs):
            ended = self._absence_ends(st, obs)
            if start is not None:
                st.update(start=None, due=None)
            return ended
        if self._after(obs):
            if start is not None and obs.ts_ms < start:
                return None  # an older anchor arriving late does not restart the sequence
            st.update(start=obs.ts_ms, n=0, done=False, due=obs.ts_ms + c.within)
        return None

    def fire(self, st: State, at_ms: int) -> Change | None:
        c = self.c
        st.update(due=None)
        n = st.get("n", 0)
        st["start"] = None
        if c.at_least is not None and n < c.at_least:
            if self.self_clearing:
                st["raised"] = at_ms
            return Change(True, at_ms, {"count": n, "within_s": c.within / 1000})
        if c.at_most is not None and st.pop("raised", None) is not None:
            return Change(False, at_ms, {"count": n})  # the excess window is over
        return None

    def idle(self, st: State) -> bool:
        return st.get("start") is None and st.get("raised") is None


class UnprecededLogic(Logic):
    instant = True

    def __init__(self, c: UnprecededCondition) -> None:
        self.c = c
        self._event = compile_any(c.event)
        self._preceded_by = compile_any(c.preceded_by)

    def triggers(self) -> Triggers:
        return union(triggers_of(self.c.event), triggers_of(self.c.preceded_by))

    def relevant(self, obs: Obs) -> bool:
        return self._event(obs) or self._preceded_by(obs)

    def observe(self, st: State, obs: Obs) -> Change | None:
        if self._preceded_by(obs):
            st["last"] = max(st.get("last", obs.ts_ms), obs.ts_ms)
            return None
        if self._event(obs):
            last = st.get("last")
            if last is None or not 0 <= obs.ts_ms - last <= self.c.within:
                return Change(True, obs.ts_ms)
        return None


class SilenceLogic(Logic):
    def __init__(self, c: SilenceCondition) -> None:
        self.c = c
        self._when = compile_any(c.when)

    def observe(self, st: State, obs: Obs) -> Change | None:
        if self._when(obs):
            if obs.ts_ms < st.get("last", -1):
                return None
            st.update(last=obs.ts_ms, due=obs.ts_ms + self.c.within)
            if st.pop("silent", False):
                return Change(False, obs.ts_ms)
        elif "last" not in st:
            # The clock starts at the first sign of the device, not at engine start.
            st.update(last=obs.ts_ms, due=obs.ts_ms + self.c.within)
        return None

    def fire(self, st: State, at_ms: int) -> Change | None:
        st["due"] = None
        st["silent"] = True
        return Change(True, at_ms, {"silent_s": (at_ms - st["last"]) / 1000})


class CorrelationLogic(Logic):
    def __init__(self, c: CorrelationCondition) -> None:
        self.c = c
        self._when = compile_any(c.when)

    def triggers(self) -> Triggers:
        telemetry = [Trigger("telemetry")] if self.c.confirm_after is not None else []
        return union(telemetry, triggers_of(self.c.when))

    def relevant(self, obs: Obs) -> bool:
        if self.c.confirm_after is not None and obs.reading.channel == "telemetry":
            return True  # a non-matching reading ends a device's run
        return self._when(obs)

    def _recent(self, st: State, now_ms: int) -> dict[str, int]:
        seen: dict[str, int] = st.setdefault("seen", {})
        for device in [d for d, t in seen.items() if t <= now_ms - self.c.within]:
            del seen[device]
            st.get("runs", {}).pop(device, None)
        st["due"] = min(seen.values()) + self.c.within if seen else None
        return seen

    def observe(self, st: State, obs: Obs) -> Change | None:
        device = obs.reading.device
        runs: dict[str, int] = st.setdefault("runs", {})
        if not self._when(obs):
            runs.pop(device, None)
            return None
        seen: dict[str, int] = st.setdefault("seen", {})
        seen[device] = max(seen.get(device, obs.ts_ms), obs.ts_ms)
        runs.setdefault(device, obs.ts_ms)
        seen = self._recent(st, max(seen.values()))
        if len(seen) >= self.c.at_least:
            return Change(True, obs.ts_ms, {"devices": len(seen)}, tuple(sorted(seen)))
        confirm = self.c.confirm_after
        if confirm is not None and device in runs and obs.ts_ms - runs[device] >= confirm:
            return Change(True, obs.ts_ms, {"devices": len(seen)}, tuple(sorted(seen)))
        return None

    def fire(self, st: State, at_ms: int) -> Change | None:
        seen = self._recent(st, at_ms)
        persisting = self.c.confirm_after is not None and st.get("runs")
        if len(seen) < self.c.at_least and not persisting:
            return Change(False, at_ms, {"devices": len(seen)})
        return None


class TravelLogic(Logic):
    instant = True

    def __init__(self, c: TravelCondition, directory: Directory) -> None:
        self.c = c
        self._when = compile_any(c.when)
        self.directory = directory

    def triggers(self) -> Triggers:
        return triggers_of(self.c.when)

    def relevant(self, obs: Obs) -> bool:
        return self._when(obs) and obs.get(self.c.by) is not None

    def partition(self, obs: Obs) -> str | None:
        """State per credential whatever the rule's key: the two sightings to compare
        come from two devices (and so, with the default key, from two keys)."""
        who = obs.get(self.c.by)
        return None if who is None else f"{self.c.by}={who}"

    def observe(self, st: State, obs: Obs) -> Change | None:
        who = obs.get(self.c.by)
        if who is None or not self._when(obs) or obs.device is None:
            return None  # no credential: nothing ties this passage to another one
        previous = st.get("at")
        if previous is None or obs.ts_ms >= previous[1]:
            # Remember the latest sighting (a late, older one is compared, not kept),
            # until `within` has passed: then it can pair with nothing (bounded state).
            st["at"] = [obs.reading.device, obs.ts_ms, str(who)]
            st["due"] = obs.ts_ms + self.c.within
        if previous is None or previous[2:] != [str(who)]:
            return None  # first sighting, or another credential sharing the slot
        other_id, then = previous[0], previous[1]
        other = self.directory.device(other_id)
        elapsed_s = abs(obs.ts_ms - then) / 1000
        if other is None or other_id == obs.device.id or elapsed_s * 1000 > self.c.within:
            return None
        metres = distance_m(other, obs.device)
        if metres < self.c.min_distance_m:
            return None
        speed = metres / max(elapsed_s, 0.001)
        if speed <= self.c.max_speed_m_s:
            return None
        values: dict[str, FieldValue] = {
            "distance_m": round(metres, 1),
            "elapsed_s": elapsed_s,
            "speed_m_s": round(speed, 1),
            "other_device": other_id,
        }
        return Change(True, obs.ts_ms, values, (other_id, obs.device.id))

    def fire(self, st: State, at_ms: int) -> Change | None:
        st["due"] = None
        last = st.get("at")
        if last is not None and at_ms >= last[1] + self.c.within:
            del st["at"]  # too old to pair with any later sighting
        return None

    def idle(self, st: State) -> bool:
        return "at" not in st


class ScheduleLogic(Logic):
    instant = True

    def __init__(self, c: ScheduleCondition, directory: Directory) -> None:
        self.c = c
        self._when = compile_any(c.when)
        self.directory = directory

    def triggers(self) -> Triggers:
        return triggers_of(self.c.when)

    def relevant(self, obs: Obs) -> bool:
        return obs.device is not None and obs.device.hours is not None and self._when(obs)

    def observe(self, st: State, obs: Obs) -> Change | None:
        info = obs.device
        if info is None or info.hours is None or not self._when(obs):
            return None
        site = self.directory.sites.get(info.site)
        if site is None:
            return None
        local = datetime.fromtimestamp(obs.ts_ms / 1000, UTC).astimezone(site.tz)
        if info.hours.is_open(local):
            return None
        return Change(True, obs.ts_ms, {"local_time": local.strftime("%a %H:%M")})


class OfflineLogic(Logic):
    def __init__(self, c: OfflineCondition) -> None:
        self.c = c

    def starts(self, obs: Obs) -> bool:
        r = obs.reading  # anything but a will leaves a slot with no outage as it was
        return r.channel == "status" and r.fields.get("online") is False

    def observe(self, st: State, obs: Obs) -> Change | None:
        r = obs.reading
        if r.channel == "status" and r.fields.get("online") is False:
            if "since" not in st:
                st.update(since=obs.ts_ms, due=obs.ts_ms + self.c.after)
                if self.c.after == 0:
                    st["due"] = None
                    st["raised"] = True
                    return Change(True, obs.ts_ms)
            return None  # a repeated will (retained, redelivered) is the same outage
        if "since" in st and obs.ts_ms >= st["since"]:
            # Back: a status online, or any message at all, proves it.
            was_raised = st.pop("raised", False)
            st.pop("since")
            st["due"] = None
            return Change(False, obs.ts_ms) if was_raised else None
        return None

    def fire(self, st: State, at_ms: int) -> Change | None:
        st["due"] = None
        st["raised"] = True
        return Change(True, at_ms, {"offline_s": (at_ms - st["since"]) / 1000})


class LatchLogic(Logic):
    def __init__(self, c: LatchCondition) -> None:
        self.c = c
        self._raise_when = compile_any(c.raise_when)
        self._clear_when = compile_any(c.clear_when)

    def triggers(self) -> Triggers:
        return union(triggers_of(self.c.raise_when), triggers_of(self.c.clear_when))

    def relevant(self, obs: Obs) -> bool:
        # Clears first: the usual reading (a battery well above the limit) is one.
        return self._clear_when(obs) or self._raise_when(obs)

    def observe(self, st: State, obs: Obs) -> Change | None:
        if obs.ts_ms < st.get("last", -1):
            return None
        if self._clear_when(obs):
            st["last"] = obs.ts_ms
            was = st.pop("raised", False)
            st.update(due=None, pending=False)
            return Change(False, obs.ts_ms) if was else None
        if self._raise_when(obs):
            st["last"] = obs.ts_ms
            if st.get("raised") or st.get("pending"):
                return None
            if self.c.for_ == 0:
                st["raised"] = True
                return Change(True, obs.ts_ms)
            st.update(pending=True, due=obs.ts_ms + self.c.for_)
        return None

    def fire(self, st: State, at_ms: int) -> Change | None:
        st.update(due=None, pending=False, raised=True)
        return Change(True, at_ms)


class StuckLogic(Logic):
    def __init__(self, c: StuckCondition) -> None:
        self.c = c

    def triggers(self) -> Triggers:
        return [Trigger("telemetry")]

    def relevant(self, obs: Obs) -> bool:
        return obs.reading.channel == "telemetry"

    def observe(self, st: State, obs: Obs) -> Change | None:
        fields = obs.reading.fields
        if any(f not in fields for f in self.c.fields) or obs.ts_ms < st.get("last", -1):
            return None
        st["last"] = obs.ts_ms
        values = [fields[f] for f in self.c.fields]
        if values != st.get("values"):
            was = st.pop("raised", False)
            st.update(values=values, n=1, since=obs.ts_ms)
            return Change(False, obs.ts_ms) if was else None
        st["n"] += 1
        if (
            not st.get("raised")
            and st["n"] >= self.c.at_least
            and obs.ts_ms - st["since"] >= self.c.for_
        ):
            st["raised"] = True
            return Change(True, obs.ts_ms, {"repeats": st["n"]})
        return None


class GapLogic(Logic):
    instant = True

    def __init__(self, c: GapCondition) -> None:
        self.c = c

    def relevant(self, obs: Obs) -> bool:
        return obs.reading.seq is not None

    def observe(self, st: State, obs: Obs) -> Change | None:
        seq = obs.reading.seq
        if seq is None:
            return None
        last, previous_ms = st.get("seq"), st.get("seq_ms", 0)
        st["seq"], st["seq_ms"] = seq, obs.ts_ms
        if last is None or seq <= last:
            return None  # first sight, a duplicate or a device restart
        missing = seq - last - 1
        if missing <= self.c.max_missing:
            return None
        # `previous_ms`: when the gap opened (a broker that lost our session then is
        # a likelier cause than the device: detection.rules_service marks it).
        return Change(True, obs.ts_ms, {"missing": missing, "previous_ms": previous_ms})


def compile_condition(c: Condition, directory: Directory, *, rule_clears: bool = False) -> Logic:
    """The logic object of a validated condition; `rule_clears`: the rule has a `clear`
    of its own, so a sequence leaves returning to normal to it."""
    table: Mapping[type[Any], Callable[[Any], Logic]] = {
        MatchCondition: MatchLogic,
        ThresholdCondition: ThresholdLogic,
        CountCondition: CountLogic,
        SequenceCondition: lambda x: SequenceLogic(x, self_clearing=not rule_clears),
        UnprecededCondition: UnprecededLogic,
        SilenceCondition: SilenceLogic,
        CorrelationCondition: CorrelationLogic,
        TravelCondition: lambda x: TravelLogic(x, directory),
        ScheduleCondition: lambda x: ScheduleLogic(x, directory),
        OfflineCondition: OfflineLogic,
        LatchCondition: LatchLogic,
        StuckCondition: StuckLogic,
        GapCondition: GapLogic,
    }
    return table[type(c)](c)
