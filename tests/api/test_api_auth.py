"""Auth: password login to a bearer JWT, API keys, roles, the login rate limit, problems."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accounts.roles import Role
from tests.support.api_fixtures import PASSWORD, ApiHarness, api_harness


@pytest.fixture
def api(event_db_url: str) -> Iterator[ApiHarness]:
    with api_harness(event_db_url) as harness:
        yield harness


def test_password_login_gives_a_bearer_token_that_names_the_user(api: ApiHarness) -> None:
    name = api.user(Role.operator)
    response = api.client.post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer" and body["role"] == "operator"
    me = api.client.get(
        "/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.json() == {"subject": name, "role": "operator", "via": "token"}


def test_wrong_password_is_a_401_problem(api: ApiHarness) -> None:
    name = api.user(Role.operator)
    response = api.client.post(
        "/api/v1/auth/token", data={"username": name, "password": "nope-nope-nope"}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 401 and problem["title"] == "Authentication required"
    assert problem["instance"] == "/api/v1/auth/token"
    assert response.headers["www-authenticate"] == "Bearer"


def test_login_is_rate_limited_per_user_and_client(api: ApiHarness) -> None:
    name = api.user(Role.operator)
    statuses = [
        api.client.post(
            "/api/v1/auth/token", data={"username": name, "password": "wrong-wrong"}
        ).status_code
        for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 429]  # login_attempts = 3 in the harness
    locked = api.client.post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
    other = api.client.post(
        "/api/v1/auth/token", data={"username": api.user(Role.admin), "password": PASSWORD}
    )
    assert other.status_code == 200  # another account from the same client is not locked out
    assert 'gridwatch_api_logins_total{outcome="refused"} 3.0' in api.client.get("/metrics").text


def test_passwords_are_stored_as_argon2id_hashes(api: ApiHarness) -> None:
    import sqlalchemy as sa

    from accounts.users import api_users

    api.user(Role.resident)
    engine = sa.create_engine(api.url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        stored = conn.execute(sa.select(api_users.c.password_hash)).scalars().all()
    engine.dispose()
    assert stored and all(h.startswith("$argon2id$") and PASSWORD not in h for h in stored)


def test_api_keys_authenticate_machines_until_revoked(api: ApiHarness) -> None:
    _, device_key = api.deps.users.add_key("meter", Role.device, "yy-smoke-001")
    assert api.client.get("/api/v1/auth/me", headers={"X-API-Key": device_key}).status_code == 403
    key, plaintext = api.deps.users.add_key("grafana", Role.operator, "grafana")
    me = api.client.get("/api/v1/auth/me", headers={"X-API-Key": plaintext})
    assert me.json() == {"subject": "grafana", "role": "operator", "via": "key"}
    assert (
        api.client.get("/api/v1/auth/me", headers={"X-API-Key": plaintext[:-1] + "x"}).status_code
        == 401
    )
    api.deps.users.revoke_key(key.id)
    assert api.client.get("/api/v1/auth/me", headers={"X-API-Key": plaintext}).status_code == 401


def test_missing_or_forged_tokens_are_refused(api: ApiHarness) -> None:
    assert api.client.get("/api/v1/auth/me").status_code == 401
    forged = api.token(Role.resident)[:-3] + "abc"
    response = api.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401 and response.json()["detail"].startswith("invalid token")


def test_disabled_users_cannot_log_in(api: ApiHarness) -> None:
    name = api.user(Role.operator)
    api.deps.users.set_disabled(name, True)
    response = api.client.post("/api/v1/auth/token", data={"username": name, "password": PASSWORD})
    assert response.status_code == 401


def test_health_is_public(api: ApiHarness) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
