"""Settings → the API's dependencies and its server, for `gridwatch run` (embedded) and
`gridwatch serve` (standalone)."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
from pathlib import Path

from fastapi import FastAPI

from accounts.roles import Role
from accounts.users import UserStore
from api.deps import ApiConfig, ApiDeps, cells_of
from api.metrics import ApiMetrics
from api.probes import IngestionView, default_probes, with_ingestion
from api.server import EmbeddedApi, create_app
from events.attachments import AttachmentStore
from events.manager import EventManager
from events.store import EventStore
from hub.settings import Settings
from hub.wiring import EventsSide, accounts_from_settings, open_registry, store_url
from rules.site_directory import directory_from_sites
from sites.model import load_site_ref

log = logging.getLogger(__name__)


def sink_names(settings: Settings) -> list[str]:
    """The outbox names of the sinks `hub.wiring.build_events` wires, so a
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
    ingestion: IngestionView | None = None,
) -> ApiDeps:
    """What the API needs, from settings; reuses the hub's store and manager when given.
    `ingestion` (the running hub) makes the store/broker/influxdb readiness probes also
    check ingestion (`api.probes.with_ingestion`).

    Users, API keys and report links live in the event store's database (own tables,
    own migration track); so do the registry and the field loop's photo rows and report
    tokens (the photos themselves are files under `field.directory`).
    """
    url = store_url(settings)
    Path(settings.hub.data_dir).mkdir(parents=True, exist_ok=True)
    sites = [load_site_ref(ref) for ref in settings.events.sites]
    if store is None:
        store = EventStore(url)
        store.migrate()
    if manager is None:
        workers = directory_from_sites(sites).workers()
        manager = EventManager(
            store,
            workers=workers,
            sinks=sink_names(settings),
            flood_exempt=settings.events.flood_exempt,
        )
    users = UserStore(url)
    users.migrate()
    bootstrap_admin(settings, users)
    attachments = AttachmentStore(url, attachments_dir(settings))
    attachments.migrate()
    field = settings.field
    probes = default_probes(users, settings.mqtt.host, settings.mqtt.port, settings.influx.url)
    return ApiDeps(
        config=ApiConfig(
            token_lifetime_s=settings.api.token_lifetime_s,
            login_attempts=settings.api.login_attempts,
            login_window_s=settings.api.login_window_s,
            topic_prefix=settings.mqtt.topic_prefix,
            max_body_bytes=settings.api.max_body_bytes,
            max_import_bytes=settings.api.max_import_bytes,
            trusted_proxies=tuple(settings.api.trusted_proxies),
            login_account_failures=settings.api.login_account_failures,
            login_backoff_max_s=settings.api.login_backoff_max_s,
            max_photo_bytes=field.max_photo_bytes,
            max_worker_photos=field.max_worker_photos,
            max_report_photos=field.max_report_photos,
            public_reports=field.public_reports,
            public_reports_total=field.public_reports_total,
            public_report_window_s=field.public_report_window_s,
        ),
        events=store,
        manager=manager,
        users=users,
        jwt_secret=jwt_secret(settings),
        metrics=ApiMetrics(),
        cells=cells_of(sites),
        probes=probes if ingestion is None else with_ingestion(probes, ingestion),
        registry=open_registry(settings),
        dynsec=accounts_from_settings(settings),
        attachments=attachments,
    )


def attachments_dir(settings: Settings) -> Path:
    """`field.directory`, or `<hub.data_dir>/attachments`."""
    configured = settings.field.directory
    return configured if configured is not None else Path(settings.hub.data_dir) / "attachments"


def bootstrap_admin(settings: Settings, users: UserStore) -> None:
    """Create `api.bootstrap_admin` with a generated password when there is no user yet."""
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


def build_api(
    settings: Settings,
    *,
    store: EventStore | None = None,
    manager: EventManager | None = None,
    ingestion: IngestionView | None = None,
) -> tuple[FastAPI, ApiDeps]:
    deps = build_deps(settings, store=store, manager=manager, ingestion=ingestion)
    return create_app(deps), deps


def embedded_api(
    settings: Settings,
    events: EventsSide | None,
    ingestion: IngestionView | None = None,
) -> EmbeddedApi | None:
    """The API `gridwatch run` serves, unless `api.enabled` is off; `ingestion` is what
    `/readyz` asks the running hub."""
    if not settings.api.enabled:
        return None
    store = events.store if events is not None else None
    manager = events.service.manager if events is not None else None
    app, deps = build_api(settings, store=store, manager=manager, ingestion=ingestion)
    host, port = settings.api.host, settings.api.port
    api = EmbeddedApi(app, deps, host, port, owns_store=events is None)
    log.info("API on %s (desk at /desk/, docs at /docs)", api.url)
    return api
