"""Alarm KPIs after ISA-18.2 / EEMUA 191, from the events' transitions (`security_event`).

The exact figures are the hub's (`events.kpi`: the desk's `/desk/{site}/kpi`, `GET
/api/v1/kpi`, `gridwatch report kpi`). Grafana sees what the event sinks write to InfluxDB,
one point per transition, and InfluxQL has no joins, so some figures here are close
approximations of the hub's (docs/dashboards.md lists how each is made):

- an **alarm** is a `raise`, or a `repeat` from a returned state (`returned_unacknowledged`,
  `cleared`); a re-activation while shelved, suppressed or out of service is missed (the
  point's `from_state` is then the mode, not whether the condition had returned);
- rates per 10 min / hour / day are counts per clock-aligned period (UTC days), their
  averages the mean over the periods of the time picker (the edges may be partial);
- the **peak 10 minutes** and **time in flood** use clock-aligned 10-minute periods, where
  the hub slides its window (a flood straddling two periods can be missed or shortened);
- an **alarm point** is rule and device (the hub's is rule and key, the same for device rules);
- **standing / shelved / suppressed / out of service** are the events whose newest
  transition lies in the picker's range, by that transition's state;
- **time to acknowledge / resolve** needs each raise paired with its acknowledgement,
  which InfluxQL cannot do: the dashboard shows the flows (alarms, acknowledgements and
  resolutions per hour, and what still waits) and links to the desk's KPI page for the
  percentiles.
"""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common, dashboard

from dashboards import schema
from dashboards.common import (
    CELL,
    DEVICE,
    SITE,
    BuildConfig,
    device_filters,
    device_variables,
    equals,
    new_dashboard,
    one_of,
    query,
    stat_panel,
    table_panel,
    timeseries_panel,
    where,
    with_panels,
    with_variables,
)
from dashboards.influxql import ident, idents, literal
from events.model import Action, Source, State

UID: Final = "gridwatch-alarm-kpi"
TITLE: Final = "GridWatch / Alarm KPIs (ISA-18.2, EEMUA 191)"
FLOOD_RULE: Final = "flood_control"
"""The rule id of flood-control parents (`events.manager.FLOOD_RULE`, which dashboards may
not import: it pulls in the store; a test keeps the two equal). Parents group alarms
already counted, so they are no alarms themselves."""
FLOOD_ALARMS: Final = 10
"""EEMUA 191 / ISA-18.2: more than this many alarms in 10 minutes is a flood
(`events.kpi.Thresholds.flood_alarms`, checked by a test)."""
TOP_N: Final = 10
LEVELS: Final = {"10m": (1, 2), "1h": (6, 12), "1d": (150, 300)}
"""EEMUA 191 "very likely acceptable" and "maximum manageable" alarms per 10 min, hour
and day (`events.kpi.EEMUA_191`, checked by a test)."""
PERIOD_NAMES: Final = {"10m": "10 minutes", "1h": "hour", "1d": "day"}
STANDING: Final = (State.ACTIVE_UNACKNOWLEDGED, State.ACTIVE_ACKNOWLEDGED)
WAITING: Final = (State.ACTIVE_UNACKNOWLEDGED, State.RETURNED_UNACKNOWLEDGED)
RETURNED: Final = (State.RETURNED_UNACKNOWLEDGED, State.CLEARED)

GREEN, YELLOW, ORANGE, RED, DARK_RED = "green", "#EAB839", "orange", "red", "dark-red"


def _events_of_alarm_system() -> list[str]:
    """The site/cell/device filters, without flood parents and residents' reports."""
    ev = schema.security_event()
    return [
        *device_filters(ev, SITE, CELL, DEVICE),
        f"{ident(ev.tag('rule'))} != {literal(FLOOD_RULE)}",
        f"{ident(ev.tag('source'))} != {literal(Source.REPORT.value)}",
    ]


def alarms_where() -> str:
    """`WHERE` of the alarms: raises, and repeats of an event whose condition had returned."""
    ev = schema.security_event()
    again = (
        f"({equals(ev.tag('action'), Action.REPEAT.value)} AND "
        f"{one_of(ev.field('from_state'), [s.value for s in RETURNED])})"
    )
    return where(
        *_events_of_alarm_system(), f"({equals(ev.tag('action'), Action.RAISE.value)} OR {again})"
    )


def alarm_counts(period: str, *, by_site: bool = False) -> str:
    """Alarms per clock-aligned `period` (an InfluxQL duration), empty periods as 0."""
    ev = schema.security_event()
    by = f", {ident(ev.tag('site'))}" if by_site else ""
    return (
        f"SELECT count({ident(ev.field('event_id'))}) AS {ident('alarms')} "
        f"FROM {ident(ev.name)} " + alarms_where() + f" GROUP BY time({period}){by} fill(0)"
    )


def average_rate(period: str) -> str:
    """Mean alarms per period over the time picker's range."""
    return (
        f"SELECT mean({ident('alarms')}) AS {ident('per ' + PERIOD_NAMES[period])} "
        f"FROM ({alarm_counts(period)})"
    )


