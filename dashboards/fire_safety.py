"""Fire safety: smoke, temperature and eCO2 per detector and cell; alarms and faults."""

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
    query,
    table_panel,
    timeseries_panel,
    where,
    with_panels,
    with_variables,
)
from dashboards.influxql import INTERVAL, ident, idents
from sensors.base import EVENT, TELEMETRY
from sensors.smoke import SmokeEventType

UID: Final = "gridwatch-fire"
TITLE: Final = "GridWatch / Fire safety"


def _per(func: str, field: str, group: str) -> str:
    sm = schema.SMOKE
    return (
        f"SELECT {func}({ident(sm.field(field))}) FROM {ident(sm.name)} "
        + where(equals(sm.tag("channel"), TELEMETRY), *filters(sm))
        + f" GROUP BY time({INTERVAL}), {ident(sm.tag(group))} fill(none)"
    )


def build(config: BuildConfig) -> dashboard.Dashboard:
    sm = schema.SMOKE
    unit = {spec.name: spec.unit for spec in schema.kinds()[sm.name].fields}
    panels = [
        timeseries_panel(
            "Obscuration per detector",
            f"Smoke obscuration ({unit['obscuration']}), mean per interval.",
            [query(_per("mean", "obscuration", "device")).alias("$tag_device")],
        ),
        timeseries_panel(
            "Temperature per detector",
            f"Air temperature ({unit['temperature']}), mean per interval.",
            [query(_per("mean", "temperature", "device")).alias("$tag_device")],
            unit="celsius",
        ),
        timeseries_panel(
            "eCO2 per detector",
            f"Equivalent CO2 ({unit['eco2']}) from multi-sensor boards, mean per interval.",
            [query(_per("mean", "eco2", "device")).alias("$tag_device")],
            unit="ppm",
        ),
        timeseries_panel(
            "Worst obscuration per cell",
            "Highest obscuration of any detector in each grid cell.",
            [query(_per("max", "obscuration", "cell")).alias("$tag_cell")],
        ),
        table_panel(
            "Alarms and faults per detector",
            "Alarm and fault events reported by detectors in the time range.",
            [
                query(
                    f"SELECT count({ident(sm.field('event'))}) AS {ident(name)} "
                    f"FROM {ident(sm.name)} "
                    + where(
                        equals(sm.tag("channel"), EVENT),
                        equals(sm.field("event"), literal_in(name, SmokeEventType)),
                        *filters(sm),
                    )
                    + f" GROUP BY {idents([sm.tag('cell'), sm.tag('device')])}",
                    ref,
                )
                for name, ref in (("alarm", "A"), ("fault", "B"))
            ],
        ),
        table_panel(
            "Detectors in alarm now",
            "Last reported alarm, fault and self-test flags per detector.",
            [
                query(
                    f"SELECT last({ident(sm.field('alarm'))}) AS {ident('alarm')} "
                    f"FROM {ident(sm.name)} "
                    + where(equals(sm.tag("channel"), TELEMETRY), *filters(sm))
                    + f" GROUP BY {idents([sm.tag('cell'), sm.tag('device')])}"
                )
            ],
        ),
    ]
    board = new_dashboard(UID, TITLE, "Smoke detectors: obscuration, temperature, eCO2, alarms.")
    board = with_variables(board, device_variables())
    return with_panels(board, panels).build()
