"""Alarm KPIs against a small history worked out by hand.

The history goes through the real `EventManager` and `EventStore` (flood control
included), so the figures are read back from a real audit trail. Times are minutes
from T0; the range is [T0, T0 + 2 h) unless a test says otherwise.

Site s1 (workers: cell c1 -> w-1, cell c2 -> w-2):

- A door_held_open/d1, cell c1: raised 1:00, 1:20, 1:40 (repeats of a returned event),
  each returning 10 s later; acknowledged 2:00, closed 5:00. 3 alarms, chattering (3 in
  40 s).
- B device_offline/p1, c2: raised T0 - 25 h, never returns. No alarm in range; stale.
- C smoke_alarm/s9, c1: raised T0 - 3 h, returned, closed T0 - 1 h. Not loaded.
- D low_battery/b1, c2: raised 10:00, shelved 15:00 until T0 + 3 h. 1 alarm.
- E device_fault/f1, no cell: raised 20:00, acknowledged 22:00, removed from service 30:00.
  1 alarm.
- F repeated_denials/r01..r11, c1: raised 60:00 + 30 s * i (i = 0..10). The 11th opens a
  flood: all 11 grouped and suppressed at 65:00; quiet at 75:00 (unsuppressed);
  r01..r03 acknowledged 80:00. 11 alarms.
- G door_forced/g1, c1: raised T0 + 2 h 1 min. Not loaded (after the range).

Site s2: door_forced / x1 raised 30:00 (only in the all-sites report).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from events.kpi import (
    DAY_MS,
    EEMUA_191,
    UNASSIGNED,
    EventHistory,
    Verdict,
    compute_kpis,
    load_histories,
    read_report,
)
from events.manager import FLOOD_RULE, EventManager
from events.model import Action, AuditRecord, Detection, State
from events.store import EventFilter, EventStore

T0 = 1_740_000_000_000
MIN = 60_000
S = 1_000
H = 60 * MIN
UNTIL = T0 + 2 * H


def at(minutes: float) -> int:
    return T0 + round(minutes * MIN)


class History:
    """Builds the table above through the manager, in time order."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.manager = EventManager(store, workers={"c1": "w-1", "c2": "w-2"})
        self.ids: dict[str, str] = {}

    def raise_(
        self, rule: str, key: str, at_ms: int, *, cell: str | None, site: str = "s1"
    ) -> None:
        detection = Detection(
            rule_id=rule, key=key, raised=True, at_ms=at_ms, site=site, cell=cell, device=key
        )
        self.manager.handle(detection, at_ms)
        event = self.store.open_event(rule, key)
        assert event is not None
        self.ids[key] = event.id

    def clear(self, rule: str, key: str, at_ms: int, site: str = "s1") -> None:
        detection = Detection(rule_id=rule, key=key, raised=False, at_ms=at_ms, site=site)
        self.manager.handle(detection, at_ms)

    def act(
        self, key: str, action: Action, at_ms: int, *, note: str = "", until_ms: int | None = None
    ) -> None:
        self.manager.act(
            self.ids[key], action, actor="op-a", at_ms=at_ms, note=note, until_ms=until_ms
        )


def build(store: EventStore) -> History:
    h = History(store)
    h.raise_("device_offline", "p1", T0 - 25 * H, cell="c2")  # B
    h.raise_("smoke_alarm", "s9", T0 - 3 * H, cell="c1")  # C
    h.clear("smoke_alarm", "s9", T0 - 3 * H + 10 * MIN)
    h.act("s9", Action.CLOSE, T0 - H, note="cooking")
    for t in (1, 1 + 20 / 60, 1 + 40 / 60):  # A: three raises 20 s apart, each returning
        h.raise_("door_held_open", "d1", at(t), cell="c1")
        h.clear("door_held_open", "d1", at(t) + 10 * S)
    h.act("d1", Action.ACKNOWLEDGE, at(2))
    h.act("d1", Action.CLOSE, at(5), note="door closed")
    h.raise_("low_battery", "b1", at(10), cell="c2")  # D
    h.act("b1", Action.SHELVE, at(15), until_ms=T0 + 3 * H)
    h.raise_("device_fault", "f1", at(20), cell=None)  # E
    h.act("f1", Action.ACKNOWLEDGE, at(22))
    h.act("f1", Action.REMOVE_FROM_SERVICE, at(30))
    h.raise_("door_forced", "x1", at(30), cell=None, site="s2")
    for i in range(11):  # F: the 11th opens a flood at 65:00
        h.raise_("repeated_denials", f"r{i + 1:02d}", at(60 + i / 2), cell="c1")
    h.manager.tick(at(76))  # the flood went quiet at 75:00: children unsuppressed then
    for key in ("r01", "r02", "r03"):
        h.act(key, Action.ACKNOWLEDGE, at(80))
    h.raise_("door_forced", "g1", UNTIL + MIN, cell="c1")  # G
    return h


