"""Hub health: the hub's own counters (`hub_stats`), as rates where they are cumulative."""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.models import dashboard

from dashboards import schema
from dashboards.common import (
    HUB,
    BuildConfig,
    device_variables,
    new_dashboard,
    query,
    stat_panel,
    timeseries_panel,
    variable,
    where,
    with_panels,
    with_variables,
)
from dashboards.influxql import INTERVAL, ident, var_match

UID: Final = "gridwatch-hub-health"
TITLE: Final = "GridWatch / Hub health"


def _rates(*fields: str) -> str:
    """Per-second rates of cumulative counters (a hub restart is a reset, not a dip)."""
    hub = schema.HUB_STATS_M
    selected = ", ".join(
        f"non_negative_derivative(last({ident(hub.field(f))}), 1s) AS {ident(f)}" for f in fields
    )
    return (
        f"SELECT {selected} FROM {ident(hub.name)} "
        + where(var_match(hub.tag(HUB), HUB))
        + f" GROUP BY time({INTERVAL}), {ident(hub.tag(HUB))} fill(none)"
    )


def _gauge(field: str) -> str:
    hub = schema.HUB_STATS_M
    return (
        f"SELECT last({ident(hub.field(field))}) AS {ident(field)} FROM {ident(hub.name)} "
        + where(var_match(hub.tag(HUB), HUB))
        + f" GROUP BY time({INTERVAL}), {ident(hub.tag(HUB))} fill(none)"
    )


def _difference(*fields: str) -> str:
    """Counters' increase per interval."""
    hub = schema.HUB_STATS_M
    selected = ", ".join(
        f"non_negative_difference(last({ident(hub.field(f))})) AS {ident(f)}" for f in fields
    )
    return (
        f"SELECT {selected} "
        f"FROM {ident(hub.name)} "
        + where(var_match(hub.tag(HUB), HUB))
        + f" GROUP BY time({INTERVAL}), {ident(hub.tag(HUB))} fill(none)"
    )


def build(config: BuildConfig) -> dashboard.Dashboard:
    hub = schema.HUB_STATS_M
    alias = f"$tag_{hub.tag(HUB)} $col"
    panels = [
        timeseries_panel(
            "Messages per second",
            "Received, stored and rejected per second (non_negative_derivative of the counters).",
            [query(_rates("received", "stored", "rejected")).alias(alias)],
            unit="reqps",
        ),
        timeseries_panel(
            "Dead letters and write failures per second",
            "Refused messages filed as dead letters, and failed InfluxDB writes.",
            [query(_rates("dead_lettered", "write_failures", "backpressure_waits")).alias(alias)],
            unit="reqps",
        ),
        timeseries_panel(
            "Spool backlog",
            "Bytes waiting in the durable spool for InfluxDB; it grows while InfluxDB is down.",
            [query(_gauge("spool_bytes")).alias(alias)],
            unit="bytes",
        ),
        timeseries_panel(
            "Writer lag",
            "Seconds between a reading's arrival and its write to InfluxDB.",
            [query(_gauge("lag_s")).alias(alias)],
            unit="s",
        ),
        timeseries_panel(
            "Detection lag",
            "How far the rules are behind the log, in seconds of event time: alarms wait "
            "this long behind the readings before them (0 when they keep up).",
            [query(_gauge("rules_lag_s")).alias(alias)],
            unit="s",
        ),
        timeseries_panel(
            "Time to event (p99)",
            "Event time to the event's commit, 99th percentile since the hub started: "
            "publish→event for devices that stamp their readings.",
            [query(_gauge("rules_event_latency_p99_ms")).alias(alias)],
            unit="ms",
        ),
        timeseries_panel(
            "Late readings",
            "Readings that reached the rules after timers past their time had fired "
            "(counter difference): delays longer than events.allowed_lateness_s, or a "
            "device clock running ahead. Beside them, readings dated ahead of the hub's "
            "clock on arrival (more than 2 s): only a fast clock does that. `gridwatch "
            "status` names what the late ones came behind, and the fast devices.",
            [query(_difference("rules_late_readings", "readings_ahead")).alias(alias)],
        ),
        timeseries_panel(
            "Storage refusing writes",
            "Seconds the spool's disk has refused writes (full, I/O error): nothing is "
            "acknowledged meanwhile and the broker keeps the backlog (0 while it takes them).",
            [query(_gauge("storage_blocked_s")).alias(alias)],
            unit="s",
        ),
        timeseries_panel(
            "Broker sessions lost",
            "Reconnects where the broker no longer had the hub's session: what it had queued "
            "was lost (counter difference).",
            [query(_difference("sessions_lost")).alias(alias)],
        ),
        timeseries_panel(
            "Broker reconnects",
            "MQTT reconnects per interval (counter difference).",
            [query(_difference("reconnects")).alias(alias)],
        ),
        stat_panel(
            "Connected / uptime",
            "Is the hub connected to the broker now, and for how long it has run.",
            [
                query(
                    f"SELECT last({ident(hub.field('connected'))}) AS {ident('connected')}, "
                    f"last({ident(hub.field('uptime_s'))}) AS {ident('uptime')} "
                    f"FROM {ident(hub.name)} "
                    + where(var_match(hub.tag(HUB), HUB))
                    + f" GROUP BY {ident(hub.tag(HUB))}"
                ).table()
            ],
            span=12,
        ),
    ]
    hub_var = variable(
        HUB, "Hub", f"SHOW TAG VALUES FROM {ident(hub.name)} WITH KEY = {ident(hub.tag(HUB))}"
    )
    board = new_dashboard(UID, TITLE, "The hub's own health: throughput, refusals, spool, lag.")
    board = with_variables(board, [*device_variables(), hub_var])
    return with_panels(board, panels).build()