def peak_10min() -> str:
    return f"SELECT max({ident('alarms')}) AS {ident('peak')} FROM ({alarm_counts('10m')})"


def time_in_flood() -> str:
    """Percent of the 10-minute periods with more than FLOOD_ALARMS alarms: two subqueries
    merged, one with every period, one with the flooded ones."""
    periods = alarm_counts("10m")
    flooded = (
        f"SELECT {ident('alarms')} AS {ident('flooded')} FROM ({periods}) "
        f"WHERE {ident('alarms')} > {FLOOD_ALARMS}"
    )
    return (
        f"SELECT 100 * count({ident('flooded')}) / count({ident('alarms')}) "
        f"AS {ident('in flood')} FROM ({periods}), ({flooded})"
    )


def _per_point() -> str:
    ev = schema.security_event()
    return (
        f"SELECT count({ident(ev.field('event_id'))}) AS {ident('alarms')} "
        f"FROM {ident(ev.name)} "
        + alarms_where()
        + f" GROUP BY {idents([ev.tag('rule'), ev.tag('device')])}"
    )


def top_points() -> str:
    ev = schema.security_event()
    return (
        f"SELECT top({ident('alarms')}, {TOP_N}) AS {ident('alarms')}, "
        f"{idents([ev.tag('rule'), ev.tag('device')])} FROM ({_per_point()})"
    )


def top_share() -> str:
    """Percent of all alarms carried by the TOP_N points."""
    ev = schema.security_event()
    top = f"SELECT top({ident('alarms')}, {TOP_N}) AS {ident('top')} FROM ({_per_point()})"
    every = (
        f"SELECT {ident(ev.field('event_id'))} AS {ident('alarm')} FROM {ident(ev.name)} "
        + alarms_where()
    )
    return (
        f"SELECT 100 * sum({ident('top')}) / count({ident('alarm')}) AS {ident('top share')} "
        f"FROM ({top}), ({every})"
    )


def chattering_points() -> str:
    """Points with 3 or more alarms in one clock minute (the hub slides its minute)."""
    ev = schema.security_event()
    per_minute = (
        f"SELECT count({ident(ev.field('event_id'))}) AS {ident('alarms')} "
        f"FROM {ident(ev.name)} "
        + alarms_where()
        + f" GROUP BY time(1m), {idents([ev.tag('rule'), ev.tag('device')])}"
    )
    return (
        f"SELECT max({ident('alarms')}) AS {ident('most in 1 min')} FROM ({per_minute}) "
        f"WHERE {ident('alarms')} >= 3 GROUP BY {idents([ev.tag('rule'), ev.tag('device')])}"
    )


def events_in_state(name: str, states: tuple[State, ...]) -> str:
    """How many events' newest transition in the range left them in one of `states`."""
    ev = schema.security_event()
    series = [ev.tag(t) for t in ("site", "cell", "device", "rule")]
    latest = (
        f"SELECT last({ident(ev.field('event_id'))}) AS {ident('event_id')}, "
        f"{ident(ev.tag('state'))} FROM {ident(ev.name)} "
        + where(*_events_of_alarm_system())
        + f" GROUP BY {idents(series)}"
    )
    return (
        f"SELECT count({ident('event_id')}) AS {ident(name)} FROM ({latest}) "
        f"WHERE {one_of(ev.tag('state'), [s.value for s in states])}"
    )


def transitions_per_hour(action: Action, name: str) -> str:
    ev = schema.security_event()
    return (
        f"SELECT count({ident(ev.field('event_id'))}) AS {ident(name)} FROM {ident(ev.name)} "
        + where(*_events_of_alarm_system(), equals(ev.tag("action"), action.value))
        + " GROUP BY time(1h) fill(0)"
    )


def _steps(*steps: tuple[float, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(dashboard.ThresholdsMode.ABSOLUTE)
        .steps(
            [dashboard.Threshold(value=None, color=GREEN)]
            + [dashboard.Threshold(value=value, color=color) for value, color in steps]
        )
    )


def _eemua(period: str, *, flood: bool = False) -> dash.ThresholdsConfig:
    acceptable, manageable = LEVELS[period]
    steps = [(float(acceptable), YELLOW), (float(manageable), RED)]
    if flood:
        steps.append((float(FLOOD_ALARMS), DARK_RED))
    return _steps(*steps)


def rate_panel(period: str, span: int = 8) -> timeseries.Panel:
    acceptable, manageable = LEVELS[period]
    name = PERIOD_NAMES[period]
    flood = period == "10m"
    note = f"; above {FLOOD_ALARMS} is a flood" if flood else ""
    utc = " Days are UTC days (InfluxDB's GROUP BY time)." if period == "1d" else ""
    return (
        timeseries_panel(
            f"Alarms per {name}",
            f"Alarms per clock-aligned {name}, per site, against EEMUA 191: acceptable "
            f"at most {acceptable}, maximum manageable {manageable}{note}. An alarm is a "
            f"raise or a re-activation; flood parents and residents' reports are not.{utc}",
            [query(alarm_counts(period, by_site=True)).alias(f"$tag_{SITE}")],
            span=span,
        )
        .draw_style(common.GraphDrawStyle.BARS)
        .fill_opacity(70)
        .thresholds(_eemua(period, flood=flood))
        .thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
            )
        )
        .min(0)
        .decimals(0)
    )