@pytest.fixture
def history(event_db_url: str) -> Iterator[History]:
    with EventStore(event_db_url) as store:
        store.migrate()
        yield build(store)


def test_the_fixture_is_what_the_table_says(history: History) -> None:
    store = history.store
    parents = store.list_events(EventFilter(rule_id=FLOOD_RULE))
    assert len(parents) == 1 and parents[0].site == "s1"
    assert len(store.children(parents[0].id)) == 11
    a = store.audit_trail(history.ids["d1"])
    # A: the second and third raises re-activated a returned event (repeats).
    assert [r.action for r in a] == [
        Action.RAISE,
        Action.ASSIGN,
        Action.RETURN,
        Action.REPEAT,
        Action.RETURN,
        Action.REPEAT,
        Action.RETURN,
        Action.ACKNOWLEDGE,
        Action.CLOSE,
    ]


def test_load_takes_what_bears_on_the_range(history: History) -> None:
    loaded = load_histories(history.store, site="s1", since_ms=T0, until_ms=UNTIL)
    keys = sorted(h.key for h in loaded)
    # B (open since before), A, D, E and F's 11; not C (closed before), G (after),
    # x1 (other site) or the flood parent.
    assert keys == sorted(["p1", "d1", "b1", "f1", *(f"r{i:02d}" for i in range(1, 12))])
    assert all(r.at_ms < UNTIL for h in loaded for r in h.trail)
    everywhere = load_histories(history.store, site=None, since_ms=T0, until_ms=UNTIL)
    assert len(everywhere) == len(loaded) + 1


def test_site_kpis_match_the_hand_computation(history: History) -> None:
    report = read_report(history.store, site="s1", since_ms=T0, until_ms=UNTIL)
    k = report.kpis
    # A 3 + D 1 + E 1 + F 11; B's only alarm was before the range.
    assert k.alarms == 16
    # 16 alarms in 2 h: 16 / 12 per 10 min, 8 per hour, 192 per day: all "manageable".
    rates = {r.period: r for r in k.rates}
    assert rates["10min"].average == pytest.approx(16 / 12)
    assert rates["hour"].average == pytest.approx(8)
    assert rates["day"].average == pytest.approx(192)
    assert {r.verdict for r in k.rates} == {Verdict.MANAGEABLE}
    # Busiest fixed periods: minutes 60-70 hold F's 11; the second hour holds 11 too.
    assert [rates[p].busiest for p in ("10min", "hour", "day")] == [11, 11, 16]
    assert k.per_10min == (3, 1, 1, 0, 0, 0, 11, 0, 0, 0, 0, 0)
    # Sliding peak: F's 11 from 60:00.
    assert (k.peak_10min, k.peak_10min_at_ms) == (11, at(60))
    # (t - 10 min, t] holds all 11 of F from 65:00 (the 11th) until 70:00 (60:00 leaves).
    assert (k.flood_ms, k.floods) == (5 * MIN, 1)
    assert k.flood_fraction == pytest.approx(5 / 120)
    assert k.verdict is Verdict.OVERLOADED  # 4.2 % of the time in flood >= 1 %
    # Top 10: A's 3, then the ones by rule and key: f1, b1, r01..r07 -> 3 + 9 of 16.
    assert [(p.rule_id, p.key, p.alarms) for p in k.top[:3]] == [
        ("door_held_open", "d1", 3),
        ("device_fault", "f1", 1),
        ("low_battery", "b1", 1),
    ]
    assert [p.key for p in k.top[3:]] == [f"r{i:02d}" for i in range(1, 8)]
    assert k.top_share == pytest.approx(12 / 16)
    assert [(p.key, p.alarms) for p in k.chattering] == [("d1", 3)]
    # At 2 h: B active since T0 - 25 h (27 h: stale); F's 11 back in normal mode.
    assert [o.key for o in k.standing] == ["p1", *(f"r{i:02d}" for i in range(1, 12))]
    assert [(o.key, o.duration_ms) for o in k.stale] == [("p1", 27 * H)]
    assert k.standing[1].duration_ms == 60 * MIN
    assert [(o.key, o.since_ms, o.duration_ms) for o in k.shelved] == [("b1", at(15), 105 * MIN)]
    assert [(o.key, o.duration_ms) for o in k.out_of_service] == [("f1", 90 * MIN)]
    assert k.suppressed == ()
    # Acknowledged: A's third alarm after 20 s, E after 2 min, r01..r03 at 80:00 after
    # 20, 19.5 and 19 min. Sorted: 20 s, 2 min, 19 min, 19.5 min, 20 min; p50 = 3rd of 5,
    # p90 = 5th. Pending: A's first two, D, r04..r11 = 11.
    ack = k.time_to_acknowledge
    assert (ack.count, ack.p50_ms, ack.p90_ms, ack.max_ms, ack.pending) == (
        5,
        19 * MIN,
        20 * MIN,
        20 * MIN,
        11,
    )
    # Resolved: only A, raised 1:00, closed 5:00. Raised in range and open: D, E, F's 11.
    done = k.time_to_resolve
    assert (done.count, done.p50_ms, done.max_ms, done.pending) == (1, 4 * MIN, 4 * MIN, 13)


