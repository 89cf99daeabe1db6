"""The role matrix: every route declares who may call it, and that is what it enforces.

Walks `app.routes` (api-registry's routers included, and the desk pages that are not in
the OpenAPI schema) and calls each route as each role, and without credentials.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute, Mount

from accounts.roles import Role
from api.roles import PublicMarker, RoleGuard
from api.routes.stream import StreamTiming, live_streams
from tests.support.api_fixtures import ApiHarness, api_harness

EXPECTED: dict[str, frozenset[Role] | None] = {
    # Our routes' intended policy (None: public). Registry routes are checked for
    # declaring a guard and enforcing it; their policy is api-registry's table.
    "POST /api/v1/auth/token": None,
    "GET /api/v1/auth/me": frozenset(Role) - {Role.device},
    "GET /healthz": None,
    "GET /readyz": None,
    "GET /metrics": None,
    "GET /api/v1/events": frozenset({Role.operator}),
    "GET /api/v1/events/{event_id}": frozenset({Role.operator}),
    "POST /api/v1/reports": frozenset({Role.resident, Role.operator}),
    "GET /api/v1/reports": frozenset({Role.resident, Role.operator}),
    "GET /api/v1/reports/{report_id}": frozenset({Role.resident, Role.operator}),
    "GET /desk/login": None,
    "POST /desk/login": None,
    "POST /desk/logout": frozenset({Role.operator}),
    "GET /desk/": frozenset({Role.operator}),
    "GET /desk/{site}": frozenset({Role.operator}),
    "GET /desk/events/{event_id}": frozenset({Role.operator}),
    "POST /desk/events/{event_id}/{action}": frozenset({Role.operator}),
    "GET /desk/{site}/wall": frozenset({Role.operator}),
    "GET /desk/{site}/wall/state.json": frozenset({Role.operator}),
    "GET /desk/{site}/stream": frozenset({Role.operator}),
}
EVENT_ACTIONS = (
    "acknowledge", "assign", "comment", "shelve", "unshelve", "resolve",
    "remove-from-service", "return-to-service",
)  # fmt: skip
for _action in EVENT_ACTIONS:
    EXPECTED[f"POST /api/v1/events/{{event_id}}/{_action}"] = frozenset({Role.operator})

DOCS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
SAMPLE_PARAMS = {
    "event_id": "no-such-event",
    "report_id": "0" * 32,
    "site": "yingyang",
    "action": "acknowledge",
}


@pytest.fixture(params=["sqlite"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ApiHarness]:
    # Authorization does not depend on the database: SQLite is enough here.
    with api_harness(f"sqlite:///{tmp_path / 'events.db'}") as harness:
        # The event stream ends at once: a TestClient reads a response to its end.
        live_streams(harness.app).timing = StreamTiming(poll_s=0.01, lifetime_s=0.05)
        yield harness


def guards(route: APIRoute) -> list[RoleGuard | PublicMarker]:
    found: list[RoleGuard | PublicMarker] = []
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, RoleGuard | PublicMarker):
            found.append(dep.call)
        stack.extend(dep.dependencies)
    return found


def flat_routes(app: FastAPI) -> list[BaseRoute]:
    """Every route, also inside included routers (FastAPI >= 0.16x nests them lazily)."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:
        return list(app.routes)
    return [context.original_route for context in contexts(app.routes)]


def endpoints(api: ApiHarness) -> list[tuple[str, str, APIRoute]]:
    out = []
    for route in flat_routes(api.app):
        if isinstance(route, Mount):
            assert route.path == "/static", f"unexpected mount {route.path}"
            continue
        if not isinstance(route, APIRoute) and getattr(route, "path", "") in DOCS:
            continue  # FastAPI's own schema and docs pages: public by design
        assert isinstance(route, APIRoute), f"{route} is not an APIRoute: it cannot declare roles"
        for method in sorted(set(route.methods or ()) - {"HEAD"}):
            out.append((method, route.path, route))
    return out


def concrete(path: str, route: APIRoute) -> str:
    values: dict[str, Any] = {}
    for name in route.param_convertors:
        values[name] = SAMPLE_PARAMS.get(name, "x")
    return path.format(**values)


def test_every_route_declares_exactly_one_guard(api: ApiHarness) -> None:
    routes = endpoints(api)
    undeclared = [f"{m} {p}" for m, p, r in routes if len(guards(r)) != 1]
    assert undeclared == []
    ours = {f"{m} {p}" for m, p, _ in routes if f"{m} {p}" in EXPECTED}
    assert ours == set(EXPECTED), f"missing: {set(EXPECTED) - ours}"
    for method, path, route in routes:
        (guard,) = guards(route)
        expected = EXPECTED.get(f"{method} {path}", "registry")
        if expected == "registry":
            continue
        if expected is None:
            assert isinstance(guard, PublicMarker), f"{method} {path} should be public"
        else:
            assert isinstance(guard, RoleGuard) and guard.roles == expected, f"{method} {path}"


def test_every_route_enforces_its_roles(api: ApiHarness) -> None:
    credentials: dict[Role, dict[str, str]] = {
        role: api.headers(role) for role in Role if role is not Role.device
    }
    _, device_key = api.deps.users.add_key("meter", Role.device, "yy-smoke-001")
    credentials[Role.device] = {"X-API-Key": device_key}
    client = TestClient(api.app, raise_server_exceptions=False, follow_redirects=False)
    checked = 0
    for method, path, route in endpoints(api):
        (guard,) = guards(route)
        url = concrete(path, route)
        anonymous = client.request(method, url)
        if isinstance(guard, PublicMarker):
            assert anonymous.status_code not in (401, 403), f"{method} {path}"
            continue
        if guard.cookie:
            assert anonymous.status_code == 303, f"{method} {path}"
            assert anonymous.headers["location"].startswith("/desk/login")
        else:
            assert anonymous.status_code == 401, f"{method} {path}: {anonymous.status_code}"
            assert anonymous.headers["content-type"] == "application/problem+json"
        for role, headers in credentials.items():
            response = client.request(method, url, headers=headers)
            allowed = role is Role.admin or role in guard.roles
            where = f"{method} {path} as {role.value}: {response.status_code} {response.text[:200]}"
            if allowed:
                assert response.status_code not in (401, 403), where
                assert response.status_code < 500, where
            else:
                assert response.status_code == 403, where
                assert response.json()["role"] == role.value
            checked += 1
    assert checked >= 5 * (len(EXPECTED) - 6)


def test_docs_are_public(api: ApiHarness) -> None:
    listed = {getattr(r, "path", "") for r in flat_routes(api.app)}
    assert listed >= DOCS
    assert api.client.get("/openapi.json").status_code == 200


def test_cookie_sessions_do_not_work_on_the_json_api(api: ApiHarness) -> None:
    token = api.token(Role.operator)
    client = TestClient(api.app, cookies={"gw_session": token})
    assert client.get("/api/v1/events").status_code == 401
    assert client.get("/desk/yingyang").status_code == 200
