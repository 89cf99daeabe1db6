"""What every request goes through before a route sees it: a body-size limit enforced
before the body is read, credentials checked before the body is read, and security
headers on every response (`RequestGuard`, a plain ASGI middleware).

FastAPI reads and parses a request's body *before* it resolves the route's
dependencies, the role guard included; so without this an anonymous client could make
the hub buffer (and parse, on the event loop it shares with MQTT) a body of any size.
Here:

- a `Content-Length` above the largest limit is refused (413) before the app runs;
- the app's `receive` is wrapped: on the first read of the body, once the router has
  chosen the route, the route's guard (`api.roles.RoleGuard`) checks the caller's
  headers (401/403, or the desk's login redirect) and the route's limit is applied to
  the declared length; every chunk is counted, so a chunked body is refused as soon as
  it passes the limit;
- a refusal raised inside `receive` replaces whatever response the app then sends
  (FastAPI turns a failed body read into a 400), and closes the connection, so the rest
  of the body is never read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import ApiError, PayloadTooLarge, error_response
from api.roles import RoleGuard, guard_of

CSP_PAGES: Final = (
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)
"""The API's own pages (desk, static files, JSON): nothing from elsewhere, never framed."""
CSP_DOCS: Final = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src 'self' https://fonts.gstatic.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
"""FastAPI's Swagger UI and ReDoc pages load their scripts from a CDN, inline."""
DOCS_PATHS: Final = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
NO_STORE_PREFIXES: Final = ("/api/", "/desk/", "/desk")
"""Responses with data or sessions in them: never kept by a browser or shared cache."""
BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def security_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The headers every response of `path` carries (unless the app set them)."""
    headers = [
        (b"content-security-policy", (CSP_DOCS if path in DOCS_PATHS else CSP_PAGES).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
    ]
    if path.startswith(NO_STORE_PREFIXES):
        headers.append((b"cache-control", b"no-store"))
    return headers


class _Refused(Exception):
    """Raised out of `receive` after the refusal has been recorded."""


@dataclass(frozen=True, slots=True)
class BodyLimits:
    default: int
    """Bytes any route accepts."""
    by_route: Mapping[str, int]
    """Route templates (e.g. `/api/v1/registry/import`) that accept another limit."""

    @property
    def largest(self) -> int:
        return max([self.default, *self.by_route.values()])

    def of(self, route_path: str | None) -> int:
        return self.by_route.get(route_path or "", self.default)


class RequestGuard:
    """Body limit, credentials before the body, security headers (see the module doc)."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _Exchange(self, scope, receive, send).run()


class _Exchange:
    """One request through the guard."""

    def __init__(self, guard: RequestGuard, scope: Scope, receive: Receive, send: Send) -> None:
        self.guard, self.scope, self._receive, self._send = guard, scope, receive, send
        self.path: str = scope.get("path", "")
        self.declared = _content_length(scope)
        self.has_body = bool(self.declared) or _chunked(scope)
        self.received = 0
        self.checked = False
        self.refusal: ApiError | None = None
        self.answered = False

    async def run(self) -> None:
        limits = self.guard.limits
        if self.declared is not None and self.declared > limits.largest:
            await self._answer(self._too_large(limits.largest))
            return
        try:
            await self.guard.app(self.scope, self.receive, self.send)
        except _Refused:
            if not self.answered:
                await self._answer()

    async def receive(self) -> Message:
        if self.refusal is not None:
            raise _Refused
        if not self.checked:
            self.checked = True
            await self._before_body()
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            limit = self.guard.limits.of(self._route_path())
            if self.received > limit:
                self.refusal = self._too_large(limit)
                raise _Refused
        return message

    async def _before_body(self) -> None:
        """Once the router has chosen the route: its guard, then its limit."""
        guard = guard_of(self.scope.get("route"))
        if (
            self.has_body
            and self.scope.get("method") in BODY_METHODS
            and isinstance(guard, RoleGuard)
        ):
            try:  # an API key is looked up in the database: off the event loop
                await asyncio.to_thread(guard.check_request, Request(self.scope))
            except ApiError as exc:
                self.refusal = exc
                raise _Refused from exc
        limit = self.guard.limits.of(self._route_path())
        if self.declared is not None and self.declared > limit:
            self.refusal = self._too_large(limit)
            raise _Refused

    async def send(self, message: Message) -> None:
        if self.answered:
            return  # the refusal went out instead of the app's response
        if self.refusal is not None and message["type"] == "http.response.start":
            await self._answer()
            return
        if message["type"] == "http.response.start":
            message = {**message, "headers": self._with_security(message.get("headers", []))}
        await self._send(message)

    async def _answer(self, error: ApiError | None = None) -> None:
        """Send the refusal and close the connection (the body stays unread)."""
        error = error or self.refusal
        assert error is not None
        self.answered = True
        response = error_response(error, self.path)
        response.headers["connection"] = "close"

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._with_security(message.get("headers", []))}
            await self._send(message)

        async def nothing() -> Message:
            return {"type": "http.disconnect"}

        await response(self.scope, nothing, send_secured)

    def _with_security(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        present = {name.lower() for name, _ in headers}
        extra = [(n, v) for n, v in security_headers(self.path) if n not in present]
        return [*headers, *extra]

    def _route_path(self) -> str | None:
        path = getattr(self.scope.get("route"), "path", None)
        return path if isinstance(path, str) else None

    def _too_large(self, limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"the request body is larger than {limit} bytes", limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return None
    return None


def _chunked(scope: Scope) -> bool:
    return any(
        name == b"transfer-encoding" and b"chunked" in value.lower()
        for name, value in scope.get("headers", ())
    )