def test_kpis_per_position(history: History) -> None:
    report = read_report(history.store, site="s1", since_ms=T0, until_ms=UNTIL)
    assert list(report.positions) == [UNASSIGNED, "w-1", "w-2"]
    w1, w2, nobody = report.positions["w-1"], report.positions["w-2"], report.positions[UNASSIGNED]
    assert (w1.alarms, w2.alarms, nobody.alarms) == (14, 1, 1)  # A + F; D; E
    assert w1.flood_ms == 5 * MIN and w2.flood_ms == 0
    assert [o.key for o in w2.stale] == ["p1"] and [o.key for o in w2.shelved] == ["b1"]
    assert [o.key for o in nobody.out_of_service] == ["f1"]
    # w-2: one alarm in 2 h is 1/12 per 10 min, 12 a day: acceptable, no flood.
    assert w2.verdict is Verdict.ACCEPTABLE
    assert report.sites == {}


def test_all_sites_report_breaks_down_by_site(history: History) -> None:
    report = read_report(history.store, site=None, since_ms=T0, until_ms=UNTIL)
    assert report.kpis.alarms == 17
    assert {s: k.alarms for s, k in report.sites.items()} == {"s1": 16, "s2": 1}


def test_state_is_read_as_of_the_end_of_the_range(history: History) -> None:
    # At 70:00 F's children were still suppressed (since 65:00), nobody had acked them.
    until = at(70)
    k = read_report(history.store, site="s1", since_ms=T0, until_ms=until).kpis
    assert k.alarms == 16
    assert sorted(o.key for o in k.suppressed) == [f"r{i:02d}" for i in range(1, 12)]
    assert {o.duration_ms for o in k.suppressed} == {5 * MIN}
    assert [o.key for o in k.standing] == ["p1"]
    assert k.stale[0].duration_ms == 25 * H + 70 * MIN
    assert [(o.key, o.duration_ms) for o in k.out_of_service] == [("f1", 40 * MIN)]
    assert k.flood_ms == 5 * MIN  # 65:00 to 70:00, the end of the range
    ack = k.time_to_acknowledge
    assert (ack.count, ack.p50_ms, ack.max_ms, ack.pending) == (2, 20 * S, 2 * MIN, 14)
    assert len(k.per_10min) == 7


# ---------------------------------------------------------------------- pure


def raises(times: list[int], *, key: str = "k", rule: str = "r") -> EventHistory:
    """A point raised at each of `times`, returning 1 ms after each."""
    ident, trail = f"{rule}/{key}", []
    active, returned = State.ACTIVE_UNACKNOWLEDGED, State.RETURNED_UNACKNOWLEDGED
    for n, t in enumerate(times):
        if n == 0:
            trail.append(AuditRecord(ident, t, "system", Action.RAISE, None, active))
        else:
            trail.append(AuditRecord(ident, t, "system", Action.REPEAT, returned, active))
        trail.append(AuditRecord(ident, t + 1, "system", Action.RETURN, active, returned))
    return EventHistory(ident, rule, key, "s", None, tuple(trail))


def one_alarm_each(times: list[int]) -> list[EventHistory]:
    return [raises([t], key=f"k{n:04d}") for n, t in enumerate(times)]


