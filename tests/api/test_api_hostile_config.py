"""Hostile configuration through the API: 422 naming the field, nothing stored."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accounts.roles import Role
from registry.bulk import dump_yaml
from registry.site_import import bundle_from_site
from sites.model import load_site_ref
from tests.support.api_fixtures import ApiHarness, api_harness

SITE = {"id": "s1", "name": "Site one", "timezone": "Asia/Shanghai"}


@pytest.fixture
def api(event_db_url: str) -> Iterator[ApiHarness]:
    with api_harness(event_db_url) as harness:
        yield harness


def _named(response_json: dict[str, object], field: str) -> bool:
    return field in str(response_json)


def test_a_profile_threshold_out_of_bounds_is_422_naming_it_and_nothing_stored(
    api: ApiHarness,
) -> None:
    h = api.headers(Role.integrator)
    c = api.client
    body = {
        "id": "kitchen",
        "kind": "smoke",
        "interval_s": 60,
        "thresholds": {"device_offline.after": 1e308},
    }
    refused = c.post("/api/v1/profiles", json=body, headers=h)
    assert refused.status_code == 422, refused.text
    assert _named(refused.json(), "thresholds") and _named(refused.json(), "device_offline.after")
    assert c.get("/api/v1/profiles/kitchen", headers=h).status_code == 404
    assert api.deps.registry is not None and api.deps.registry.all_profiles() == []

    ok = c.post("/api/v1/profiles", json=body | {"thresholds": {}}, headers=h)
    assert ok.status_code == 201, ok.text
    patched = c.patch(
        "/api/v1/profiles/kitchen", json={"thresholds": {"low_battery.below": 1e9}}, headers=h
    )
    assert patched.status_code == 422 and _named(patched.json(), "low_battery.below")
    assert c.get("/api/v1/profiles/kitchen", headers=h).json()["thresholds"] == {}


@pytest.mark.parametrize("zone", ["America", "x" * 300])
def test_a_bad_time_zone_is_422_for_sites_and_imports(api: ApiHarness, zone: str) -> None:
    h = api.headers(Role.integrator)
    c = api.client
    refused = c.post("/api/v1/sites", json=SITE | {"timezone": zone}, headers=h)
    assert refused.status_code == 422, refused.text
    assert _named(refused.json(), "timezone")
    assert c.get("/api/v1/sites", headers=h).json()["total"] == 0

    assert c.post("/api/v1/sites", json=SITE, headers=h).status_code == 201
    patched = c.patch("/api/v1/sites/s1", json={"timezone": zone}, headers=h)
    assert patched.status_code == 422, patched.text
    assert c.get("/api/v1/sites/s1", headers=h).json()["timezone"] == "Asia/Shanghai"

    text = dump_yaml(bundle_from_site(load_site_ref("yingyang")))
    bad = text.replace("timezone: Asia/Shanghai", f"timezone: {zone}")
    imported = c.post(
        "/api/v1/registry/import?format=yaml",
        content=bad.encode(),
        headers=h | {"Content-Type": "application/yaml"},
    )
    assert imported.status_code == 422, imported.text
    assert any(e["loc"].endswith("timezone") for e in imported.json()["errors"])
    assert c.get("/api/v1/devices", headers=h).json()["total"] == 0
