"""The registry through the HTTP API: roles, CRUD, filters and paging, bulk import, map
layers, and device registration against a real Mosquitto with dynamic security."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from accounts.roles import Role
from broker.dynsec import BrokerAccounts, DynsecClient
from registry.bulk import dump_yaml
from registry.site_import import bundle_from_site
from sites.model import load_site_ref
from tests.support.api_fixtures import ApiHarness, api_harness
from tests.support.dynsec_fixtures import Device as MqttDevice
from tests.support.dynsec_fixtures import dynsec_mosquitto

SITE = {"id": "s1", "name": "Site one", "timezone": "Asia/Shanghai"}
CELL = {
    "id": "c1",
    "site": "s1",
    "name": "West",
    "worker": "w1",
    "polygon": [[113.0, 22.0], [113.01, 22.0], [113.01, 22.01], [113.0, 22.01]],
}


def smoke(ident: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": ident,
        "kind": "smoke",
        "site": "s1",
        "cell": "c1",
        "location": {"lon": 113.005, "lat": 22.005},
        "attributes": {"room": "kitchen"},
    } | extra


@pytest.fixture
def api(event_db_url: str) -> Iterator[ApiHarness]:
    with api_harness(event_db_url) as harness:
        yield harness


def seed(api: ApiHarness) -> dict[str, str]:
    h = api.headers(Role.integrator)
    for path, body in (
        ("/api/v1/sites", SITE),
        ("/api/v1/workers", {"id": "w1", "name": "Chen"}),
        ("/api/v1/cells", CELL),
    ):
        response = api.client.post(path, json=body, headers=h)
        assert response.status_code == 201, response.text
    return h


def test_crud_filters_and_paging_through_the_api(api: ApiHarness) -> None:
    h = seed(api)
    c = api.client
    for i in range(5):
        r = c.post("/api/v1/devices", json=smoke(f"smoke-{i}"), headers=h)
        assert r.status_code == 201, r.text
        assert r.json()["credentials"] is None  # this hub has no dynamic security
    door = smoke("door-1", kind="access", attributes={"door": "main"})
    assert c.post("/api/v1/devices", json=door, headers=h).status_code == 201
    dup = c.post("/api/v1/devices", json=smoke("smoke-0"), headers=h)
    assert dup.status_code == 409
    assert dup.headers["content-type"].startswith("application/problem+json")

    operator = api.headers(Role.operator)
    page = c.get("/api/v1/devices?kind=smoke&limit=2&offset=2", headers=operator).json()
    assert page["total"] == 5 and [d["id"] for d in page["items"]] == ["smoke-2", "smoke-3"]
    assert page["items"][0]["topic"] == "gw/v1/s1/smoke/smoke-2"
    assert c.get("/api/v1/devices?kind=access", headers=operator).json()["total"] == 1

    moved = c.patch(
        "/api/v1/devices/smoke-1",
        json={"location": {"lon": 113.006, "lat": 22.006, "floor": 4}},
        headers=h,
    )
    assert moved.status_code == 200 and moved.json()["location"]["floor"] == 4
    outside = c.patch(
        "/api/v1/devices/smoke-1", json={"location": {"lon": 114.0, "lat": 22.0}}, headers=h
    )
    assert outside.status_code == 422
    assert outside.json()["errors"][0]["loc"] == "location"
    immutable = c.patch("/api/v1/devices/smoke-1", json={"kind": "access"}, headers=h)
    assert immutable.status_code == 422
    nulled = c.patch("/api/v1/devices/smoke-1", json={"cell": None}, headers=h)
    assert nulled.status_code == 422 and nulled.json()["errors"][0]["loc"] == "cell"
    assert c.patch("/api/v1/workers/w1", json={"name": None}, headers=h).status_code == 422
    renamed = c.patch("/api/v1/workers/w1", json={"phone": "ext 8101"}, headers=h).json()
    assert renamed == renamed | {"name": "Chen", "phone": "ext 8101"}

    assert c.delete("/api/v1/devices/smoke-4", headers=h).json()["retired_ms"] is not None
    assert c.delete("/api/v1/devices/smoke-4", headers=h).status_code == 200  # idempotent
    profile = {"id": "kitchen", "kind": "smoke", "interval_s": 60, "thresholds": {"a.b": 0.3}}
    assert c.post("/api/v1/profiles", json=profile, headers=h).status_code == 201
    assert c.patch("/api/v1/devices/smoke-3", json={"profile": "kitchen"}, headers=h).is_success
    by_profile = c.get("/api/v1/devices?profile=kitchen", headers=operator).json()
    assert [d["id"] for d in by_profile["items"]] == ["smoke-3"]
    assert c.get("/api/v1/profiles/kitchen", headers=operator).json()["thresholds"] == {"a.b": 0.3}
    assert c.delete("/api/v1/profiles/kitchen", headers=h).status_code == 409  # in use
    assert c.get("/api/v1/devices?kind=smoke", headers=operator).json()["total"] == 4
    retired = c.get("/api/v1/devices?status=retired", headers=operator).json()
    assert [d["id"] for d in retired["items"]] == ["smoke-4"]
    assert c.get("/api/v1/devices/nope", headers=operator).status_code == 404
    in_use = c.delete("/api/v1/cells/c1", headers=h)
    assert in_use.status_code == 409 and "active devices" in in_use.json()["detail"]


def test_roles_operators_read_integrators_write(api: ApiHarness) -> None:
    seed(api)
    c = api.client
    assert c.get("/api/v1/sites").status_code == 401
    assert c.get("/api/v1/sites", headers=api.headers(Role.operator)).json()["total"] == 1
    refused = c.post("/api/v1/devices", json=smoke("x"), headers=api.headers(Role.operator))
    assert refused.status_code == 403
    assert c.get("/api/v1/sites", headers=api.headers(Role.resident)).status_code == 403
    admin = c.post("/api/v1/devices", json=smoke("x"), headers=api.headers(Role.admin))
    assert admin.status_code == 201


def test_bulk_import_with_one_bad_row_changes_nothing(api: ApiHarness) -> None:
    h = api.headers(Role.integrator)
    text = dump_yaml(bundle_from_site(load_site_ref("yingyang")))
    bad = text.replace("timezone: Asia/Shanghai", "timezone: Asia/Atlantis")
    line = next(i + 1 for i, t in enumerate(bad.splitlines()) if "Asia/Atlantis" in t)
    refused = api.client.post(
        "/api/v1/registry/import?format=yaml",
        content=bad.encode(),
        headers=h | {"Content-Type": "application/yaml"},
    )
    assert refused.status_code == 422, refused.text
    assert [(e["row"], e["loc"]) for e in refused.json()["errors"]] == [(line, "sites[1].timezone")]
    operator = api.headers(Role.operator)
    assert api.client.get("/api/v1/devices", headers=operator).json()["total"] == 0

    csv = "id,kind,site,cell,lon,lat\nx-1,smoke,nowhere,c1,1,2\n"
    refused_csv = api.client.post(
        "/api/v1/registry/import?format=csv", content=csv.encode(), headers=h
    )
    assert refused_csv.status_code == 422
    assert {e["row"] for e in refused_csv.json()["errors"]} == {2}

    done = api.client.post("/api/v1/registry/import?format=yaml", content=text.encode(), headers=h)
    assert done.status_code == 200, done.text
    assert done.json()["counts"]["devices"] == {"created": 75, "updated": 0}
    assert api.client.get("/api/v1/devices", headers=operator).json()["total"] == 75


def test_map_layers_with_states_from_events(api: ApiHarness) -> None:
    h = seed(api)
    for ident in ("d-ok", "d-alarm", "d-offline", "d-battery"):
        assert api.client.post("/api/v1/devices", json=smoke(ident), headers=h).status_code == 201
    api.raise_event(rule="smoke_alarm", key="d-alarm", site="s1")
    api.raise_event(rule="device_offline", key="d-offline", site="s1")
    api.raise_event(rule="low_battery", key="d-battery", site="s1")
    api.raise_event(rule="low_battery", key="d-alarm", site="s1")  # alarm wins
    cleared = api.raise_event(rule="smoke_alarm", key="d-ok", site="s1")
    api.clear_event(cleared)  # no longer active: the device is ok again

    # Grafana's Geomap sends no header: an operator API key in the query string
    _, key = api.deps.users.add_key("geomap", Role.operator, "grafana")
    cells = api.client.get(f"/api/v1/sites/s1/cells.geojson?api_key={key}")
    assert cells.status_code == 200, cells.text
    assert cells.headers["content-type"].startswith("application/geo+json")
    (feature,) = cells.json()["features"]
    ring = feature["geometry"]["coordinates"][0]
    # The events above name no cell: the cell itself is calm.
    assert feature["properties"] == {
        "id": "c1",
        "name": "West",
        "worker": "w1",
        "state": "ok",
        "severity": None,
    }
    assert ring[0] == ring[-1] and len(ring) == 5

    devices = api.client.get(f"/api/v1/sites/s1/devices.geojson?api_key={key}").json()
    states = {f["properties"]["id"]: f["properties"]["state"] for f in devices["features"]}
    assert states == {
        "d-ok": "ok",
        "d-alarm": "alarm",
        "d-offline": "offline",
        "d-battery": "low_battery",
    }
    assert api.client.get("/api/v1/sites/s1/devices.geojson").status_code == 401
    assert api.client.get("/api/v1/sites/s1/devices.geojson?api_key=wrong").status_code == 401
    assert api.client.get(f"/api/v1/sites/s9/cells.geojson?api_key={key}").status_code == 404


@pytest.mark.integration
def test_registering_through_the_api_gives_a_working_broker_login(tmp_path: Path) -> None:
    with (
        dynsec_mosquitto(tmp_path / "broker") as (proc, admin),
        api_harness(f"sqlite:///{tmp_path / 'gw.db'}") as api,
    ):
        accounts = BrokerAccounts(DynsecClient(admin))
        api.deps.dynsec = accounts
        h = seed(api)
        created = api.client.post("/api/v1/devices", json=smoke("smoke-1"), headers=h)
        assert created.status_code == 201, created.text
        creds = created.json()["credentials"]
        assert creds["username"] == creds["client_id"] == "smoke-1"

        device = MqttDevice(proc.port, "smoke-1")
        assert device.connect("smoke-1", creds["password"]) == 0
        assert device.publish("gw/v1/s1/smoke/smoke-1/telemetry") in {0, 16}
        assert device.publish("gw/v1/s1/smoke/smoke-2/telemetry") == 135
        device.close()

        rotated = api.client.post("/api/v1/devices/smoke-1/credentials", headers=h).json()
        assert rotated["password"] != creds["password"]
        stale = MqttDevice(proc.port, "smoke-1")
        assert stale.connect("smoke-1", creds["password"]) != 0
        stale.close()

        assert api.client.delete("/api/v1/devices/smoke-1", headers=h).status_code == 200
        retired = MqttDevice(proc.port, "smoke-1")
        assert retired.connect("smoke-1", rotated["password"]) != 0
        retired.close()
        again = api.client.post("/api/v1/devices/smoke-1/credentials", headers=h)
        assert again.status_code == 409
