"""The events desk API: filters and pages, one event with its trail, the lifecycle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accounts.roles import Role
from events.model import Severity
from tests.support.api_fixtures import ApiHarness, api_harness


@pytest.fixture
def api(event_db_url: str) -> Iterator[ApiHarness]:
    with api_harness(event_db_url) as harness:
        yield harness


def test_list_filters_by_every_facet_and_pages(api: ApiHarness) -> None:
    base = 1_764_400_000_000
    for i in range(7):
        api.raise_event(
            rule="smoke_alarm" if i % 2 else "door_forced",
            key=f"d{i}",
            cell=f"c0{i % 3}",
            severity=Severity.CRITICAL if i == 6 else Severity.LOW,
            at_ms=base + i * 1000,
        )
    api.raise_event(site="other", key="o1", at_ms=base)
    h = api.headers(Role.operator)
    page = api.client.get(
        "/api/v1/events", params={"site": "yingyang", "limit": 3}, headers=h
    ).json()
    assert page["total"] == 7 and len(page["items"]) == 3
    assert [e["key"] for e in page["items"]] == ["d6", "d5", "d4"]  # newest first
    rest = api.client.get(
        "/api/v1/events", params={"site": "yingyang", "limit": 3, "offset": 6}, headers=h
    ).json()
    assert [e["key"] for e in rest["items"]] == ["d0"]

    def keys(**params: object) -> list[str]:
        response = api.client.get("/api/v1/events", params=params, headers=h)
        assert response.status_code == 200, response.text
        return sorted(e["key"] for e in response.json()["items"])

    assert keys(cell="c01") == ["d1", "d4"]
    assert keys(severity="critical") == ["d6"]
    assert keys(rule="smoke_alarm", site="yingyang") == ["d1", "d3", "d5"]
    assert keys(since=base + 5000, site="yingyang") == ["d5", "d6"]
    assert keys(until="2025-11-29T07:06:42.500Z", site="yingyang") == ["d0", "d1", "d2"]
    assert keys(state=["active_unacknowledged"], site="other") == ["o1"]
    assert keys(state=["closed"]) == []
    bad = api.client.get("/api/v1/events", params={"state": "bogus"}, headers=h)
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["errors"][0]["loc"] == ["query", "state", "0"]


def test_full_lifecycle_is_audited_with_the_actor(api: ApiHarness) -> None:
    event = api.raise_event(key="door-9", cell="c02")
    h = api.headers(Role.operator)
    url = f"/api/v1/events/{event.id}"
    ack = api.client.post(
        f"{url}/acknowledge", json={"note": "seen", "expected_version": 1}, headers=h
    )
    assert ack.status_code == 200 and ack.json()["state"] == "active_acknowledged"
    assigned = api.client.post(f"{url}/assign", json={"assignee": "w-02"}, headers=h).json()
    assert assigned["assignee"] == "w-02"
    api.client.post(f"{url}/comment", json={"note": "camera shows a delivery"}, headers=h)
    shelved = api.client.post(f"{url}/shelve", json={"for_s": 600}, headers=h).json()
    assert shelved["state"] == "shelved"
    assert shelved["shelved_until_ms"] > shelved["updated_ms"]
    assert api.client.post(f"{url}/unshelve", headers=h).json()["state"] == "active_acknowledged"
    api.clear_event(event)
    resolved = api.client.post(f"{url}/resolve", json={"note": "delivery, door closed"}, headers=h)
    assert resolved.status_code == 200
    assert (
        resolved.json()["state"] == "closed"
        and resolved.json()["resolution"] == "delivery, door closed"
    )

    detail = api.client.get(url, headers=h).json()
    trail = [(a["actor"], a["action"]) for a in detail["audit"]]
    operator = "operator-user"
    assert trail == [
        ("system", "raise"),
        (operator, "acknowledge"),
        (operator, "assign"),
        (operator, "comment"),
        (operator, "shelve"),
        (operator, "unshelve"),
        ("system", "return"),
        (operator, "close"),
    ]
    assert detail["audit"][3]["note"] == "camera shows a delivery"
    assert detail["children"] == []
    metrics = api.client.get("/metrics").text
    assert 'gridwatch_api_event_actions_total{action="acknowledge",outcome="ok"} 1.0' in metrics


def test_forbidden_transitions_are_409_problems_and_change_nothing(api: ApiHarness) -> None:
    event = api.raise_event(key="smoke-3")
    h = api.headers(Role.operator)
    url = f"/api/v1/events/{event.id}"
    early = api.client.post(f"{url}/resolve", json={"note": "fixed"}, headers=h)
    assert early.status_code == 409
    problem = early.json()
    assert early.headers["content-type"] == "application/problem+json"
    assert problem["type"].endswith("/conflict") and problem["state"] == "active_unacknowledged"
    assert problem["action"] == "close" and "still active" in problem["detail"]
    api.client.post(f"{url}/acknowledge", headers=h)
    again = api.client.post(f"{url}/acknowledge", headers=h)
    assert again.status_code == 409 and "already acknowledged" in again.json()["detail"]
    stale = api.client.post(f"{url}/comment", json={"note": "x", "expected_version": 1}, headers=h)
    assert stale.status_code == 409 and "changed by someone else" in stale.json()["detail"]
    past = api.client.post(f"{url}/shelve", json={"until": "2001-01-01T00:00:00Z"}, headers=h)
    assert past.status_code == 409 and "expiry in the future" in past.json()["detail"]
    both = api.client.post(
        f"{url}/shelve", json={"for_s": 5, "until": "2101-01-01T00:00:00Z"}, headers=h
    )
    assert both.status_code == 422
    empty = api.client.post(f"{url}/comment", json={"note": ""}, headers=h)
    assert empty.status_code == 422 and empty.json()["errors"][0]["loc"] == ["body", "note"]
    trail = api.client.get(url, headers=h).json()["audit"]
    assert [a["action"] for a in trail] == ["raise", "acknowledge"]
    missing = api.client.post("/api/v1/events/nope/acknowledge", headers=h)
    assert missing.status_code == 404 and missing.json()["event_id"] == "nope"
    assert api.client.get("/api/v1/events/nope", headers=h).status_code == 404


def test_a_shelve_runs_out_when_the_hub_ticks_past_its_expiry(api: ApiHarness) -> None:
    event = api.raise_event(key="smoke-9")
    h = api.headers(Role.operator)
    shelved = api.client.post(
        f"/api/v1/events/{event.id}/shelve", json={"for_s": 60, "note": "cleaning"}, headers=h
    ).json()
    assert shelved["state"] == "shelved"
    api.deps.manager.tick(shelved["shelved_until_ms"] - 1)
    assert api.client.get(f"/api/v1/events/{event.id}", headers=h).json()["event"]["state"] == (
        "shelved"
    )
    api.deps.manager.tick(shelved["shelved_until_ms"])
    detail = api.client.get(f"/api/v1/events/{event.id}", headers=h).json()
    assert detail["event"]["state"] == "active_unacknowledged"
    assert [(a["actor"], a["action"]) for a in detail["audit"]][-1] == ("system", "unshelve")
