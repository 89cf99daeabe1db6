"""`GET /api/v1/kpi`: the alarm KPIs of a site over a range, with thresholds and verdict.

The figures themselves are checked against hand-computed fixtures in
tests/events/test_kpi.py; here a small history checks that the route reads the right
site and range, the JSON shape, the guards and the refusals.

History (T0 + minutes), site yingyang:
- door_forced/d1, cell yy-g01: raised 1:00, returned 2:00, raised again 3:00 (a second
  alarm), acknowledged at 5:00 (2 min after its second alarm);
- smoke_alarm/s1, cell yy-g02: raised 4:00, never acknowledged.
Site other: door_forced/o1 raised 4:00.
Range [T0, T0 + 1 h): 3 alarms at yingyang, 3 an hour (acceptable), 0.5 per 10 min.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from accounts.roles import Role
from events.model import Action, Severity
from tests.support.api_fixtures import ApiHarness, api_harness

T0 = 1_764_400_200_000  # 2025-11-29T07:10:00Z, on a 10-minute boundary
MIN = 60_000
H = 60 * MIN


@pytest.fixture
def api(event_db_url: str) -> Iterator[ApiHarness]:
    with api_harness(event_db_url) as harness:
        door = harness.raise_event(rule="door_forced", key="d1", cell="yy-g01", at_ms=T0 + MIN)
        harness.clear_event(door, at_ms=T0 + 2 * MIN)
        harness.raise_event(rule="door_forced", key="d1", cell="yy-g01", at_ms=T0 + 3 * MIN)
        harness.raise_event(
            rule="smoke_alarm", key="s1", cell="yy-g02", severity=Severity.LOW, at_ms=T0 + 4 * MIN
        )
        harness.raise_event(rule="door_forced", key="o1", site="other", at_ms=T0 + 4 * MIN)
        # Through the manager: the API stamps actions with its clock, and its tokens
        # expire on the same clock, so it cannot be set back to T0.
        harness.deps.manager.act(door.id, Action.ACKNOWLEDGE, actor="op", at_ms=T0 + 5 * MIN)
        yield harness


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def test_kpis_of_a_site(api: ApiHarness) -> None:
    response = api.client.get(
        "/api/v1/kpi",
        params={"site": "yingyang", "since": iso(T0), "until": iso(T0 + H)},
        headers=api.headers(Role.operator),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["site"], body["since_ms"], body["until_ms"]) == ("yingyang", T0, T0 + H)
    k = body["kpis"]
    assert k["alarms"] == 3 and body["verdict"] == "acceptable" == k["verdict"]
    rates = {r["period"]: r for r in k["rates"]}
    assert rates["hour"] == {
        "period": "hour",
        "period_ms": H,
        "average": 3.0,
        "busiest": 3,
        "acceptable": 6,
        "manageable": 12,
        "verdict": "acceptable",
    }
    assert rates["10min"]["average"] == 0.5 and rates["day"]["average"] == 72.0
    assert k["per_10min"] == [3, 0, 0, 0, 0, 0]
    assert (k["peak_10min"], k["peak_10min_at_ms"]) == (3, T0 + MIN)
    assert [(p["key"], p["alarms"]) for p in k["top"]] == [("d1", 2), ("s1", 1)]
    assert k["top_share"] == 1.0 and k["chattering"] == []
    assert k["time_to_acknowledge"] == {
        "count": 1,
        "p50_ms": 2 * MIN,
        "p90_ms": 2 * MIN,
        "max_ms": 2 * MIN,
        "pending": 2,
    }
    assert [(o["key"], o["duration_ms"]) for o in k["standing"]] == [
        ("d1", H - 3 * MIN),
        ("s1", H - 4 * MIN),
    ]
    assert {p: v["alarms"] for p, v in body["positions"].items()} == {
        "w-yy-g01": 2,
        "w-yy-g02": 1,
    }
    assert body["sites"] == {}
    thresholds = body["thresholds"]
    assert [(r["period"], r["acceptable"], r["manageable"]) for r in thresholds["rates"]] == [
        ("10min", 1, 2),
        ("hour", 6, 12),
        ("day", 150, 300),
    ]
    assert (thresholds["flood_alarms"], thresholds["stale_ms"]) == (10, 24 * H)


def test_every_site_and_the_default_range(api: ApiHarness) -> None:
    h = api.headers(Role.admin)
    body = api.client.get("/api/v1/kpi", params={"until": iso(T0 + H)}, headers=h).json()
    assert body["site"] is None and body["since_ms"] == T0 + H - 24 * H  # a day by default
    assert body["kpis"]["alarms"] == 4
    assert {s: v["alarms"] for s, v in body["sites"].items()} == {"other": 1, "yingyang": 3}
    # Without until: the API's clock ends the range (the history is long past).
    before = api.deps.clock_ms()
    now = api.client.get("/api/v1/kpi", params={"site": "yingyang"}, headers=h).json()
    assert before <= now["until_ms"] <= api.deps.clock_ms() and now["kpis"]["alarms"] == 0
    assert [o["key"] for o in now["kpis"]["stale"]] == ["d1", "s1"]  # active for days


def test_refusals_are_problems(api: ApiHarness) -> None:
    assert api.client.get("/api/v1/kpi").status_code == 401
    assert api.client.get("/api/v1/kpi", headers=api.headers(Role.resident)).status_code == 403
    h = api.headers(Role.operator)
    backwards = api.client.get(
        "/api/v1/kpi", params={"since": iso(T0 + H), "until": iso(T0)}, headers=h
    )
    assert backwards.status_code == 422
    assert backwards.headers["content-type"] == "application/problem+json"
    assert backwards.json()["errors"][0]["loc"] == ["query", "since"]
    too_long = api.client.get(
        "/api/v1/kpi", params={"since": iso(T0 - 100 * 24 * H), "until": iso(T0)}, headers=h
    )
    assert too_long.status_code == 422 and "at most 92 days" in too_long.json()["detail"]
    for garbage in ("yesterday", "1764400200", "1764400200000"):  # numbers: s or ms?
        refused = api.client.get("/api/v1/kpi", params={"since": garbage}, headers=h)
        assert refused.status_code == 422, garbage
