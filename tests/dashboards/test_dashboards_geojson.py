"""The Grid map's GeoJSON layers: the URLs the built dashboard loads, served by the real
hub API (api/routes/geo.py over uvicorn on 127.0.0.1), return valid GeoJSON.

The yingyang demo site is imported into the device registry and a few events are
raised, so the devices layer carries every map state the dashboard styles.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from accounts.roles import Role
from dashboards.catalog import BOARDS, dashboard_json
from dashboards.common import BuildConfig
from dashboards.grid_map import DEVICE_STATE_COLOURS, MAP_KEY_VARIABLE
from registry.site_import import import_sites
from sites.model import Site, load_site_ref
from tests.support.api_fixtures import ApiHarness, api_harness, serving

pytestmark = pytest.mark.integration

SITE = "yingyang"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with api_harness(f"sqlite:///{tmp_path / 'hub.db'}") as harness:
        yield harness


def _position(position: Any) -> None:
    assert isinstance(position, list) and len(position) in (2, 3), position
    lon, lat = position[0], position[1]
    assert isinstance(lon, float | int) and isinstance(lat, float | int)
    assert -180 <= lon <= 180 and -90 <= lat <= 90


def _signed_area2(ring: list[list[float]]) -> float:
    return sum(x0 * y1 - x1 * y0 for (x0, y0, *_), (x1, y1, *_) in itertools.pairwise(ring))


def validate_feature_collection(doc: Any) -> list[dict[str, Any]]:
    """RFC 7946 checks for what Geomap reads: FeatureCollection of Point/Polygon features,
    [lon, lat] positions, closed linear rings of >= 4 positions, exterior rings
    counter-clockwise (right-hand rule)."""
    assert isinstance(doc, dict) and doc.get("type") == "FeatureCollection"
    features = doc["features"]
    assert isinstance(features, list)
    for feature in features:
        assert feature["type"] == "Feature"
        assert isinstance(feature["properties"], dict)
        geometry = feature["geometry"]
        if geometry["type"] == "Point":
            _position(geometry["coordinates"])
        elif geometry["type"] == "Polygon":
            rings = geometry["coordinates"]
            assert rings, feature
            for index, ring in enumerate(rings):
                assert len(ring) >= 4 and ring[0] == ring[-1], feature["id"]
                for position in ring:
                    _position(position)
                area = _signed_area2(ring)
                assert (area > 0) if index == 0 else (area < 0), feature["id"]
        else:
            raise AssertionError(f"unexpected geometry {geometry['type']}")
    return list(features)


def _layer_urls(hub_url: str, key: str) -> dict[str, str]:
    model = dashboard_json(
        next(b for b in BOARDS if b.uid == "gridwatch-grid-map"),
        BuildConfig(hub_url=hub_url, map_site=SITE, map_api_key_param=True),
    )
    (geomap,) = [p for p in model["panels"] if p["type"] == "geomap"]
    return {
        layer["name"]: layer["config"]["src"].replace(f"${{{MAP_KEY_VARIABLE}}}", key)
        for layer in geomap["options"]["layers"]
        if layer["type"] == "geojson"
    }


def test_grid_map_layers_are_valid_geojson_from_the_hub_api(api: ApiHarness) -> None:
    site: Site = load_site_ref(SITE)
    assert api.deps.registry is not None
    import_sites(api.deps.registry, [site])
    smoke, door, other = (
        next(d for d in site.devices if d.kind == "smoke"),
        next(d for d in site.devices if d.kind == "access"),
        next(d for d in site.devices if d.kind == "parking"),
    )
    api.raise_event(rule="fire", key=smoke.id, site=SITE)
    api.raise_event(rule="device_offline", key=door.id, site=SITE)
    api.raise_event(rule="low_battery", key=other.id, site=SITE)
    _, key = api.deps.users.add_key("geomap", Role.operator, "grafana")
    with serving(api.app) as base:
        urls = _layer_urls(base, key)
        assert set(urls) == {"Grid cells", "Devices"}
        with httpx.Client(timeout=10) as client:  # no Authorization header, as Geomap
            cells_resp = client.get(urls["Grid cells"])
            devices_resp = client.get(urls["Devices"])
            unauthenticated = client.get(urls["Devices"].split("?")[0])
    assert unauthenticated.status_code == 401
    for resp in (cells_resp, devices_resp):
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("application/geo+json")
    cells = validate_feature_collection(cells_resp.json())
    assert {f["properties"]["id"] for f in cells} == {c.id for c in site.cells}
    assert all({"id", "name", "worker"} <= set(f["properties"]) for f in cells)
    assert all(f["geometry"]["type"] == "Polygon" for f in cells)
    devices = validate_feature_collection(devices_resp.json())
    assert {f["properties"]["id"] for f in devices} == {d.id for d in site.devices}
    states = {f["properties"]["id"]: f["properties"]["state"] for f in devices}
    assert set(states.values()) <= set(DEVICE_STATE_COLOURS)
    assert states[smoke.id] == "alarm"
    assert states[door.id] == "offline"
    assert states[other.id] == "low_battery"
    assert "ok" in states.values()
