"""Alarm-system KPIs after ISA-18.2 (ANSI/ISA-18.2-2016, clause 16 and TR18.2.5) and
EEMUA 191, computed from the event store's audit trail for a site (or all sites) and a
range `[since_ms, until_ms)` of event time.

The audit trail, not the events' current rows, is the source: every figure is what the
trail says happened before `until_ms`, so a report on last week does not change when an
event is closed today. Loading (`load_histories`) is the only I/O; `compute_kpis` and
`kpi_report` are pure over what was loaded, so the figures can be checked by hand.

Definitions (the constants below hold every number):

- **Alarm**: each time a condition becomes active, i.e. an event's `raise`, or a
  `repeat` of an event whose condition had returned (ISA-18.2 annunciates it again; a
  repeat while active only bumps a counter and is no new alarm). Counted whatever the
  event's mode: a child that flood control suppressed at birth is still an alarm the
  system generated, else a flood would hide itself from the figures meant to show it.
  Not alarms: flood-control parents (rule `flood_control`, a grouping of alarms already
  counted) and residents' reports (`source = report`, a request, not an annunciation of
  the alarm system). Device-health rules (offline, fault, battery, tamper) and the hub's
  own conditions (`hub_storage_failing`) are alarms: ISA-18.2 counts diagnostic alarms
  like any other, and the operator has to act on them.
- **Alarm point** (ISA-18.2's "tag"): the condition `(rule_id, key)`, e.g. one rule on
  one device; a closed event raised again under the same pair is the same point.
- **Rates**: alarms in the range divided by its length in 10 min, hours and days,
  against EEMUA 191 / ISA-18.2 Table 5: "very likely acceptable" at most 1 / 6 / 150,
  "maximum manageable" at most 2 / 12 / 300 (per 10 min / hour / day). Averages, as in
  the standard; `busiest` is the highest count in one period of the range cut into
  consecutive periods from `since_ms` (the last one may be shorter).
- **Peak 10-minute count**: the most alarms in any window `[t, t + 10 min)` (t sliding).
- **Flood**: ISA-18.2 / EEMUA 191, more than 10 alarms in 10 minutes. An instant t is in
  flood when the sliding window `(t - 10 min, t]` holds more than 10 alarms of the range
  (the same window flood control uses). `flood_ms` is how long the range was in flood,
  `floods` how many separate spells; target: under 1 % of the time.
- **Top-10 share**: the 10 points with the most alarms (ties: by rule, then key), as a
  fraction of all alarms; ISA-18.2 asks for about 1 % to 5 % at most. Meaningful only
  with many points: a site with ten points always scores 100 %.
- **Chattering point**: 3 or more alarms of one point within one minute (a window
  `[t, t + 60 s)`), the rule of thumb of ISA-TR18.2.5 (EEMUA 191: an alarm that
  repeatedly goes in and out of alarm in a short time). Target: none.
- **Standing**, at `until_ms`: events not closed whose condition is active and whose mode
  is normal (on the operator's list, acknowledged or not), with how long since the
  condition last became active. **Stale**: standing for more than 24 h.
- **Shelved / suppressed / out of service**, at `until_ms`: events not closed in that
  mode, with how long since they entered it (an event shelved then removed from service
  counts from the removal).
- **Time to acknowledge**: from an alarm in the range to the first `acknowledge` (or
  `close`, which acknowledges) after it and before `until_ms`; an alarm raised again
  before anyone acknowledged it stays unacknowledged. **Time to resolve**: from an
  event's raise in the range to its `close`. Both as nearest-rank p50 / p90 and max,
  with how many are still pending at `until_ms`.
- **Operator position**: the accounts and roles know no consoles or positions; events
  are assigned to people (the cell's grid worker at raise, or whoever an operator assigns
  them to). The position of an alarm is its event's assignee (`(unassigned)` without
  one): the desk of a site is the site's position, each assignee one more. The trail
  records that an assignment happened but not the name, so this is the event's assignee
  as it is now, not as it was at `until_ms`.
- **Verdict** of a range: each rate has its own (acceptable: at most the acceptable
  level, manageable: at most the maximum manageable, else overloaded). The three levels
  are one average load rounded per period (150 a day is 1.04 per 10 min), so the worst of
  them would make the daily level unreachable: the range is judged by the rate of the
  longest period that fits in it (a day, else an hour, else 10 min), and is overloaded
  whatever its rate when 1 % or more of it was in flood.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

import sqlalchemy as sa

from events.manager import FLOOD_RULE
from events.migrations import audit, events
from events.model import Action, AuditRecord, Mode, Source, State
from events.store import EventStore

MINUTE_MS: Final = 60_000
WINDOW_MS: Final = 10 * MINUTE_MS
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
UNASSIGNED: Final = "(unassigned)"


class Verdict(StrEnum):
    """EEMUA 191's two levels cut the load into three bands, best first."""

    ACCEPTABLE = "acceptable"
    MANAGEABLE = "manageable"
    OVERLOADED = "overloaded"