def _rate_stat(period: str) -> stat.Panel:
    name = PERIOD_NAMES[period]
    acceptable, manageable = LEVELS[period]
    return (
        stat_panel(
            f"Average per {name}",
            f"Mean alarms per {name} over the time range (selected sites together), "
            f"against EEMUA 191: acceptable at most {acceptable}, manageable at most "
            f"{manageable}. Grafana colours a value at a level in the band above it.",
            [query(average_rate(period))],
            span=4,
        )
        .thresholds(_eemua(period))
        .decimals(2)
    )


def build(config: BuildConfig) -> dashboard.Dashboard:
    hub_kpis = (
        dash.DashboardLink("Alarm KPIs on the hub's desk (exact, with times to acknowledge)")
        .type(dashboard.DashboardLinkType.LINK)
        .url(f"{config.hub}/desk/${{{SITE}}}/kpi")
        .target_blank(True)
    )
    panels: list[timeseries.Panel | stat.Panel | table.Panel] = [
        rate_panel("10m"),
        rate_panel("1h"),
        rate_panel("1d"),
        _rate_stat("10m"),
        _rate_stat("1h"),
        _rate_stat("1d"),
        stat_panel(
            "Peak 10 minutes",
            f"Most alarms in one clock-aligned 10 minutes (the hub slides its window, so "
            f"its peak can be higher). More than {FLOOD_ALARMS} is a flood.",
            [query(peak_10min())],
            span=4,
        ).thresholds(_eemua("10m", flood=True)),
        stat_panel(
            "Time in flood",
            f"Share of the 10-minute periods with more than {FLOOD_ALARMS} alarms. "
            "Target: under 1 %.",
            [query(time_in_flood())],
            unit="percent",
            span=4,
        )
        .thresholds(_steps((1.0, RED)))
        .no_value("0")
        .decimals(1),
        stat_panel(
            "Top-10 share",
            f"Share of all alarms from the {TOP_N} alarm points (rule and device) with the "
            "most. ISA-18.2: about 1 % to 5 % at most; meaningful with many points.",
            [query(top_share())],
            unit="percent",
            span=4,
        )
        .thresholds(_steps((5.0, RED)))
        .decimals(0),
        stat_panel(
            "Standing, shelved, suppressed, out of service",
            "Events by the state their newest transition in the time range left them in: "
            "standing (active, on the list), shelved, suppressed (flood control) and out of "
            "service. Events not touched in the range are not counted (the desk's KPI page "
            "counts every open event).",
            [
                query(events_in_state("standing", STANDING)),
                query(events_in_state("shelved", (State.SHELVED,)), "B"),
                query(events_in_state("suppressed", (State.SUPPRESSED,)), "C"),
                query(events_in_state("out of service", (State.OUT_OF_SERVICE,)), "D"),
            ],
            span=16,
        ).no_value("0"),
        stat_panel(
            "Waiting for acknowledgement",
            "Events whose newest transition left them unacknowledged (active or returned).",
            [query(events_in_state("unacknowledged", WAITING))],
            span=8,
        ).no_value("0"),
        timeseries_panel(
            "Alarms, acknowledgements and resolutions per hour",
            "How fast the desk keeps up: InfluxQL cannot pair an alarm with its "
            "acknowledgement, so the times to acknowledge and to resolve (p50, p90, max) are "
            "on the hub's desk KPI page (dashboard link above); here are the flows.",
            [
                query(alarm_counts("1h")).alias("alarms"),
                query(transitions_per_hour(Action.ACKNOWLEDGE, "acknowledged"), "B"),
                query(transitions_per_hour(Action.CLOSE, "resolved"), "C"),
            ],
            span=24,
        ),
        table_panel(
            f"Top {TOP_N} alarm points",
            "The alarm points (rule and device) with the most alarms in the time range.",
            [query(top_points())],
        ).sort_by([common_builders.TableSortByFieldState().display_name("alarms").desc(True)]),
        table_panel(
            "Chattering alarm points",
            "Alarm points with 3 or more alarms in one clock minute (ISA-TR18.2.5's rule "
            "of thumb); the most in one minute. Target: none.",
            [query(chattering_points())],
        ),
    ]
    board = new_dashboard(
        UID,
        TITLE,
        "Alarm load against ISA-18.2 / EEMUA 191: rates, floods, top points, standing "
        "alarms and how fast they are acknowledged.",
    )
    board = with_variables(board, device_variables()).links([hub_kpis])
    return with_panels(board, panels).build()
