"""The API's composition: `create_app(deps)` builds a FastAPI app around long-lived objects.

The runtime (or `gridwatch serve`, or a test) builds `ApiDeps` once; routes reach it
through `get_deps(request)` (it lives on `app.state`), never through globals, so two
apps in one process (tests) never share a store, a limiter or a metrics registry.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from hub.api import problems
from hub.settings import Settings
from simulators.site import Site

if TYPE_CHECKING:
    from events.manager import EventManager
    from events.store import EventStore
    from hub.api.ops import ApiMetrics
    from hub.api.users import UserStore
    from hub.dynsec import BrokerAccounts
    from registry.store import RegistryStore

API_VERSION: Final = "1.0.0"
STATIC_DIR: Final = Path(__file__).parent / "static"

ReadyProbe = Callable[[], Awaitable[None]]
"""Raises when a dependency is unreachable; the exception's text is the reason."""


@dataclass(frozen=True, slots=True)
class CellArea:
    """A grid cell as reports need it: where it is and who answers for it."""

    site: str
    id: str
    name: str
    worker: str
    polygon: tuple[tuple[float, float], ...]
    """(lon, lat) vertices."""


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class ApiDeps:
    """Everything the routes need, built once by the runtime and shared by all requests."""

    settings: Settings
    events: EventStore
    manager: EventManager
    users: UserStore
    jwt_secret: str
    metrics: ApiMetrics
    clock_ms: Callable[[], int] = _wall_clock_ms
    """The clock event actions are stamped with (the one that drives the rules)."""
    cells: Mapping[str, Sequence[CellArea]] = field(default_factory=dict)
    """Grid cells per site, for placing resident reports."""
    probes: Mapping[str, ReadyProbe] = field(default_factory=dict)
    """Readiness checks by name (store, broker, influxdb); see ops.default_probes."""
    registry: RegistryStore | None = None
    """The device registry (sites, cells, workers, devices), when this hub has one."""
    dynsec: BrokerAccounts | None = None
    """Broker credentials through Mosquitto's dynamic-security plugin, when enabled."""


def sink_names(settings: Settings) -> list[str]:
    """The outbox names of the sinks `hub.events_wiring.build_events` wires, so a
    standalone API queues its transitions for the hub's dispatcher to deliver."""
    cfg = settings.events
    names = ["influxdb"] if cfg.write_influx else []
    names += ["mqtt"] if cfg.publish_mqtt else []
    return names + [f"webhook-{i}" for i in range(len(cfg.webhooks))]


def build_deps(
    settings: Settings,
    *,
    store: EventStore | None = None,
    manager: EventManager | None = None,
) -> ApiDeps:
    """What the API needs, from settings; reuses the hub's store and manager when given.

    Users, API keys and report links live in the event store's database (own tables,
    own migration track); so does the registry.
    """
    from events.manager import EventManager  # keep app.py import-light
    from events.store import EventStore
    from hub.api.ops import ApiMetrics, default_probes  # ops imports app
    from hub.api.users import UserStore  # users imports auth imports app
    from hub.directory import directory_from_sites
    from hub.dynsec import accounts_from_settings
    from hub.events_wiring import store_url
    from hub.registry_import import open_registry
    from simulators.site import load_site_ref

    url = store_url(settings)
    Path(settings.hub.data_dir).mkdir(parents=True, exist_ok=True)
    sites = [load_site_ref(ref) for ref in settings.events.sites]
    if store is None:
        store = EventStore(url)
        store.migrate()
    if manager is None:
        workers = directory_from_sites(sites).workers()
        manager = EventManager(store, workers=workers, sinks=sink_names(settings))
    users = UserStore(url)
    users.migrate()
    bootstrap_admin(settings, users)
    return ApiDeps(
        settings=settings,
        events=store,
        manager=manager,
        users=users,
        jwt_secret=jwt_secret(settings),
        metrics=ApiMetrics(),
        cells=cells_of(sites),
        probes=default_probes(settings, users),
        registry=open_registry(settings),
        dynsec=accounts_from_settings(settings),
    )


def bootstrap_admin(settings: Settings, users: UserStore) -> None:
    """Create `api.bootstrap_admin` with a generated password when there is no user yet."""
    from hub.api.auth import Role  # auth imports this module

    name = settings.api.bootstrap_admin
    if not name or users.count_users() > 0:
        return
    password = secrets.token_urlsafe(15)
    users.add_user(name, password, Role.admin)
    print(  # shown once, to the operator who started the hub
        f"gridwatch: created admin user {name!r} with password {password} "
        "(shown once; change it with `gridwatch users passwd`)",
        file=sys.stderr,
    )


def jwt_secret(settings: Settings) -> str:
    """The configured signing key, or one generated once into data_dir (0600) and reused."""
    if settings.api.jwt_secret is not None:
        return settings.api.jwt_secret.get_secret_value()
    path = Path(settings.hub.data_dir) / "api-jwt.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process won the race: use its key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def cells_of(sites: Sequence[Site]) -> dict[str, list[CellArea]]:
    """Grid cells per site from site files (what integrators have until the registry)."""
    return {
        site.site: [
            CellArea(site.site, cell.id, cell.name, cell.worker.id, tuple(cell.polygon))
            for cell in site.cells
        ]
        for site in sites
    }


def get_deps(request: Request) -> ApiDeps:
    deps = request.app.state.deps
    assert isinstance(deps, ApiDeps), "create_app() puts ApiDeps on app.state"
    return deps


def create_app(deps: ApiDeps) -> FastAPI:
    """The FastAPI app with every router, the problem handlers and the metrics middleware."""
    from hub.api import (
        auth,
        desk,
        ops,
        routes_events,
        routes_geo,
        routes_registry,
        routes_reports,
    )

    app = FastAPI(
        title="GridWatch hub API",
        version=API_VERSION,
        description=(
            "Event desk, resident reports, device registry and broker credentials of a "
            "GridWatch hub. Authenticate with `POST /api/v1/auth/token` (bearer JWT) or an "
            "`X-API-Key`. Errors are RFC 9457 problem documents."
        ),
        openapi_tags=[
            {"name": "auth", "description": "Tokens and who you are"},
            {"name": "events", "description": "The event desk: list, inspect and work events"},
            {"name": "reports", "description": "Incidents reported by residents"},
            {"name": "ops", "description": "Health, readiness and metrics"},
        ],
    )
    app.state.deps = deps
    app.state.templates = desk.make_templates()
    app.state.login_limiter = auth.LoginLimiter(
        deps.settings.api.login_attempts, deps.settings.api.login_window_s
    )
    problems.install(app)
    ops.install_metrics(app, deps.metrics)
    for router in (
        auth.router,
        ops.router,
        routes_events.router,
        routes_reports.router,
        desk.router,
        routes_registry.router,
        routes_geo.router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