_VERDICT_RANK: Final = {v: i for i, v in enumerate(Verdict)}


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One row of EEMUA 191's alarm-rate table."""

    period: str
    period_ms: int
    acceptable: float
    """"Very likely acceptable": at most this many alarms per period on average."""
    manageable: float
    """"Maximum manageable"."""

    def verdict(self, rate: float) -> Verdict:
        if rate <= self.acceptable:
            return Verdict.ACCEPTABLE
        return Verdict.MANAGEABLE if rate <= self.manageable else Verdict.OVERLOADED


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Every number the KPIs are defined or judged by (defaults: EEMUA 191, ISA-18.2)."""

    rates: tuple[RateLimit, ...] = (
        RateLimit("10min", WINDOW_MS, 1, 2),
        RateLimit("hour", HOUR_MS, 6, 12),
        RateLimit("day", DAY_MS, 150, 300),
    )
    flood_window_ms: int = WINDOW_MS
    flood_alarms: int = 10
    """More than this many alarms in the window is a flood."""
    flood_time_fraction: float = 0.01
    """Time in flood below this fraction of the range."""
    top_n: int = 10
    top_share: float = 0.05
    """ISA-18.2: the top 10 points should carry about 1 % to 5 % of the alarms at most."""
    chatter_alarms: int = 3
    chatter_window_ms: int = MINUTE_MS
    stale_ms: int = DAY_MS


EEMUA_191: Final = Thresholds()


# ---------------------------------------------------------------------- input


@dataclass(frozen=True, slots=True)
class EventHistory:
    """One event as the KPIs need it: its alarm point, site, position and audit trail
    (records before the range's end, in the order the store wrote them)."""

    event_id: str
    rule_id: str
    key: str
    site: str
    assignee: str | None
    trail: tuple[AuditRecord, ...]

    @property
    def position(self) -> str:
        return self.assignee or UNASSIGNED


def load_histories(
    store: EventStore, *, site: str | None, since_ms: int, until_ms: int
) -> list[EventHistory]:
    """The alarm events (no flood parents, no residents' reports) of `site` (None: every
    site) that can bear on `[since_ms, until_ms)`: raised before its end and not closed
    before its start, each with its audit trail up to `until_ms`.

    Two read-only queries on the store's tables (not N + 1 `audit_trail` calls).
    """
    e, a = events, audit
    closed_before = (
        sa.select(a.c.event_id)
        .where(a.c.event_id == e.c.id, a.c.action == Action.CLOSE.value, a.c.at_ms < since_ms)
        .exists()
    )
    where = [
        e.c.raised_ms < until_ms,
        e.c.rule_id != FLOOD_RULE,
        e.c.source != Source.REPORT.value,
        sa.not_(closed_before),
    ]
    if site is not None:
        where.append(e.c.site == site)
    rows_query = sa.select(e.c.id, e.c.rule_id, e.c.key, e.c.site, e.c.assignee).where(*where)
    trail_query = (
        a.select()
        .where(a.c.event_id.in_(sa.select(e.c.id).where(*where)), a.c.at_ms < until_ms)
        .order_by(a.c.event_id, a.c.seq)
    )
    with store.reading() as conn:
        rows = conn.execute(rows_query).mappings().all()
        trails: defaultdict[str, list[AuditRecord]] = defaultdict(list)
        for r in conn.execute(trail_query).mappings():
            trails[str(r["event_id"])].append(
                AuditRecord(
                    event_id=str(r["event_id"]),
                    at_ms=int(r["at_ms"]),
                    actor=str(r["actor"]),
                    action=Action(r["action"]),
                    from_state=None if r["from_state"] is None else State(r["from_state"]),
                    to_state=State(r["to_state"]),
                    note=str(r["note"]),
                )
            )
    histories = [
        EventHistory(
            event_id=str(r["id"]),
            rule_id=str(r["rule_id"]),
            key=str(r["key"]),
            site=str(r["site"]),
            assignee=None if r["assignee"] is None else str(r["assignee"]),
            trail=tuple(trails[str(r["id"])]),
        )
        for r in rows
    ]
    return sorted(histories, key=lambda h: (h.trail[0].at_ms if h.trail else 0, h.event_id))


# ---------------------------------------------------------------------- output


@dataclass(frozen=True, slots=True)
class Rate:
    period: str
    period_ms: int
    average: float
    """Alarms per period over the range."""
    busiest: int
    """Most alarms in one of the range's consecutive periods."""
    acceptable: float
    manageable: float
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class PointCount:
    """An alarm point and its alarms in the range."""

    rule_id: str
    key: str
    alarms: int


@dataclass(frozen=True, slots=True)
class Outstanding:
    """An event in some condition at the end of the range, and since when."""

    event_id: str
    rule_id: str
    key: str
    site: str
    since_ms: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Durations:
    """Nearest-rank percentiles of a set of durations, and what has none yet."""

    count: int
    p50_ms: int | None
    p90_ms: int | None
    max_ms: int | None
    pending: int
    """Started in the range but not finished by its end (unacknowledged, unresolved)."""


@dataclass(frozen=True, slots=True)
class AlarmKpis:
    alarms: int
    rates: tuple[Rate, ...]
    peak_10min: int
    peak_10min_at_ms: int | None
    """Start of the first window holding the peak."""
    flood_ms: int
    flood_fraction: float
    floods: int
    top: tuple[PointCount, ...]
    top_share: float
    chattering: tuple[PointCount, ...]
    standing: tuple[Outstanding, ...]
    stale: tuple[Outstanding, ...]
    shelved: tuple[Outstanding, ...]
    suppressed: tuple[Outstanding, ...]
    out_of_service: tuple[Outstanding, ...]
    time_to_acknowledge: Durations
    time_to_resolve: Durations
    per_10min: tuple[int, ...]
    """Alarms in each consecutive 10 minutes of the range (the last may be shorter)."""
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class KpiReport:
    site: str | None
    """None: every site together."""
    since_ms: int
    until_ms: int
    thresholds: Thresholds
    kpis: AlarmKpis
    positions: Mapping[str, AlarmKpis] = field(default_factory=dict)
    sites: Mapping[str, AlarmKpis] = field(default_factory=dict)
    """Per site, when the report covers every site."""


# ---------------------------------------------------------------------- computation


@dataclass(slots=True)
class _Replay:
    """An event's facts at the end of the range, replayed from its trail."""

    alarms: list[int] = field(default_factory=list)
    acknowledged_after: list[int | None] = field(default_factory=list)
    """Per alarm: how long until it was acknowledged (None: it was not)."""
    raised_ms: int | None = None
    closed_ms: int | None = None
    active_since: int | None = None
    acknowledged: bool = False
    mode: Mode = Mode.NORMAL
    mode_since: int | None = None


_MODE_OF: Final = {
    Action.SHELVE: Mode.SHELVED,
    Action.UNSHELVE: Mode.NORMAL,
    Action.SUPPRESS: Mode.SUPPRESSED,
    Action.UNSUPPRESS: Mode.NORMAL,
    Action.REMOVE_FROM_SERVICE: Mode.OUT_OF_SERVICE,
    Action.RETURN_TO_SERVICE: Mode.NORMAL,
}


def _replay(trail: Iterable[AuditRecord]) -> _Replay:
    """Fold the trail the way `events.model.transition` changed the event."""
    r = _Replay()
    for record in trail:
        at, action = record.at_ms, record.action
        if action is Action.RAISE or (action is Action.REPEAT and r.active_since is None):
            if action is Action.RAISE:
                r.raised_ms = at
            r.alarms.append(at)
            r.acknowledged_after.append(None)
            r.active_since, r.acknowledged = at, False
        elif action is Action.RETURN:
            r.active_since = None
        elif action in (Action.ACKNOWLEDGE, Action.CLOSE):
            if not r.acknowledged and r.alarms:
                r.acknowledged_after[-1] = at - r.alarms[-1]
            r.acknowledged = True
            if action is Action.CLOSE:
                r.closed_ms = at
        elif action in _MODE_OF:
            r.mode = _MODE_OF[action]
            r.mode_since = at
    return r


def compute_kpis(
    histories: Sequence[EventHistory],
    since_ms: int,
    until_ms: int,
    thresholds: Thresholds = EEMUA_191,
) -> AlarmKpis:
    """The KPIs of these events over `[since_ms, until_ms)` (see the module's docstring)."""
    if since_ms >= until_ms:
        raise ValueError("since_ms must be before until_ms")
    span = until_ms - since_ms
    alarms: list[int] = []
    by_point: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    ack_times: list[int] = []
    unacknowledged = 0
    resolve_times: list[int] = []
    unresolved = 0
    standing: list[Outstanding] = []
    modes: dict[Mode, list[Outstanding]] = {m: [] for m in Mode if m is not Mode.NORMAL}
    for history in histories:
        r = _replay(history.trail)
        for at, acked_after in zip(r.alarms, r.acknowledged_after, strict=True):
            if since_ms <= at < until_ms:
                alarms.append(at)
                by_point[history.rule_id, history.key].append(at)
                if acked_after is None:
                    unacknowledged += 1
                else:
                    ack_times.append(acked_after)
        if r.raised_ms is not None and since_ms <= r.raised_ms < until_ms:
            if r.closed_ms is None:
                unresolved += 1
            else:
                resolve_times.append(r.closed_ms - r.raised_ms)
        if r.closed_ms is not None:
            continue

        def outstanding(since: int, h: EventHistory = history) -> Outstanding:
            return Outstanding(h.event_id, h.rule_id, h.key, h.site, since, until_ms - since)

        if r.mode is not Mode.NORMAL and r.mode_since is not None:
            modes[r.mode].append(outstanding(r.mode_since))
        elif r.active_since is not None:
            standing.append(outstanding(r.active_since))
    alarms.sort()
    counts = sorted(
        (PointCount(rule, key, len(times)) for (rule, key), times in by_point.items()),
        key=lambda p: (-p.alarms, p.rule_id, p.key),
    )
    top = tuple(counts[: thresholds.top_n])
    chattering = tuple(
        p
        for p in counts
        if _peak(by_point[p.rule_id, p.key], thresholds.chatter_window_ms)[0]
        >= thresholds.chatter_alarms
    )
    rates = tuple(
        Rate(
            period=limit.period,
            period_ms=limit.period_ms,
            average=len(alarms) * limit.period_ms / span,
            busiest=max(_bins(alarms, since_ms, until_ms, limit.period_ms)),
            acceptable=limit.acceptable,
            manageable=limit.manageable,
            verdict=limit.verdict(len(alarms) * limit.period_ms / span),
        )
        for limit in thresholds.rates
    )
    peak, peak_at = _peak(alarms, WINDOW_MS)
    flood_ms, floods = _flood(alarms, since_ms, until_ms, thresholds)
    flood_fraction = flood_ms / span
    fitting = [rate for rate in rates if rate.period_ms <= span] or [rates[0]]
    verdicts = [max(fitting, key=lambda rate: rate.period_ms).verdict]
    if flood_fraction >= thresholds.flood_time_fraction:
        verdicts.append(Verdict.OVERLOADED)
    standing.sort(key=lambda o: (o.since_ms, o.event_id))
    return AlarmKpis(
        alarms=len(alarms),
        rates=rates,
        peak_10min=peak,
        peak_10min_at_ms=peak_at,
        flood_ms=flood_ms,
        flood_fraction=flood_fraction,
        floods=floods,
        top=top,
        top_share=sum(p.alarms for p in top) / len(alarms) if alarms else 0.0,
        chattering=chattering,
        standing=tuple(standing),
        stale=tuple(o for o in standing if o.duration_ms > thresholds.stale_ms),
        shelved=_by_age(modes[Mode.SHELVED]),
        suppressed=_by_age(modes[Mode.SUPPRESSED]),
        out_of_service=_by_age(modes[Mode.OUT_OF_SERVICE]),
        time_to_acknowledge=_durations(ack_times, unacknowledged),
        time_to_resolve=_durations(resolve_times, unresolved),
        per_10min=tuple(_bins(alarms, since_ms, until_ms, WINDOW_MS)),
        verdict=max(verdicts, key=_VERDICT_RANK.__getitem__),
    )


def kpi_report(
    histories: Sequence[EventHistory],
    *,
    site: str | None,
    since_ms: int,
    until_ms: int,
    thresholds: Thresholds = EEMUA_191,
) -> KpiReport:
    """The KPIs of the site (or all sites), and the same per position (and per site)."""

    def grouped(key: str) -> dict[str, list[EventHistory]]:
        groups: defaultdict[str, list[EventHistory]] = defaultdict(list)
        for h in histories:
            groups[getattr(h, key)].append(h)
        return dict(sorted(groups.items()))

    def kpis(subset: Sequence[EventHistory]) -> AlarmKpis:
        return compute_kpis(subset, since_ms, until_ms, thresholds)

    return KpiReport(
        site=site,
        since_ms=since_ms,
        until_ms=until_ms,
        thresholds=thresholds,
        kpis=kpis(histories),
        positions={p: kpis(s) for p, s in grouped("position").items()},
        sites={} if site is not None else {s: kpis(h) for s, h in grouped("site").items()},
    )


def read_report(
    store: EventStore,
    *,
    site: str | None,
    since_ms: int,
    until_ms: int,
    thresholds: Thresholds = EEMUA_191,
) -> KpiReport:
    """Load what bears on the range and compute its report."""
    if since_ms >= until_ms:
        raise ValueError("since_ms must be before until_ms")
    histories = load_histories(store, site=site, since_ms=since_ms, until_ms=until_ms)
    return kpi_report(
        histories, site=site, since_ms=since_ms, until_ms=until_ms, thresholds=thresholds
    )


def _peak(times: Sequence[int], window_ms: int) -> tuple[int, int | None]:
    """Most of the sorted `times` in one window `[t, t + window_ms)`, and the first such t."""
    best, best_at, first = 0, None, 0
    for last, at in enumerate(times):
        while times[first] <= at - window_ms:
            first += 1
        if last - first + 1 > best:
            best, best_at = last - first + 1, times[first]
    return best, best_at


def _flood(
    times: Sequence[int], since_ms: int, until_ms: int, thresholds: Thresholds
) -> tuple[int, int]:
    """How long, within the range, the window `(t - W, t]` held more than the flood
    limit of the sorted `times`, and in how many separate spells."""
    steps: defaultdict[int, int] = defaultdict(int)
    for at in times:
        steps[at] += 1
        steps[at + thresholds.flood_window_ms] -= 1
    in_window = flood_ms = spells = 0
    flooding_from: int | None = None
    for at in sorted(steps):
        in_window += steps[at]
        flooding = in_window > thresholds.flood_alarms
        if flooding and flooding_from is None:
            flooding_from = at
        elif not flooding and flooding_from is not None:
            start, end = max(flooding_from, since_ms), min(at, until_ms)
            if start < end:
                flood_ms += end - start
                spells += 1
            flooding_from = None
    return flood_ms, spells


def _bins(times: Sequence[int], since_ms: int, until_ms: int, period_ms: int) -> list[int]:
    """Alarms per consecutive period of the range, from its start."""
    counts = [0] * math.ceil((until_ms - since_ms) / period_ms)
    for at in times:
        counts[(at - since_ms) // period_ms] += 1
    return counts


def _durations(values: list[int], pending: int) -> Durations:
    ordered = sorted(values)

    def rank(p: float) -> int | None:
        # Nearest rank: the smallest value with at least p of them at or below it.
        return ordered[max(1, math.ceil(p * len(ordered))) - 1] if ordered else None

    return Durations(
        count=len(ordered),
        p50_ms=rank(0.5),
        p90_ms=rank(0.9),
        max_ms=ordered[-1] if ordered else None,
        pending=pending,
    )


def _by_age(items: list[Outstanding]) -> tuple[Outstanding, ...]:
    """Longest first."""
    return tuple(sorted(items, key=lambda o: (o.since_ms, o.event_id)))
