"""Access control: door traffic, grants and denials, forced and held doors, per door and cell."""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.models import dashboard

from dashboards import schema
from dashboards.common import (
    BuildConfig,
    device_variables,
    equals,
    filters,
    literal_in,
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
from sensors.access import AccessEventType
from sensors.base import EVENT, TELEMETRY

UID: Final = "gridwatch-access"
TITLE: Final = "GridWatch / Access control"


def _event(name: str) -> str:
    return literal_in(name, AccessEventType)


def build(config: BuildConfig) -> dashboard.Dashboard:
    ac = schema.ACCESS
    event, channel = ac.field("event"), ac.tag("channel")
    per_door = idents([ac.tag("cell"), ac.tag("device"), ac.tag("door")])

    def count_of(kind: str, ref: str) -> str:
        return (
            f"SELECT count({ident(event)}) AS {ident(kind)} FROM {ident(ac.name)} "
            + where(equals(channel, EVENT), equals(event, _event(kind)), *filters(ac))
            + f" GROUP BY time({INTERVAL}) fill(0)"
        )

    kinds = ("door_opened", "access_granted", "access_denied", "door_forced", "door_held")
    traffic = timeseries_panel(
        "Door events",
        "Openings, grants, denials, forced and held-open doors per interval.",
        [query(count_of(k, ref), ref).alias("$col") for k, ref in zip(kinds, "ABCDE", strict=True)],
    )
    denials = table_panel(
        "Denials per door",
        "Access denied per door and cell in the time range.",
        [
            query(
                f"SELECT count({ident(event)}) AS {ident('denials')} FROM {ident(ac.name)} "
                + where(
                    equals(channel, EVENT), equals(event, _event("access_denied")), *filters(ac)
                )
                + f" GROUP BY {per_door}"
            )
        ],
    )
    forced = table_panel(
        "Forced and held-open doors",
        "Doors opened without a grant, or left open too long, per door and cell.",
        [
            query(
                f"SELECT count({ident(event)}) AS {ident('events')} FROM {ident(ac.name)} "
                + where(
                    equals(channel, EVENT),
                    one_of(event, [_event("door_forced"), _event("door_held")]),
                    *filters(ac),
                )
                + f" GROUP BY {per_door}"
            )
        ],
    )
    open_now = table_panel(
        "Door state now",
        "Last reported contact and lock state per door.",
        [
            query(
                f"SELECT last({ident(ac.field('door_open'))}) AS {ident('open')} "
                f"FROM {ident(ac.name)} "
                + where(equals(channel, TELEMETRY), *filters(ac))
                + f" GROUP BY {per_door}",
                "A",
            ),
        ],
        span=24,
    )
    board = new_dashboard(UID, TITLE, "Door controllers: openings, grants, denials, forced/held.")
    board = with_variables(board, device_variables())
    return with_panels(board, [traffic, denials, forced, open_now]).build()
