"""Hostile HTTP input cannot stop the hub (issue 18): bodies are limited and refused
before they are read, credentials are checked before a body is, every response carries
security headers, X-Forwarded-* count only from trusted proxies (Secure cookie, login
limits), one account guessed from many addresses slows down without locking its owner
out, shelves are bounded, map layers are paged.

The body tests talk raw HTTP/1.1 to the app under uvicorn on a loopback port: a
generator feeds the body while the response is watched for, so the test proves the
answer came before the body was sent (let alone read).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from accounts.roles import Role
from api.hardening import CSP_DOCS, CSP_PAGES
from api.roles import SESSION_COOKIE, LoginLimiter
from registry.site_import import import_sites
from sites.model import load_site_ref
from tests.support.api_fixtures import PASSWORD, ApiHarness, api_harness, serving

MB = 1024 * 1024
HUGE = 50 * MB
SENT_BOUND = 16 * MB
"""What a client may have sent before the answer: the server's read plus loopback's
socket buffers (several MB when the kernel autotunes them), far from all 50 MB."""
PROBLEM = "application/problem+json"
REPORT = b'{"site": "yingyang", "cell": "yy-g01", "category": "noise", "description": "'


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with api_harness(f"sqlite:///{tmp_path / 'events.db'}") as harness:
        yield harness


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[ApiHarness, str]]:
    """The app behind a trusted proxy on loopback, with a small account threshold."""
    config = {
        "trusted_proxies": ("127.0.0.1",),
        "login_account_failures": 4,
        "login_backoff_max_s": 60.0,
    }
    with (
        api_harness(f"sqlite:///{tmp_path / 'events.db'}", config=config) as harness,
        serving(harness.app) as base,
    ):
        yield harness, base


# ---------------------------------------------------------------------- raw HTTP


class Streamed:
    """What a raw HTTP/1.1 exchange gave: the response and how much body was sent."""

    def __init__(self, raw: bytes, sent: int, exhausted: bool, seconds: float) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        self.sent, self.exhausted, self.seconds = sent, exhausted, seconds


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(body) >= int(value)
    return False


def stream(
    base: str,
    path: str,
    body: Iterator[bytes],
    headers: dict[str, str],
    *,
    chunked: bool,
    timeout_s: float = 30.0,
) -> Streamed:
    """POST `body` as the generator yields it, stopping as soon as a response arrives."""
    url = urlsplit(base)
    assert url.hostname is not None and url.port is not None
    started = time.monotonic()
    sock = socket.create_connection((url.hostname, url.port), timeout=timeout_s)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {url.netloc}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    sock.setblocking(False)
    raw, pending, sent, exhausted = b"", b"", 0, False
    closed = False  # the server closed its side: nothing more can be sent
    try:
        while time.monotonic() - started < timeout_s:
            sending = not (exhausted or closed)
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 0.5)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                raw += data
                if _complete(raw):
                    break
                continue
            if writable:
                if not pending:
                    chunk = next(body, None)
                    if chunk is None:
                        exhausted = True
                        pending = b"0\r\n\r\n" if chunked else b""
                        if not pending:
                            continue
                    else:
                        pending = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
                        sent += len(chunk)
                try:
                    n = sock.send(pending)
                except (BrokenPipeError, ConnectionResetError):
                    # Refused and closed mid-body: the answer is waiting to be read.
                    closed = True
                    continue
                pending = pending[n:]
    finally:
        sock.close()
    assert raw, f"no response after sending {sent} bytes"
    return Streamed(raw, sent, exhausted, time.monotonic() - started)


def megabytes(total: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """A report whose description never ends: `total` bytes of JSON-ish body."""
    yield REPORT
    block = b"x" * chunk
    for _ in range(total // chunk):
        yield block


# ---------------------------------------------------------------------- body limits


def test_an_anonymous_50_mb_post_is_refused_before_it_is_read(api: ApiHarness) -> None:
    with serving(api.app) as base:
        started = time.monotonic()
        chunked = stream(base, "/api/v1/reports", megabytes(HUGE), {}, chunked=True)
        declared = stream(
            base,
            "/api/v1/reports",
            megabytes(HUGE),
            {"Content-Length": str(HUGE + len(REPORT)), "Content-Type": "application/json"},
            chunked=False,
        )
    for answer in (chunked, declared):
        assert not answer.exhausted and answer.sent < SENT_BOUND, answer.sent
        assert answer.headers["content-type"] == PROBLEM
        assert answer.headers["connection"] == "close"
    assert chunked.status == 401  # credentials first: nothing of the body was wanted
    assert b"unauthorized" in chunked.body
    assert declared.status == 413  # over every route's limit: refused before routing
    assert b"payload-too-large" in declared.body
    assert time.monotonic() - started < 10


def test_an_authenticated_body_over_the_limit_is_refused_as_it_streams(api: ApiHarness) -> None:
    auth = api.headers(Role.resident)
    with serving(api.app) as base:
        chunked = stream(base, "/api/v1/reports", megabytes(HUGE), auth, chunked=True)
        declared = stream(
            base,
            "/api/v1/reports",
            megabytes(15 * MB),  # under the import route's limit: refused once routed
            {**auth, "Content-Length": str(15 * MB + len(REPORT))},
            chunked=False,
        )
    for answer in (chunked, declared):
        assert answer.status == 413, answer.body
        assert not answer.exhausted and answer.sent < SENT_BOUND, answer.sent
        assert answer.headers["content-type"] == PROBLEM
        assert b'"limit_bytes":1048576' in answer.body


def test_a_wrong_role_is_refused_before_the_body(api: ApiHarness) -> None:
    with serving(api.app) as base:
        answer = stream(
            base, "/api/v1/reports", megabytes(HUGE), api.headers(Role.integrator), chunked=True
        )
    assert answer.status == 403 and not answer.exhausted


def test_limits_come_from_the_config_and_the_import_route_takes_more(tmp_path: Path) -> None:
    config = {"max_body_bytes": 4096, "max_import_bytes": 64 * 1024}
    with api_harness(f"sqlite:///{tmp_path / 'e.db'}", config=config) as api:
        integrator = api.headers(Role.integrator)
        big = "x" * 8000
        site = {"id": "s1", "name": big, "lon": 0, "lat": 0}
        refused = api.client.post("/api/v1/sites", json=site, headers=integrator)
        assert refused.status_code == 413
        assert refused.headers["content-type"] == PROBLEM
        assert refused.json()["limit_bytes"] == 4096
        csv = "id,site\n" + "x" * 20_000
        imported = api.client.post(
            "/api/v1/registry/import?format=csv",
            content=csv,
            headers={**integrator, "Content-Type": "text/csv"},
        )
        assert imported.status_code == 422, imported.text  # read and judged, not refused
        too_big = api.client.post(
            "/api/v1/registry/import?format=csv",
            content="id\n" + "x" * 70_000,
            headers={**integrator, "Content-Type": "text/csv"},
        )
        assert too_big.status_code == 413
        assert too_big.json()["limit_bytes"] == 64 * 1024
        login = api.client.post(  # public routes are limited too
            "/api/v1/auth/token", data={"username": "a", "password": "p" * 5000}
        )
        assert login.status_code == 413


# ---------------------------------------------------------------------- headers


def test_every_response_carries_the_security_headers(api: ApiHarness) -> None:
    client = api.client
    responses = {
        "api": client.get("/api/v1/events", headers=api.headers(Role.operator)),
        "refused": client.get("/api/v1/events"),
        "unknown": client.get("/nowhere"),
        "login page": client.get("/desk/login"),
        "static": client.get("/static/desk.css"),
        "health": client.get("/healthz"),
        "schema": client.get("/openapi.json"),
    }
    for name, response in responses.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["referrer-policy"] == "no-referrer", name
        assert response.headers["x-frame-options"] == "DENY", name
        assert response.headers["content-security-policy"] == CSP_PAGES, name
        assert "frame-ancestors 'none'" in CSP_PAGES and "default-src 'self'" in CSP_PAGES
    for name in ("api", "refused", "login page"):
        assert responses[name].headers["cache-control"] == "no-store", name
    assert responses["static"].headers.get("cache-control") != "no-store"
    docs = client.get("/docs")
    assert docs.headers["content-security-policy"] == CSP_DOCS
    assert "frame-ancestors 'none'" in CSP_DOCS


# ---------------------------------------------------------------------- proxies


def _desk_login(base: str, headers: dict[str, str], password: str = PASSWORD) -> httpx.Response:
    return httpx.post(
        f"{base}/desk/login",
        data={"username": "operator-user", "password": password, "next": "/desk/"},
        headers=headers,
        follow_redirects=False,
        timeout=10,
    )


def test_the_session_cookie_is_secure_behind_a_trusted_tls_proxy(
    proxied: tuple[ApiHarness, str],
) -> None:
    api, base = proxied
    api.user(Role.operator)
    tls = _desk_login(base, {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"})
    plain = _desk_login(base, {})
    assert tls.status_code == plain.status_code == 303
    assert SESSION_COOKIE in tls.headers["set-cookie"]
    assert "secure" in tls.headers["set-cookie"].lower()
    assert "secure" not in plain.headers["set-cookie"].lower()


def test_forwarded_headers_from_an_untrusted_peer_change_nothing(api: ApiHarness) -> None:
    api.user(Role.operator)
    with serving(api.app) as base:  # no trusted proxies
        tls = _desk_login(base, {"X-Forwarded-Proto": "https"})
        assert "secure" not in tls.headers["set-cookie"].lower()
        # the limit keys on the peer: a forged X-Forwarded-For does not give fresh tries
        codes = [
            _desk_login(base, {"X-Forwarded-For": f"203.0.113.{i}"}, "wrong").headers["location"]
            for i in range(4)
        ]
    assert "too+many" in codes[-1] or "too%20many" in codes[-1], codes


def test_the_login_limit_keys_on_the_client_a_trusted_proxy_names(
    proxied: tuple[ApiHarness, str],
) -> None:
    api, base = proxied
    user = api.user(Role.operator)

    def token(client: str, password: str) -> httpx.Response:
        return httpx.post(
            f"{base}/api/v1/auth/token",
            data={"username": user, "password": password},
            headers={"X-Forwarded-For": client},
            timeout=10,
        )

    codes = [token("203.0.113.1", "wrong").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]  # login_attempts = 3 per (user, client)
    assert token("203.0.113.2", PASSWORD).status_code == 200  # another client is not blocked


# ---------------------------------------------------------------------- account backoff


def test_one_account_guessed_from_many_addresses_slows_down_but_its_owner_gets_in(
    proxied: tuple[ApiHarness, str],
) -> None:
    api, base = proxied
    user = api.user(Role.operator)

    def login(client: str, password: str) -> httpx.Response:
        return httpx.post(
            f"{base}/api/v1/auth/token",
            data={"username": user, "password": password},
            headers={"X-Forwarded-For": client},
            timeout=10,
        )

    assert login("198.51.100.7", PASSWORD).status_code == 200  # the owner's usual address
    guesses = [login(f"203.0.113.{i}", "guess").status_code for i in range(1, 8)]
    assert guesses[:4] == [401] * 4  # login_account_failures = 4, one per address
    assert 429 in guesses[4:]
    slowed = login("203.0.113.99", "guess")
    assert slowed.status_code == 429
    assert slowed.headers["content-type"] == PROBLEM
    assert 1 <= int(slowed.headers["retry-after"]) <= 60
    assert "account" in slowed.json()["detail"]
    assert login("198.51.100.7", PASSWORD).status_code == 200  # owner: exempt
    other = api.user(Role.resident)  # other accounts from the attackers' addresses: free
    response = httpx.post(
        f"{base}/api/v1/auth/token",
        data={"username": other, "password": PASSWORD},
        headers={"X-Forwarded-For": "203.0.113.1"},
        timeout=10,
    )
    assert response.status_code == 200


def test_the_account_backoff_doubles_is_bounded_and_is_forgotten() -> None:
    limiter = LoginLimiter(5, 60.0, account_failures=3, backoff_max_s=30.0)
    now = 1000.0
    waits = []
    for i in range(12):
        client = f"10.0.0.{i}"
        while (wait := limiter.account_wait("alice", client, now)) > 0:
            now += wait
        waits.append(round(limiter.account_wait("alice", "10.9.9.9", now + 1e-9) + 1e-9, 3))
        limiter.check("alice", client, now)
        limiter.failed("alice", client, now)
    assert waits[:3] == [0, 0, 0]
    delays = [limiter.account_wait("alice", "10.9.9.9", now)]
    assert delays == [30.0]  # 2 ** 9 s, capped at backoff_max_s
    assert limiter.account_wait("alice", "10.9.9.9", now + 30) <= 0  # bounded
    assert limiter.account_wait("bob", "10.9.9.9", now) == 0  # only that account
    limiter.failed("alice", "10.0.0.1", now)
    assert limiter.account_wait("alice", "10.9.9.9", now + 1) > 0
    assert limiter.account_wait("alice", "10.9.9.9", now + 4 * 30 + 1) == 0  # forgotten


def test_the_backoff_grows_one_failure_at_a_time() -> None:
    limiter = LoginLimiter(5, 60.0, account_failures=2, backoff_max_s=1000.0)
    now = 0.0
    seen: list[float] = []
    for i in range(6):
        limiter.failed("alice", f"10.0.0.{i}", now)
        seen.append(limiter.account_wait("alice", "10.9.9.9", now))
    assert seen == [0, 1, 2, 4, 8, 16]


# ---------------------------------------------------------------------- shelve


@pytest.mark.parametrize(
    ("until", "why"),
    [
        (datetime(9999, 12, 31, tzinfo=UTC), "days ahead"),
        (datetime.now(UTC) + timedelta(days=31), "days ahead"),
    ],
)
def test_shelve_until_is_bounded_like_for_s(api: ApiHarness, until: datetime, why: str) -> None:
    event = api.raise_event()
    response = api.client.post(
        f"/api/v1/events/{event.id}/shelve",
        json={"until": until.isoformat()},
        headers=api.headers(Role.operator),
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert why in problem["detail"]
    assert problem["errors"][0]["loc"] == ["body", "until"]
    stored = api.deps.events.get(event.id)
    assert stored is not None and stored.shelved_until_ms is None


def test_shelve_until_in_the_past_is_the_lifecycles_refusal(api: ApiHarness) -> None:
    event = api.raise_event()
    past = datetime.now(UTC) - timedelta(minutes=1)
    response = api.client.post(
        f"/api/v1/events/{event.id}/shelve",
        json={"until": past.isoformat()},
        headers=api.headers(Role.operator),
    )
    assert response.status_code == 409 and "expiry in the future" in response.json()["detail"]
    assert response.headers["content-type"] == PROBLEM


def test_shelve_until_within_30_days_is_accepted(api: ApiHarness) -> None:
    event = api.raise_event()
    until = datetime.now(UTC) + timedelta(days=29)
    response = api.client.post(
        f"/api/v1/events/{event.id}/shelve",
        json={"until": until.isoformat()},
        headers=api.headers(Role.operator),
    )
    assert response.status_code == 200, response.text
    assert response.json()["shelved_until_ms"] == int(until.timestamp() * 1000)


# ---------------------------------------------------------------------- map layers


def _features(response: httpx.Response) -> list[Any]:
    assert response.status_code == 200, response.text
    features: list[Any] = response.json()["features"]
    return features


@pytest.mark.parametrize("layer", ["devices", "cells"])
def test_map_layers_are_paged(api: ApiHarness, layer: str) -> None:
    site = load_site_ref("yingyang")
    assert api.deps.registry is not None
    import_sites(api.deps.registry, [site])
    expected = {d.id for d in site.devices} if layer == "devices" else {c.id for c in site.cells}
    url = f"/api/v1/sites/yingyang/{layer}.geojson"
    headers = api.headers(Role.operator)
    whole = api.client.get(url, headers=headers)  # Geomap's URL: no paging parameters
    body = whole.json()
    assert {f["id"] for f in _features(whole)} == expected
    assert (body["total"], body["offset"], body["truncated"]) == (len(expected), 0, False)
    seen: list[str] = []
    while True:
        page = api.client.get(url, params={"limit": 2, "offset": len(seen)}, headers=headers)
        seen += [f["id"] for f in _features(page)]
        assert page.json()["total"] == len(expected)
        if not page.json()["truncated"]:
            break
        assert len(page.json()["features"]) == 2
    assert seen == sorted(expected)
    too_many = api.client.get(url, params={"limit": 10_001}, headers=headers)
    assert too_many.status_code == 422
    assert too_many.headers["content-type"] == PROBLEM