@pytest.mark.parametrize(
    ("per_day", "verdict"),
    [
        (150, Verdict.ACCEPTABLE),
        (151, Verdict.MANAGEABLE),
        (300, Verdict.MANAGEABLE),
        (301, Verdict.OVERLOADED),
    ],
)
def test_daily_rate_levels_are_inclusive(per_day: int, verdict: Verdict) -> None:
    # Spread evenly over a day: never more than 10 in 10 minutes, so no flood.
    times = [T0 + n * DAY_MS // per_day for n in range(per_day)]
    k = compute_kpis(one_alarm_each(times), T0, T0 + DAY_MS)
    day = next(r for r in k.rates if r.period == "day")
    assert (day.average, day.verdict, k.flood_ms) == (per_day, verdict, 0)
    # A day-long range is judged by the daily level (150 a day is 1.04 per 10 min).
    assert k.verdict is verdict


def test_a_range_is_judged_by_the_longest_period_in_it() -> None:
    # 31 alarms 9 min apart in 5 h: 1.03 per 10 min and 6.2 per hour (both manageable),
    # 148.8 a day (acceptable). An hour fits in the range, a day does not.
    span = 5 * H
    k = compute_kpis(one_alarm_each([T0 + n * 9 * MIN for n in range(31)]), T0, T0 + span)
    assert [r.verdict for r in k.rates] == [
        Verdict.MANAGEABLE,
        Verdict.MANAGEABLE,
        Verdict.ACCEPTABLE,
    ]
    assert k.verdict is Verdict.MANAGEABLE  # the hourly rate: 6.2 > 6
    # Shorter than an hour: the 10-minute level. 2 in 5 min is 4 per 10 min.
    short = compute_kpis(one_alarm_each([T0, T0 + MIN]), T0, T0 + 5 * MIN)
    assert short.verdict is Verdict.OVERLOADED


def test_flood_needs_more_than_ten_in_the_window() -> None:
    ten = [T0 + n * S for n in range(10)]
    assert compute_kpis(one_alarm_each(ten), T0, T0 + H).flood_ms == 0
    # Eleven, one a second: flood from the 11th (10 s) until the 1st leaves (10 min).
    k = compute_kpis(one_alarm_each([*ten, T0 + 10 * S]), T0, T0 + H)
    assert (k.flood_ms, k.floods) == (10 * MIN - 10 * S, 1)
    # Two separate bursts are two spells; the second is cut by the end of the range.
    late = [T0 + 55 * MIN + n * S for n in range(11)]
    k = compute_kpis(one_alarm_each([*ten, T0 + 10 * S, *late]), T0, T0 + H)
    assert (k.flood_ms, k.floods) == (10 * MIN - 10 * S + 5 * MIN - 10 * S, 2)


def test_chattering_is_three_within_a_minute() -> None:
    slow = raises([T0, T0 + 30 * S, T0 + 60 * S], key="slow")  # 3rd is 60 s after the 1st
    fast = raises([T0, T0 + 30 * S, T0 + 59 * S], key="fast")
    k = compute_kpis([slow, fast], T0, T0 + H)
    assert [p.key for p in k.chattering] == ["fast"]
    assert k.alarms == 6 and [p.key for p in k.top] == ["fast", "slow"]


def test_an_empty_range_is_acceptable() -> None:
    k = compute_kpis([], T0, T0 + H)
    assert (k.alarms, k.peak_10min, k.peak_10min_at_ms, k.top_share) == (0, 0, None, 0.0)
    assert k.verdict is Verdict.ACCEPTABLE
    assert k.time_to_acknowledge.p50_ms is None
    with pytest.raises(ValueError, match="before"):
        compute_kpis([], T0, T0)


def test_thresholds_are_eemua_191() -> None:
    levels = [(r.period, r.acceptable, r.manageable) for r in EEMUA_191.rates]
    assert levels == [("10min", 1, 2), ("hour", 6, 12), ("day", 150, 300)]
    assert (EEMUA_191.flood_alarms, EEMUA_191.flood_time_fraction) == (10, 0.01)
    assert EEMUA_191.stale_ms == DAY_MS


def test_sqlite_file_in_tmp_path(tmp_path: Path) -> None:
    """The whole path on a fresh SQLite file, as `gridwatch report kpi` opens it."""
    with EventStore(f"sqlite:///{tmp_path / 'kpi.db'}") as store:
        store.migrate()
        build(store)
        assert read_report(store, site="s1", since_ms=T0, until_ms=UNTIL).kpis.alarms == 16
