"""Grid map: grid cells and devices from the hub API (GeoJSON), open events from InfluxDB.

Grafana's GeoJSON layer fetches its URL from the operator's browser, so the URLs point
at the hub API as browsers reach it (`BuildConfig.hub_url`). Devices are styled by the
`state` property the API derives from open events: ok, alarm, offline, low_battery.
"""

from __future__ import annotations

from typing import Final

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import geomap
from grafana_foundation_sdk.models import common, dashboard
from grafana_foundation_sdk.models import geomap as geomap_models

from dashboards import schema
from dashboards.common import (
    CELL,
    DEVICE,
    SITE,
    BuildConfig,
    datasource_ref,
    device_filters,
    device_variables,
    new_dashboard,
    query,
    table_panel,
    where,
    with_panels,
    with_variables,
)
from dashboards.influxql import ident, idents
from events.model import State

UID: Final = "gridwatch-grid-map"
TITLE: Final = "GridWatch / Grid map"
MAP_KEY_VARIABLE: Final = "map_api_key"

DEVICE_STATE_COLOURS: Final = {
    "ok": "green",
    "alarm": "red",
    "offline": "#8e8e8e",
    "low_battery": "orange",
    "out_of_service": "#5b5b5b",
    "shelved": "#6f8fb3",
}
"""The `state` values of devices.geojson (API_CONTRACT.md) and how each is drawn."""


def layer_url(config: BuildConfig, layer: str) -> str:
    """`/api/v1/sites/{site}/{cells|devices}.geojson` on the hub API."""
    url = f"{config.hub}/api/v1/sites/{config.map_site}/{layer}.geojson"
    return url + (f"?api_key=${{{MAP_KEY_VARIABLE}}}" if config.map_api_key_param else "")


def _geojson_layer(
    name: str, src: str, style: dict[str, object], rules: list[object]
) -> common_builders.MapLayerOptions:
    return (
        common_builders.MapLayerOptions()
        .type("geojson")
        .name(name)
        .config({"src": src, "style": style, "rules": rules})
        .tooltip(True)
    )


def device_rules() -> list[object]:
    return [
        {
            "check": {"property": "state", "operation": "eq", "value": state},
            "style": {"color": {"fixed": colour}, "opacity": 0.9, "size": {"fixed": 7}},
        }
        for state, colour in DEVICE_STATE_COLOURS.items()
    ]


def open_events_query() -> str:
    """Open events with their location: last transition per event series, not closed."""
    ev = schema.security_event()
    inner = (
        f"SELECT last({ident(ev.field('event_id'))}) AS {ident('event_id')}, "
        f"{idents(ev.columns('lat', 'lon', 'title', 'state', 'severity'))} "
        f"FROM {ident(ev.name)} "
        + where(*device_filters(ev, SITE, CELL, DEVICE))
        + f" GROUP BY {idents([ev.tag('site'), ev.tag('cell'), ev.tag('device'), ev.tag('rule')])}"
    )
    return (
        f"SELECT {idents(ev.columns('event_id', 'lat', 'lon', 'title', 'state', 'severity'))} "
        f"FROM ({inner}) "
        f"WHERE {ident(ev.tag('state'))} != '{State.CLOSED.value}'"
    )


def build(config: BuildConfig) -> dashboard.Dashboard:
    ev = schema.security_event()
    cells = _geojson_layer(
        "Grid cells",
        layer_url(config, "cells"),
        {"color": {"fixed": "blue"}, "opacity": 0.15, "lineWidth": 2},
        [],
    )
    devices = _geojson_layer(
        "Devices",
        layer_url(config, "devices"),
        {"color": {"fixed": "green"}, "opacity": 0.9, "size": {"fixed": 6}},
        device_rules(),
    )
    events = (
        common_builders.MapLayerOptions()
        .type("markers")
        .name("Open events")
        .location(
            common_builders.FrameGeometrySource()
            .mode(common.FrameGeometrySourceMode.COORDS)
            .latitude(ev.field("lat"))
            .longitude(ev.field("lon"))
        )
        .config(
            {
                "style": {
                    "color": {"fixed": "red"},
                    "size": {"fixed": 10},
                    "symbol": {"fixed": "img/icons/marker/triangle.svg", "mode": "fixed"},
                    "text": {"field": ev.field("title"), "mode": "field"},
                }
            }
        )
        .tooltip(True)
    )
    the_map = (
        geomap.Panel()
        .title("Grid map")
        .description(
            "Grid cells and devices from the hub API, devices coloured by state (ok, alarm, "
            "offline, low battery); open events from InfluxDB as red triangles."
        )
        .datasource(datasource_ref())
        .with_target(query(open_events_query()).table())
        .view(geomap.MapViewConfig().id("fit").all_layers(True))
        .basemap(common_builders.MapLayerOptions().type("osm-standard").name("Streets"))
        .layers([cells, devices, events])
        .controls(geomap.ControlsOptions().show_zoom(True).mouse_wheel_zoom(True).show_scale(True))
        .tooltip(geomap.TooltipOptions().mode(geomap_models.TooltipMode.DETAILS))
        .height(16)
        .span(24)
    )
    legend = table_panel(
        "Open events on the map",
        "The events drawn on the map, with their coordinates.",
        [query(open_events_query())],
        span=24,
    )
    board = new_dashboard(
        UID, TITLE, "Where things are: grid cells, devices by state, open events."
    )
    variables: list[dash.QueryVariable] = device_variables()
    board = with_variables(board, variables)
    if config.map_api_key_param:
        board = board.with_variable(
            dash.TextBoxVariable(MAP_KEY_VARIABLE)
            .label("Map API key")
            .hide(dashboard.VariableHide.HIDE_VARIABLE)
        )
    return with_panels(board, [the_map, legend]).build()
