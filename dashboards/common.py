"""What every GridWatch dashboard shares: the datasource, variables, event annotations,
panel helpers, and the settings a build needs (`BuildConfig`)."""

from __future__ import annotations

import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import dashboard

from dashboards import schema
from dashboards.influxql import (
    PLUGIN_TYPE,
    TIME_FILTER,
    InfluxAnnotation,
    InfluxAnnotationQuery,
    InfluxQL,
    ident,
    idents,
    literal,
    var_match,
)
from events.model import Action

FOLDER_UID: Final = "gridwatch"
FOLDER_TITLE: Final = "GridWatch"
DATASOURCE_UID: Final = "gridwatch-influxdb"
DATASOURCE_NAME: Final = "GridWatch InfluxDB"
SCHEMA_VERSION: Final = 41
"""Grafana 11.6's dashboard schemaVersion: the schema the pinned SDK build targets."""
TAGS: Final = ["gridwatch"]

SITE, KIND, CELL, DEVICE, HUB = "site", "kind", "cell", "device", "hub"
"""Template variable names (also the tag names they filter, except `hub`)."""


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """Where the links and map layers point; nothing secret goes into dashboards."""

    hub_url: str = "http://127.0.0.1:18080"
    """The hub API base URL as the operators' browsers reach it (desk links, map layers)."""
    map_site: str = "yingyang"
    """Site whose cells and devices the Grid map's GeoJSON layers load (Grafana 11.6 does
    not interpolate variables in a GeoJSON layer's URL)."""
    map_api_key_param: bool = False
    """Append `?api_key=${map_api_key}` (a hidden dashboard variable) to the GeoJSON URLs."""

    @property
    def hub(self) -> str:
        return self.hub_url.rstrip("/")


def datasource_ref() -> dashboard.DataSourceRef:
    return dashboard.DataSourceRef(type_val=PLUGIN_TYPE, uid=DATASOURCE_UID)


def query(text: str, ref_id: str = "A") -> InfluxQL:
    return InfluxQL(datasource_ref(), text).ref_id(ref_id)


def where(*conditions: str) -> str:
    """`WHERE $timeFilter AND ...`: every panel query is bounded by the time picker."""
    return " AND ".join((f"WHERE {TIME_FILTER}", *conditions))


def device_filters(measurement: schema.Measurement, *names: str) -> list[str]:
    """`"tag" =~ /^$tag$/` for each variable whose tag the measurement carries."""
    return [var_match(measurement.tag(n), n) for n in names if n in measurement.tags]


def filters(measurement: schema.Measurement) -> list[str]:
    return device_filters(measurement, SITE, KIND, CELL, DEVICE)


def equals(name: str, value: str) -> str:
    return f"{ident(name)} = {literal(value)}"


def one_of(name: str, values: Iterable[str]) -> str:
    return "(" + " OR ".join(equals(name, v) for v in values) + ")"


def literal_in(value: str, allowed: object) -> str:
    """A value checked against a `typing.Literal` a sensor plugin declares."""
    if value not in typing.get_args(allowed):
        raise KeyError(f"{value!r} is not one of {typing.get_args(allowed)}")
    return value


def _tag_values_query(key: str, *conditions: str) -> str:
    text = f"SHOW TAG VALUES WITH KEY = {ident(key)}"
    return text + (" WHERE " + " AND ".join(conditions) if conditions else "")


def variable(name: str, label: str, text: str, regex: str | None = None) -> dash.QueryVariable:
    """A multi-value query variable whose All means `.*` (matches every series, including
    ones without the tag, e.g. `security_event` has no `kind`)."""
    builder = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(datasource_ref())
        .query(text)
        .refresh(dashboard.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(dashboard.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dashboard.VariableOption(selected=True, text="All", value="$__all"))
    )
    if regex is not None:
        builder = builder.regex(regex)
    return builder


def device_variables() -> list[dash.QueryVariable]:
    """site → kind → cell → device, each narrowed by the ones before it."""
    kinds = "|".join(sorted(schema.kinds()))
    return [
        variable(SITE, "Site", _tag_values_query(SITE)),
        variable(
            KIND,
            "Kind",
            _tag_values_query(KIND, var_match(SITE, SITE)),
            # Only registered sensor kinds (hides stray values written by tests or tools).
            regex=f"/^({kinds})$/",
        ),
        variable(
            CELL, "Grid cell", _tag_values_query(CELL, var_match(SITE, SITE), var_match(KIND, KIND))
        ),
        variable(
            DEVICE,
            "Device",
            _tag_values_query(
                DEVICE, var_match(SITE, SITE), var_match(KIND, KIND), var_match(CELL, CELL)
            ),
        ),
    ]


def events_annotation() -> InfluxAnnotation:
    """Security events as annotations on every time-series panel: one mark per raise."""
    ev = schema.security_event()
    text = (
        f"SELECT {idents(ev.columns('title', 'message', 'severity', 'rule', 'device'))} "
        f"FROM {ident(ev.name)} "
        + where(
            equals(ev.tag("action"), Action.RAISE.value), *device_filters(ev, SITE, CELL, DEVICE)
        )
    )
    return InfluxAnnotation(
        InfluxAnnotationQuery(
            name="Security events",
            datasource=datasource_ref(),
            icon_color="red",
            query=text,
            text_column=ev.field("message"),
            tags_columns=[ev.tag("severity"), ev.tag("rule"), ev.tag("device")],
            title_column=ev.field("title"),
        )
    )


def new_dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .timezone("browser")
        .time("now-6h", "now")
        .refresh("1m")
        .readonly()
        .annotation(events_annotation())
    )


def with_variables(
    board: dash.Dashboard, variables: Sequence[dash.QueryVariable]
) -> dash.Dashboard:
    for v in variables:
        board = board.with_variable(v)
    return board


def with_panels(
    board: dash.Dashboard, panels: Sequence[cogbuilder.Builder[dashboard.Panel]]
) -> dash.Dashboard:
    """Add panels in order; ids are their position (stable across builds)."""
    for number, panel in enumerate(panels, start=1):
        built = panel.build()
        built.id_val = number
        board = board.with_panel(_Built(built))
    return board


class _Built(cogbuilder.Builder[dashboard.Panel]):
    def __init__(self, panel: dashboard.Panel) -> None:
        self._panel = panel

    def build(self) -> dashboard.Panel:
        return self._panel


def timeseries_panel(
    title: str,
    description: str,
    targets: Sequence[InfluxQL],
    *,
    unit: str = "short",
    span: int = 12,
) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .targets(list(targets))
        .unit(unit)
        .height(8)
        .span(span)
    )


def table_panel(
    title: str, description: str, targets: Sequence[InfluxQL], *, span: int = 12
) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .targets([t.table() for t in targets])
        .height(8)
        .span(span)
    )


def stat_panel(
    title: str, description: str, targets: Sequence[InfluxQL], *, unit: str = "short", span: int = 6
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .targets(list(targets))
        .unit(unit)
        .height(4)
        .span(span)
    )
