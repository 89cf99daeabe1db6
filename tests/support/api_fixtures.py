"""Fixtures for API tests: the app over a real event database, users of every role.

`api_harness(url)` builds what the runtime builds (event store, manager, user
store, metrics) on the given database and wraps the app in a TestClient; `token(role)`
logs a user of that role in through the real login route.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient

from accounts.roles import Role
from accounts.users import UserStore
from api.deps import ApiConfig, ApiDeps, ReadyProbe, cells_of
from api.metrics import ApiMetrics
from api.server import create_app
from events.manager import EventManager
from events.model import Detection, SecurityEvent, Severity
from events.store import EventStore
from registry.store import RegistryStore
from sites.model import load_site_ref

PASSWORD = "correct horse battery"
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
"""Real argon2id with small costs: tests log in dozens of times on a shared 2-core box."""


@dataclass
class ApiHarness:
    app: FastAPI
    deps: ApiDeps
    client: TestClient
    url: str
    """The database the harness's stores use."""
    _tokens: dict[Role, str] = field(default_factory=dict)

    def user(self, role: Role) -> str:
        name = f"{role.value}-user"
        if self.deps.users.get_user(name) is None:
            self.deps.users.add_user(name, PASSWORD, role)
        return name

    def token(self, role: Role) -> str:
        if role not in self._tokens:
            response = self.client.post(
                "/api/v1/auth/token", data={"username": self.user(role), "password": PASSWORD}
            )
            assert response.status_code == 200, response.text
            self._tokens[role] = response.json()["access_token"]
        return self._tokens[role]

    def headers(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role)}"}

    def raise_event(
        self,
        *,
        rule: str = "smoke_alarm",
        key: str = "dev-1",
        site: str = "yingyang",
        cell: str | None = None,
        severity: Severity = Severity.HIGH,
        at_ms: int | None = None,
    ) -> SecurityEvent:
        """Open an event the way the rules do: a detection through the manager."""
        now = at_ms or self.deps.clock_ms()
        detection = Detection(
            rule_id=rule,
            key=key,
            raised=True,
            at_ms=now,
            site=site,
            cell=cell,
            device=key,
            severity=severity,
            title=f"{rule} at {key}",
            message="raised by a test",
            incident=rule,
        )
        return self.deps.manager.handle(detection, now)[0]

    def clear_event(self, event: SecurityEvent, at_ms: int | None = None) -> None:
        now = at_ms or self.deps.clock_ms()
        detection = Detection(
            rule_id=event.rule_id, key=event.key, raised=False, at_ms=now, site=event.site
        )
        self.deps.manager.handle(detection, now)


@contextlib.contextmanager
def api_harness(
    url: str,
    *,
    probes: Mapping[str, ReadyProbe] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Iterator[ApiHarness]:
    """`config` overrides fields of the harness's ApiConfig (body limits, proxies...)."""
    store = EventStore(url)
    store.migrate()
    users = UserStore(url, hasher=FAST_HASHER)
    users.migrate()
    registry = RegistryStore(url)
    registry.migrate()
    cells = cells_of([load_site_ref("yingyang")])
    workers = {c.id: c.worker for site in cells.values() for c in site}
    deps = ApiDeps(
        config=dataclasses.replace(
            ApiConfig(
                token_lifetime_s=3600, login_attempts=3, login_window_s=60.0, topic_prefix="gw/v1"
            ),
            **(config or {}),
        ),
        events=store,
        manager=EventManager(store, workers=workers),
        users=users,
        jwt_secret="test-jwt-secret-0123456789abcdef0123456789",
        metrics=ApiMetrics(),
        cells=cells,
        probes=probes if probes is not None else {},
        registry=registry,
    )
    app = create_app(deps)
    try:
        with TestClient(app, raise_server_exceptions=True) as client:
            yield ApiHarness(app, deps, client, url)
    finally:
        registry.close()
        users.close()
        store.close()


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    config = uvicorn.Config(  # like api_server: X-Forwarded-* only via api.trusted_proxies
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", proxy_headers=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    (sock,) = [s for srv in server.servers for s in srv.sockets]
    port = sock.getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
