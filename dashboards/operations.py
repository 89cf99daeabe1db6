"""Operations overview: what is open now, what came in lately, is ingest healthy."""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import dashboard

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
    query,
    stat_panel,
    table_panel,
    timeseries_panel,
    where,
    with_panels,
    with_variables,
)
from dashboards.influxql import INTERVAL, ident, idents
from events.model import Action, State

UID: Final = "gridwatch-operations"
TITLE: Final = "GridWatch / Operations overview"
NEWEST_COLUMNS: Final = ("event_id", "title", "severity", "rule", "cell", "device", "assignee")


def current_events_query() -> str:
    """The latest transition of each open event (subquery: last point per event series,
    its state and severity tags carried along by the `last()` selector)."""
    ev = schema.security_event()
    series = [ev.tag(t) for t in ("site", "cell", "device", "rule")]
    inner = (
        f"SELECT last({ident(ev.field('event_id'))}) AS {ident('event_id')}, "
        f"{idents([ev.tag('state'), ev.tag('severity'), ev.tag('rule')])} "
        f"FROM {ident(ev.name)} "
        + where(*device_filters(ev, SITE, CELL, DEVICE))
        + f" GROUP BY {idents(series)}"
    )
    return (
        f"SELECT {idents(ev.columns('event_id', 'state', 'severity', 'rule'))} FROM ({inner}) "
        f"WHERE {ident(ev.tag('state'))} != '{State.CLOSED.value}'"
    )


def build(config: BuildConfig) -> dashboard.Dashboard:
    ev = schema.security_event()
    hub = schema.HUB_STATS_M
    desk_link = (
        dash.DashboardLink("Open in the event desk")
        .type(dashboard.DashboardLinkType.LINK)
        .url(f"{config.hub}/desk/events/${{__data.fields.{ev.field('event_id')}}}")
        .target_blank(True)
    )
    by_severity_state = table_panel(
        "Active events by severity and state",
        "Events not closed, counted by severity and lifecycle state (ISA-18.2).",
        [query(current_events_query())],
    ).with_transformation(
        dashboard.DataTransformerConfig(
            id_val="groupBy",
            options={
                "fields": {
                    ev.tag("severity"): {"aggregations": [], "operation": "groupby"},
                    ev.tag("state"): {"aggregations": [], "operation": "groupby"},
                    ev.field("event_id"): {"aggregations": ["count"], "operation": "aggregate"},
                }
            },
        )
    )
    newest = table_panel(
        "Newest events",
        "The most recent raises; click a row to open it in the event desk.",
        [
            query(
                f"SELECT {idents(ev.columns(*NEWEST_COLUMNS))} "
                f"FROM {ident(ev.name)} "
                + where(
                    equals(ev.tag("action"), Action.RAISE.value),
                    *device_filters(ev, SITE, CELL, DEVICE),
                )
                + " ORDER BY time DESC LIMIT 50"
            )
        ],
        span=24,
    ).data_links([desk_link])
    per_hour = timeseries_panel(
        "Events per hour",
        "Events raised per hour, by severity.",
        [
            query(
                f"SELECT count({ident(ev.field('event_id'))}) FROM {ident(ev.name)} "
                + where(
                    equals(ev.tag("action"), Action.RAISE.value),
                    *device_filters(ev, SITE, CELL, DEVICE),
                )
                + f" GROUP BY time(1h), {ident(ev.tag('severity'))} fill(0)"
            ).alias(f"$tag_{ev.tag('severity')}")
        ],
    )
    rate = "non_negative_derivative(last({}), 1s)"
    ingest = stat_panel(
        "Ingest health",
        "Messages received and rejected per second, spool backlog and writer lag (hub_stats).",
        [
            query(
                f"SELECT {rate.format(ident(hub.field('received')))} AS {ident('received/s')}, "
                f"{rate.format(ident(hub.field('rejected')))} AS {ident('rejected/s')} "
                f"FROM {ident(hub.name)} " + where() + f" GROUP BY time({INTERVAL}) fill(none)"
            ),
            query(
                f"SELECT last({ident(hub.field('spool_bytes'))}) AS {ident('spool')} "
                f"FROM {ident(hub.name)} " + where(),
                "B",
            ),
            query(
                f"SELECT last({ident(hub.field('lag_s'))}) AS {ident('lag')} "
                f"FROM {ident(hub.name)} " + where(),
                "C",
            ),
        ],
        span=12,
    )
    board = new_dashboard(UID, TITLE, "Open events, newest raises and ingest health at a glance.")
    board = with_variables(board, device_variables())
    return with_panels(board, [by_severity_state, ingest, newest, per_hour]).build()
