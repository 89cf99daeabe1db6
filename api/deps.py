"""What the routes need: `ApiDeps`, built once by the hub (or `gridwatch serve`, or a
test) and reached through `get_deps(request)`.

It lives on `app.state`, never in globals, so two apps in one process (tests) never
share a store, a limiter or a metrics registry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from sites.model import Site

if TYPE_CHECKING:
    from accounts.users import UserStore
    from api.metrics import ApiMetrics
    from broker.dynsec import BrokerAccounts
    from events.attachments import AttachmentStore
    from events.manager import EventManager
    from events.store import EventStore
    from registry.store import RegistryStore

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


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The settings the routes read (the hub maps its `[api]` and `[mqtt]` onto these)."""

    token_lifetime_s: int
    login_attempts: int
    login_window_s: float
    topic_prefix: str
    """Device topics start with it (credentials' ACLs)."""
    max_body_bytes: int = 1024 * 1024
    """Largest request body of any route but the registry import (413 beyond it)."""
    max_import_bytes: int = 16 * 1024 * 1024
    """Largest body of `POST /api/v1/registry/import`."""
    trusted_proxies: tuple[str, ...] = ()
    """IPs/CIDRs whose X-Forwarded-For/-Proto are believed (client address, https)."""
    login_account_failures: int = 10
    """Failed logins on one account, from any address, before its backoff starts."""
    login_backoff_max_s: float = 900.0
    """The account backoff's ceiling (it doubles from 1 s per further failure)."""
    max_photo_bytes: int = 8 * 1024 * 1024
    """Largest photo on the worker's and residents' pages (413 beyond it)."""
    max_worker_photos: int = 4
    """Photos per note or resolution on the worker's page."""
    max_report_photos: int = 1
    """Photos per report on the residents' page (0: none)."""
    public_reports: int = 10
    """Reports one client address may post on the residents' page per window (429 beyond)."""
    public_reports_total: int = 300
    """Reports all clients together may post on the residents' page per window."""
    public_report_window_s: float = 3600.0


@dataclass
class ApiDeps:
    """Everything the routes need, built once by the runtime and shared by all requests."""

    config: ApiConfig
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
    """Readiness checks by name: store, broker, influxdb (`api.probes.default_probes`);
    inside the running hub also mqtt, intake, writer, tasks (`api.probes.ingestion_probes`)."""
    registry: RegistryStore | None = None
    """The device registry (sites, cells, workers, devices), when this hub has one."""
    dynsec: BrokerAccounts | None = None
    """Broker credentials through Mosquitto's dynamic-security plugin, when enabled."""
    attachments: AttachmentStore | None = None
    """Photos of the field loop and the residents' report tokens (`events.attachments`);
    without it the worker's and residents' pages take no photos and have no status links."""


def cells_of(sites: Sequence[Site]) -> dict[str, list[CellArea]]:
    """Grid cells per site from site files (reports prefer the registry's cells where it
    holds the site)."""
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
