"""Parking: lot occupancy against capacity, bays per zone, overstays and fire-lane use."""

from __future__ import annotations

from typing import Final

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
    filters,
    new_dashboard,
    one_of,
    query,
    table_panel,
    timeseries_panel,
    where,
    with_panels,
    with_variables,
)
from dashboards.influxql import INTERVAL, ident, idents
from events.model import Action
from sensors.base import TELEMETRY

UID: Final = "gridwatch-parking"
TITLE: Final = "GridWatch / Parking"
INCIDENT_COLUMNS: Final = ("event_id", "title", "incident", "severity", "cell", "device")


def build(config: BuildConfig) -> dashboard.Dashboard:
    pk = schema.PARKING
    ev = schema.security_event()
    telemetry = equals(pk.tag("channel"), TELEMETRY)
    occupancy = timeseries_panel(
        "Lot occupancy against capacity",
        "Vehicles counted in each lot and its capacity; above capacity means a drifting counter "
        "or a full lot.",
        [
            query(
                f"SELECT last({ident(pk.field('occupancy'))}) AS {ident('occupancy')}, "
                f"last({ident(pk.field('capacity'))}) AS {ident('capacity')} "
                f"FROM {ident(pk.name)} "
                + where(telemetry, *filters(pk))
                + f" GROUP BY time({INTERVAL}), {ident(pk.tag('lot'))} fill(previous)"
            ).alias(f"$tag_{pk.tag('lot')} $col")
        ],
        span=24,
    )
    bays = table_panel(
        "Bays occupied now, per zone",
        "Last reported state of each bay sensor, grouped by zone.",
        [
            query(
                f"SELECT last({ident(pk.field('occupied'))}) AS {ident('occupied')} "
                f"FROM {ident(pk.name)} "
                + where(telemetry, *filters(pk))
                + f" GROUP BY {idents([pk.tag('zone'), pk.tag('cell'), pk.tag('bay_id')])}"
            )
        ],
    )
    incidents = table_panel(
        "Overstays, fire-lane and bay violations",
        "Parking incidents raised by the rules, newest first.",
        [
            query(
                f"SELECT {idents(ev.columns(*INCIDENT_COLUMNS))} "
                f"FROM {ident(ev.name)} "
                + where(
                    equals(ev.tag("action"), Action.RAISE.value),
                    one_of(ev.tag("incident"), schema.PARKING_INCIDENTS),
                    *device_filters(ev, SITE, CELL, DEVICE),
                )
                + " ORDER BY time DESC LIMIT 100"
            )
        ],
    )
    per_hour = timeseries_panel(
        "Parking incidents per hour",
        "Raises per hour, by incident kind.",
        [
            query(
                f"SELECT count({ident(ev.field('event_id'))}) FROM {ident(ev.name)} "
                + where(
                    equals(ev.tag("action"), Action.RAISE.value),
                    one_of(ev.tag("incident"), schema.PARKING_INCIDENTS),
                    *device_filters(ev, SITE, CELL, DEVICE),
                )
                + f" GROUP BY time(1h), {ident(ev.tag('incident'))} fill(0)"
            ).alias(f"$tag_{ev.tag('incident')}")
        ],
        span=24,
    )
    board = new_dashboard(UID, TITLE, "Car parks and bays: occupancy, overstays, fire lanes.")
    board = with_variables(board, device_variables())
    return with_panels(board, [occupancy, bays, incidents, per_hour]).build()
