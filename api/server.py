"""The API as a served application: `create_app(deps)` builds the FastAPI app around
long-lived objects; `api_server` and `EmbeddedApi` serve it with uvicorn, standalone
(`gridwatch serve`) or as one task of the running hub."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api import problems
from api.deps import ApiDeps
from api.hardening import BodyLimits, RequestGuard
from api.metrics import install_metrics
from api.roles import LoginLimiter
from api.routes import (
    auth,
    desk,
    events,
    field,
    geo,
    kpi,
    ops,
    registry,
    reports,
    resident,
    stream,
    wall,
    worker,
)

API_VERSION: Final = "1.0.0"
STATIC_DIR: Final = Path(__file__).parent / "static"


def create_app(deps: ApiDeps) -> FastAPI:
    """The FastAPI app with every router, the problem handlers and the metrics middleware."""
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
            {"name": "kpi", "description": "Alarm KPIs after ISA-18.2 and EEMUA 191"},
            {"name": "ops", "description": "Health, readiness and metrics"},
        ],
    )
    app.state.deps = deps
    app.state.templates = desk.make_templates()
    field.install_templates(app.state.templates)
    app.state.streams = stream.LiveStreams()
    config = deps.config
    app.state.login_limiter = LoginLimiter(
        config.login_attempts,
        config.login_window_s,
        account_failures=config.login_account_failures,
        backoff_max_s=config.login_backoff_max_s,
    )
    app.state.report_limiter = resident.ReportLimiter(
        config.public_reports, config.public_reports_total, config.public_report_window_s
    )
    problems.install(app)
    worker_upload = field.upload_body_limit(config.max_worker_photos, config.max_photo_bytes)
    report_upload = field.upload_body_limit(config.max_report_photos, config.max_photo_bytes)
    limits = BodyLimits(
        config.max_body_bytes,
        {
            registry.IMPORT_PATH: config.max_import_bytes,
            worker.RESOLVE_PATH: max(config.max_body_bytes, worker_upload),
            worker.NOTE_PATH: max(config.max_body_bytes, worker_upload),
            resident.REPORT_PATH: max(config.max_body_bytes, report_upload),
        },
    )
    app.add_middleware(RequestGuard, limits=limits)  # inside the metrics: refusals counted
    install_metrics(app, deps.metrics)
    if config.trusted_proxies:  # outermost: everything after sees the real client
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(config.trusted_proxies))
    for router in (
        # The field pages first: `/desk/worker/` and `/desk/photos/` are theirs, not sites'.
        field.router,
        worker.router,
        resident.router,
        auth.router,
        ops.router,
        events.router,
        reports.router,
        desk.router,
        registry.router,
        geo.router,
        kpi.router,
        wall.router,
        stream.router,
    ):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def close_api(deps: ApiDeps, *, store_too: bool) -> None:
    deps.users.close()
    if deps.attachments is not None:
        deps.attachments.close()
    if deps.registry is not None:
        deps.registry.close()
    if store_too:
        deps.events.close()


def api_server(app: FastAPI, host: str, port: int, *, embedded: bool) -> uvicorn.Server:
    """A uvicorn server for the app; embedded ones leave signal handling to the hub."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        # X-Forwarded-* are honoured by the app itself, and only from api.trusted_proxies
        # (create_app): the login limits key on the client address.
        proxy_headers=False,
    )
    streams = stream.live_streams(app)

    class ApiServer(uvicorn.Server):
        """Ends the event streams first: uvicorn waits for open responses to finish."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            streams.open()
            await super().startup(sockets)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            streams.close()
            await super().shutdown(sockets)

    if not embedded:
        return ApiServer(config)

    class EmbeddedServer(ApiServer):
        """Runs inside the hub's TaskGroup: the hub's own SIGINT/SIGTERM stop it."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return EmbeddedServer(config)


class EmbeddedApi:
    """The API inside `gridwatch run`: one more task in the hub's TaskGroup.

    Shares the hub's event store and manager (one writer per process). The socket is
    bound here, at start-up, so a port in use is a clear error before anything runs
    (uvicorn would otherwise exit the whole process from inside its task).
    """

    def __init__(
        self, app: FastAPI, deps: ApiDeps, host: str, port: int, *, owns_store: bool
    ) -> None:
        self.app, self.deps = app, deps
        self._owns_store = owns_store
        self.socket = socket.create_server((host, port), reuse_port=False)
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        self.server = api_server(self.app, host, port, embedded=True)
        self._stopped = asyncio.Event()

    async def run(self) -> None:
        try:
            await self.server.serve(sockets=[self.socket])
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Finish the requests in flight, then return."""
        self.server.should_exit = True
        await self._stopped.wait()

    def close(self) -> None:
        self.socket.close()
        close_api(self.deps, store_too=self._owns_store)
