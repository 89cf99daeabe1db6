"""The map layers during a flood: suppressed children, an emergency on its own, and
events an operator set aside all show on devices.geojson and cells.geojson."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from accounts.roles import Role
from events.manager import FLOOD_RULE
from events.model import Action, Detection, Mode, Severity, State
from tests.support.api_fixtures import ApiHarness, api_harness

SQUARE = [[113.0, 22.0], [113.01, 22.0], [113.01, 22.01], [113.0, 22.01]]
DOORS = [f"door-{i}" for i in range(12)]
DETECTORS = ["smoke-7", "smoke-8"]
MIN = 60_000


@pytest.fixture
def api(event_db_url: str) -> Iterator[ApiHarness]:
    with api_harness(event_db_url) as harness:
        yield harness


def register(api: ApiHarness) -> None:
    h = api.headers(Role.integrator)
    site = {"id": "s1", "name": "Site one", "timezone": "Asia/Shanghai"}
    bodies: list[tuple[str, dict[str, Any]]] = [
        ("/api/v1/sites", site),
        ("/api/v1/workers", {"id": "w1", "name": "Chen"}),
    ]
    for n, cell in enumerate(("c1", "c2", "c3")):
        polygon = [[x + n * 0.02, y] for x, y in SQUARE]
        body = {"id": cell, "site": "s1", "name": cell, "worker": "w1", "polygon": polygon}
        bodies.append(("/api/v1/cells", body))
    devices = {d: "c1" for d in DOORS} | {d: "c2" for d in DETECTORS}
    devices |= {"d-shelved": "c3", "d-oos": "c3", "d-ok": "c3"}
    for ident, cell in devices.items():
        lon = 113.005 + int(cell[1:]) * 0.02 - 0.02  # the middle of its cell
        device = {
            "id": ident,
            "kind": "smoke",
            "site": "s1",
            "cell": cell,
            "location": {"lon": lon, "lat": 22.005},
        }
        bodies.append(("/api/v1/devices", device))
    for path, body in bodies:
        response = api.client.post(path, json=body, headers=h)
        assert response.status_code == 201, response.text


def detection(key: str, at: int, *, cell: str = "c1", **kw: Any) -> Detection:
    fields: dict[str, Any] = {
        "rule_id": "door_forced",
        "site": "s1",
        "device": key,
        "severity": Severity.HIGH,
        "title": f"Door forced: {key}",
        "incident": "door_forced",
    }
    return Detection(key=key, raised=True, at_ms=at, cell=cell, **(fields | kw))


def test_a_flood_hides_nothing_on_the_map(api: ApiHarness) -> None:
    register(api)
    manager, store = api.deps.manager, api.deps.events
    t0 = api.deps.clock_ms() - 60 * MIN
    shelved = manager.handle(detection("d-shelved", t0, cell="c3"), t0)[0]
    manager.act(shelved.id, Action.SHELVE, actor="op", at_ms=t0 + 1, until_ms=t0 + 999 * MIN)
    oos = manager.handle(detection("d-oos", t0, cell="c3", incident="device_offline"), t0)[0]
    manager.act(oos.id, Action.REMOVE_FROM_SERVICE, actor="op", at_ms=t0 + 1)
    for i, door in enumerate(DOORS[:10], start=1):  # with the two above: a flood
        manager.handle(detection(door, t0 + i * 1000), t0 + i * 1000)
    at = t0 + 20_000
    fire = detection(
        "c2",
        at,
        cell="c2",
        rule_id="fire",
        device=DETECTORS[0],
        devices=tuple(DETECTORS),
        severity=Severity.CRITICAL,
        incident="fire",
    )
    manager.handle(fire, at)
    manager.handle(detection(DOORS[10], at + 1), at + 1)  # joins the storm
    manager.handle(detection(DOORS[11], at + 2), at + 2)
    back = Detection(rule_id="door_forced", key=DOORS[11], raised=False, at_ms=at + 3, site="s1")
    manager.handle(back, at + 3)  # this one's door closed: no longer raised

    parent = store.open_event(FLOOD_RULE, "s1")
    assert parent is not None
    children = store.children(parent.id)
    assert {c.key for c in children if c.mode is Mode.SUPPRESSED} >= set(DOORS)
    burning = store.open_event("fire", "c2")
    assert burning is not None and burning.state is State.ACTIVE_UNACKNOWLEDGED

    _, key = api.deps.users.add_key("geomap", Role.operator, "grafana")
    devices = api.client.get(f"/api/v1/sites/s1/devices.geojson?api_key={key}")
    assert devices.status_code == 200, devices.text
    states = {f["properties"]["id"]: f["properties"]["state"] for f in devices.json()["features"]}
    assert states == {
        **dict.fromkeys(DOORS[:11], "alarm"),  # suppressed by the flood, still forced open
        DOORS[11]: "ok",
        **dict.fromkeys(DETECTORS, "alarm"),
        "d-shelved": "shelved",
        "d-oos": "out_of_service",
        "d-ok": "ok",
    }
    cells = api.client.get(f"/api/v1/sites/s1/cells.geojson?api_key={key}").json()
    summary = {
        f["id"]: (f["properties"]["state"], f["properties"]["severity"]) for f in cells["features"]
    }
    assert summary == {
        "c1": ("alarm", "high"),
        "c2": ("alarm", "critical"),
        "c3": ("out_of_service", None),  # only events set aside
    }
