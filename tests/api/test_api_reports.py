"""Resident reports: placed in the right cell, assigned to its grid worker, read back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accounts.roles import Role
from tests.support.api_fixtures import PASSWORD, ApiHarness, api_harness


@pytest.fixture
def api(event_db_url: str) -> Iterator[ApiHarness]:
    with api_harness(event_db_url) as harness:
        yield harness


def test_a_located_report_becomes_an_event_in_its_cell_assigned_to_the_worker(
    api: ApiHarness,
) -> None:
    body = {
        "site": "yingyang",
        "location": {"lon": 113.3880, "lat": 22.5170},
        "category": "blocked_fire_lane",
        "description": "A van blocks the fire lane.",
        "photo_url": "https://photos.example.org/r/1.jpg",
    }
    created = api.client.post("/api/v1/reports", json=body, headers=api.headers(Role.resident))
    assert created.status_code == 201, created.text
    report = created.json()
    assert report["cell"] == "yy-g01" and report["assignee"] == "w-yy-g01"
    assert report["status"] == "returned_unacknowledged"
    assert report["photo_url"] == "https://photos.example.org/r/1.jpg"

    event = api.client.get(
        f"/api/v1/events/{report['event_id']}", headers=api.headers(Role.operator)
    ).json()
    assert event["event"]["source"] == "report" and event["event"]["severity"] == "medium"
    assert event["event"]["location"] == {"lon": 113.388, "lat": 22.517}
    assert event["event"]["values"]["reporter"] == "resident-user"
    assert [a["action"] for a in event["audit"]] == ["raise", "assign", "return"]

    ops = api.headers(Role.operator)
    url = f"/api/v1/events/{report['event_id']}"
    assert api.client.post(f"{url}/acknowledge", headers=ops).status_code == 200
    assert (
        api.client.post(f"{url}/resolve", json={"note": "van towed"}, headers=ops).status_code
        == 200
    )
    mine = api.client.get(f"/api/v1/reports/{report['id']}", headers=api.headers(Role.resident))
    assert mine.json()["status"] == "closed" and mine.json()["resolution"] == "van towed"


def test_a_named_cell_wins_and_bad_places_are_422(api: ApiHarness) -> None:
    h = api.headers(Role.resident)
    base = {"site": "yingyang", "category": "noise", "description": "loud party"}
    named = api.client.post("/api/v1/reports", json={**base, "cell": "yy-g05"}, headers=h)
    assert named.status_code == 201 and named.json()["assignee"] == "w-yy-g05"
    for extra, loc in (
        ({}, ["body", "location"]),
        ({"cell": "nope"}, ["body", "cell"]),
        ({"location": {"lon": 0.0, "lat": 0.0}}, ["body", "location"]),
        ({"site": "atlantis", "cell": "yy-g01"}, ["body", "site"]),
    ):
        refused = api.client.post("/api/v1/reports", json={**base, **extra}, headers=h)
        assert refused.status_code == 422, (extra, refused.text)
        assert refused.json()["errors"][0]["loc"] == loc
    bad_url = api.client.post(
        "/api/v1/reports", json={**base, "cell": "yy-g01", "photo_url": "ftp://x/y"}, headers=h
    )
    assert bad_url.status_code == 422


def test_residents_see_only_their_own_reports(api: ApiHarness) -> None:
    api.deps.users.add_user("neighbour", PASSWORD, Role.resident)
    token = api.client.post(
        "/api/v1/auth/token", data={"username": "neighbour", "password": PASSWORD}
    ).json()["access_token"]
    neighbour = {"Authorization": f"Bearer {token}"}
    base = {
        "site": "yingyang",
        "cell": "yy-g02",
        "category": "vandalism",
        "description": "graffiti",
    }
    mine = api.client.post("/api/v1/reports", json=base, headers=api.headers(Role.resident)).json()
    theirs = api.client.post("/api/v1/reports", json=base, headers=neighbour).json()
    listed = api.client.get("/api/v1/reports", headers=api.headers(Role.resident)).json()
    assert [r["id"] for r in listed["items"]] == [mine["id"]] and listed["total"] == 1
    hidden = api.client.get(f"/api/v1/reports/{theirs['id']}", headers=api.headers(Role.resident))
    assert hidden.status_code == 404
    everyone = api.client.get("/api/v1/reports", headers=api.headers(Role.operator)).json()
    assert {r["id"] for r in everyone["items"]} == {mine["id"], theirs["id"]}
    assert api.client.get("/api/v1/events", headers=api.headers(Role.resident)).status_code == 403
