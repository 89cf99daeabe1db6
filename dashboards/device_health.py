"""Device health: last seen, offline, battery, faults and reporting gaps."""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.models import dashboard

from dashboards import schema
from dashboards.common import (
    BuildConfig,
    device_filters,
    device_variables,
    equals,
    filters,
    literal_in,
    new_dashboard,
    query,
    table_panel,
    timeseries_panel,
    where,
    with_panels,
    with_variables,
)
from dashboards.influxql import INTERVAL, ident, idents
from sensors.base import EVENT, TELEMETRY
from sensors.parking import ParkingEventType
from sensors.smoke import SmokeEventType

UID: Final = "gridwatch-device-health"
TITLE: Final = "GridWatch / Device health"

_KINDS: Final = (schema.ACCESS, schema.SMOKE, schema.PARKING)


def _from(measurements: tuple[schema.Measurement, ...]) -> str:
    return "FROM " + idents(m.name for m in measurements)


def build(config: BuildConfig) -> dashboard.Dashboard:
    status = schema.DEVICE_STATUS_M
    seq = {m.field("seq") for m in _KINDS}.pop()
    common = schema.ACCESS  # the common tags are the same in every kind's measurement
    last_seen = table_panel(
        "Last seen",
        "Time of each device's newest message (any channel) and its counter.",
        [
            query(
                f"SELECT last({ident(seq)}) AS {ident('seq')} {_from(_KINDS)} "
                + where(*filters(common))
                + f" GROUP BY {idents(common.columns('kind', 'cell', 'device'))}"
            )
        ],
    )
    online = table_panel(
        "Online / offline",
        "Last retained status of each device (the MQTT will says offline).",
        [
            query(
                f"SELECT last({ident(status.field('state'))}) AS {ident('state')} "
                f"FROM {ident(status.name)} "
                + where(*device_filters(status, "site", "kind", "device"))
                + f" GROUP BY {idents([status.tag('kind'), status.tag('device')])}"
            )
        ],
    )
    battery_kinds = tuple(m for m in _KINDS if "battery" in m.fields)
    battery = timeseries_panel(
        "Battery",
        "Battery charge of door controllers and detectors.",
        [
            query(
                f"SELECT last({ident(battery_kinds[0].field('battery'))}) {_from(battery_kinds)} "
                + where(equals(common.tag("channel"), TELEMETRY), *filters(common))
                + f" GROUP BY time({INTERVAL}), {ident(common.tag('device'))} fill(none)"
            ).alias("$tag_device")
        ],
        unit="percent",
    )
    fault = literal_in("fault", SmokeEventType)
    faults = table_panel(
        "Faults and tamper",
        "Fault and tamper events per device in the time range.",
        [
            query(
                f"SELECT count({ident(schema.SMOKE.field('event'))}) AS {ident(name)} "
                f"{_from((schema.SMOKE, schema.PARKING))} "
                + where(
                    equals(common.tag("channel"), EVENT),
                    equals(schema.SMOKE.field("event"), literal_in(name, ParkingEventType)),
                    *filters(common),
                )
                + f" GROUP BY {idents([common.tag('kind'), common.tag('device')])}",
                ref,
            )
            for name, ref in ((fault, "A"), (literal_in("tamper", SmokeEventType), "B"))
        ],
    )
    gaps = timeseries_panel(
        "Messages per device",
        "Messages per interval and device; a drop to zero is a reporting gap.",
        [
            query(
                f"SELECT count({ident(seq)}) {_from(_KINDS)} "
                + where(*filters(common))
                + f" GROUP BY time({INTERVAL}), {ident(common.tag('device'))} fill(0)"
            ).alias("$tag_device")
        ],
    )
    lost = timeseries_panel(
        "Lost messages (sequence gaps)",
        "Counter jumps above 1 between consecutive messages of a device: messages lost "
        "before the hub.",
        [
            query(
                f"SELECT max({ident('jump')}) "
                f"FROM (SELECT difference({ident(seq)}) AS {ident('jump')} "
                f"{_from(_KINDS)} "
                + where(*filters(common))
                + f" GROUP BY {ident(common.tag('device'))}) "
                + where(f"{ident('jump')} > 1")
                + f" GROUP BY time({INTERVAL}), {ident(common.tag('device'))} fill(none)"
            ).alias("$tag_device")
        ],
    )
    board = new_dashboard(UID, TITLE, "Is every device alive, powered and reporting?")
    board = with_variables(board, device_variables())
    return with_panels(board, [last_seen, online, battery, faults, gaps, lost]).build()
