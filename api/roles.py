"""Who is calling and what they may do: role guards, bearer JWTs, API keys, login limits.

Every route declares its roles with `Depends(requires(...))` (or `Depends(public())`);
the guards are objects that remember what they allow, so a test can walk `app.routes`
and prove that no route was left undeclared. `admin` passes every guard.

People log in with `POST /api/v1/auth/token` (OAuth2 password form) and send the JWT as
`Authorization: Bearer …`; machines send an API key in `X-API-Key` (or, for readers
that cannot set headers such as Grafana's Geomap layer, as `?api_key=` on routes that
opt in with `query_key=True`). The desk pages carry the same JWT in an HttpOnly cookie
(`cookie=True`); cookies are never accepted on the JSON API, so a cross-site form
cannot act with an operator's session.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, TypeVar

import jwt
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, APIKeyQuery, OAuth2PasswordBearer

from accounts.roles import Role
from accounts.users import User
from api.deps import ApiDeps, get_deps
from api.problems import Forbidden, LoginRequired, TooManyRequests, Unauthorized

TOKEN_URL: Final = "/api/v1/auth/token"  # noqa: S105  # a URL, not a secret
SESSION_COOKIE: Final = "gw_session"
JWT_ALGORITHM: Final = "HS256"
JWT_ISSUER: Final = "gridwatch"
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str
    role: Role
    via: str = "token"
    """How they proved it: `token`, `key` or `cookie`."""


_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_key_query = APIKeyQuery(name="api_key", auto_error=False)


def _deps(request: Request) -> ApiDeps:
    from api.deps import get_deps  # app.py imports this module

    return get_deps(request)


@dataclass(frozen=True)
class RoleGuard:
    """A dependency that authenticates the caller and checks their role."""

    roles: frozenset[Role]
    query_key: bool = False
    cookie: bool = False

    def __call__(
        self,
        request: Request,
        bearer: Annotated[str | None, Depends(_bearer)],
        header_key: Annotated[str | None, Depends(_key_header)],
    ) -> Principal:
        principal = self.authenticate(request, bearer, header_key)
        if principal.role is not Role.admin and principal.role not in self.roles:
            allowed = ", ".join(sorted(r.value for r in self.roles | {Role.admin}))
            raise Forbidden(
                f"role {principal.role.value} may not do this (allowed: {allowed})",
                role=principal.role.value,
            )
        return principal

    def check_request(self, request: Request) -> Principal:
        """The same check from the request's headers alone, before its body is read
        (`api.hardening`): FastAPI parses a body before it runs the dependencies."""
        scheme, _, param = request.headers.get("authorization", "").partition(" ")
        bearer = param.strip() if scheme.lower() == "bearer" and param.strip() else None
        return RoleGuard.__call__(self, request, bearer, request.headers.get("x-api-key") or None)

    def authenticate(
        self, request: Request, bearer: str | None, header_key: str | None
    ) -> Principal:
        deps = get_deps(request)
        key = header_key or (request.query_params.get("api_key") if self.query_key else None)
        if key:
            found = deps.users.verify_key(key)
            if found is None:
                raise Unauthorized("unknown or revoked API key")
            return Principal(found.subject, found.role, via="key")
        if bearer:
            return decode_token(deps, bearer, via="token")
        if self.cookie:
            session = request.cookies.get(SESSION_COOKIE)
            if session:
                try:
                    return decode_token(deps, session, via="cookie")
                except Unauthorized:
                    pass  # an expired session sends the user to the login page
            raise LoginRequired(str(request.url.path))
        raise Unauthorized("send a bearer token (POST /api/v1/auth/token) or an X-API-Key")


@dataclass(frozen=True)
class QueryKeyGuard(RoleGuard):
    """A RoleGuard that also documents `?api_key=` in OpenAPI."""

    def __call__(  # one more (optional) security source than the base
        self,
        request: Request,
        bearer: Annotated[str | None, Depends(_bearer)],
        header_key: Annotated[str | None, Depends(_key_header)],
        query_key: Annotated[str | None, Depends(_key_query)] = None,
    ) -> Principal:
        return RoleGuard.__call__(self, request, bearer, header_key or query_key)


@dataclass(frozen=True)
class PublicMarker:
    """A deliberately public route (health, metrics, login)."""

    roles: frozenset[Role] = field(default_factory=frozenset)

    def __call__(self) -> None:
        return None


def requires(*roles: Role, query_key: bool = False, cookie: bool = False) -> RoleGuard:
    """The dependency a route uses to declare (and enforce) who may call it."""
    if not roles:
        raise ValueError("requires() needs at least one role; use public() for open routes")
    if query_key:
        return QueryKeyGuard(frozenset(roles), query_key=True, cookie=cookie)
    return RoleGuard(frozenset(roles), cookie=cookie)


def public() -> PublicMarker:
    """The marker dependency of a route that anyone may call."""
    return PublicMarker()


def guard_of(route: object) -> RoleGuard | PublicMarker | None:
    """The guard a route declares (None for anything that is not an APIRoute)."""
    dependant = getattr(route, "dependant", None)
    stack = list(getattr(dependant, "dependencies", ()))
    while stack:
        dep = stack.pop()
        if isinstance(dep.call, RoleGuard | PublicMarker):
            return dep.call
        stack.extend(dep.dependencies)
    return None


# ---------------------------------------------------------------------- tokens


def issue_token(deps: ApiDeps, subject: str, role: Role) -> tuple[str, int]:
    """A signed bearer token and its lifetime in seconds."""
    lifetime = deps.config.token_lifetime_s
    now = int(deps.clock_ms() // 1000)
    claims = {
        "sub": subject,
        "role": role.value,
        "iat": now,
        "exp": now + lifetime,
        "iss": JWT_ISSUER,
    }
    return jwt.encode(claims, deps.jwt_secret, algorithm=JWT_ALGORITHM), lifetime


def decode_token(deps: ApiDeps, token: str, *, via: str) -> Principal:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            deps.jwt_secret,
            algorithms=[JWT_ALGORITHM],
            issuer=JWT_ISSUER,
            options={"require": ["exp", "sub", "role", "iss"]},
            leeway=5,
        )
        role = Role(claims["role"])
    except (jwt.InvalidTokenError, ValueError) as exc:
        raise Unauthorized(f"invalid token: {exc}") from exc
    return Principal(str(claims["sub"]), role, via=via)


# ---------------------------------------------------------------------- login limiter


@dataclass(slots=True)
class _Account:
    failures: int
    last_failure: float


TABLE_BOUND: Final = 10_000
"""Entries per limiter table before stale ones are dropped (a spray of usernames)."""
KNOWN_CLIENT_S: Final = 30 * 86400.0
"""How long a successful login exempts its (username, client) from the account backoff."""


class LoginLimiter:
    """Three limits on password logins, in memory (one API process guards itself; a
    restart forgets, and argon2 keeps each guess slow anyway):

    - failed logins per (username, client) in a sliding window;
    - all logins per client in the same window (`per_client`, 6x by default);
    - per account, from any address: after `account_failures` failures each further
      attempt waits 1 s, 2 s, 4 s ... after the last failure, at most `backoff_max_s`;
      the account's count is forgotten after 4x that ceiling without a failure.

    The account backoff slows a guesser who spreads over many addresses without locking
    the owner out: a (username, client) that logged in successfully is exempt from it
    (for 30 days) and still has its own per-(username, client) limit; an owner at a new
    address waits at most `backoff_max_s`. A success does not reset the account's count,
    so it gives a guesser nothing.
    """

    def __init__(
        self,
        failures: int,
        window_s: float,
        per_client: int | None = None,
        *,
        account_failures: int | None = None,
        backoff_max_s: float = 900.0,
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self.per_client = per_client if per_client is not None else failures * 6
        self.account_failures = account_failures if account_failures is not None else failures * 2
        self.backoff_max_s = backoff_max_s
        self.forget_s = max(window_s, 4 * backoff_max_s)
        self._failed: dict[tuple[str, str], deque[float]] = {}
        self._attempts: dict[str, deque[float]] = {}
        self._accounts: dict[str, _Account] = {}
        self._known: dict[tuple[str, str], float] = {}

    def check(self, username: str, client: str, now: float) -> None:
        """Raise TooManyRequests when this attempt must not even be tried."""
        attempts = self._recent(self._attempts, client, now)
        failed = self._recent(self._failed, (username, client), now)
        for times, limit in ((failed, self.failures), (attempts, self.per_client)):
            if len(times) >= limit:
                retry = max(1, int(times[0] + self.window_s - now) + 1)
                raise TooManyRequests("too many login attempts; wait and try again", retry)
        wait = self.account_wait(username, client, now)
        if wait > 0:
            raise TooManyRequests(
                "too many failed logins on this account; wait and try again",
                max(1, math.ceil(wait)),
            )
        attempts.append(now)

    def account_wait(self, username: str, client: str, now: float) -> float:
        """Seconds this client must still wait before trying this account (0: go)."""
        if self._is_known(username, client, now):
            return 0.0
        account = self._account(username, now)
        if account is None or account.failures < self.account_failures:
            return 0.0
        delay = min(self.backoff_max_s, 2.0 ** min(account.failures - self.account_failures, 62))
        return account.last_failure + delay - now

    def failed(self, username: str, client: str, now: float) -> None:
        self._recent(self._failed, (username, client), now).append(now)
        account = self._account(username, now)
        if account is None:
            if len(self._accounts) >= TABLE_BOUND:
                self._evict(self._accounts, lambda a: a.last_failure)
            account = self._accounts[username] = _Account(0, now)
        account.failures += 1
        account.last_failure = now

    def succeeded(self, username: str, client: str, now: float | None = None) -> None:
        self._failed.pop((username, client), None)
        if len(self._known) >= TABLE_BOUND and (username, client) not in self._known:
            self._evict(self._known, lambda t: t)
        self._known[(username, client)] = time.monotonic() if now is None else now

    def _is_known(self, username: str, client: str, now: float) -> bool:
        since = self._known.get((username, client))
        return since is not None and now - since < KNOWN_CLIENT_S

    def _account(self, username: str, now: float) -> _Account | None:
        account = self._accounts.get(username)
        if account is not None and now - account.last_failure >= self.forget_s:
            del self._accounts[username]
            return None
        return account

    @staticmethod
    def _evict(table: dict[K, V], age: Callable[[V], float]) -> None:
        """Drop the oldest tenth of a full table."""
        oldest = sorted(table, key=lambda k: age(table[k]))[: max(1, len(table) // 10)]
        for key in oldest:
            del table[key]

    def _recent(self, table: dict[K, deque[float]], key: K, now: float) -> deque[float]:
        times = table.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(table) > TABLE_BOUND:  # bound memory under a spray of usernames
            for stale in [k for k, v in table.items() if not v and k != key]:
                del table[stale]
        return times


def check_password_login(request: Request, username: str, password: str) -> User:
    """The user a login names, within the rate limit; raise 401/429 problems otherwise."""
    deps = get_deps(request)
    client = request.client.host if request.client else "?"
    limiter = login_limiter(request)
    now = time.monotonic()
    limiter.check(username, client, now)
    user = deps.users.authenticate(username, password)
    if user is None:
        limiter.failed(username, client, now)
        deps.metrics.logins.labels(outcome="refused").inc()
        raise Unauthorized("wrong username or password")
    limiter.succeeded(username, client, now)
    deps.metrics.logins.labels(outcome="ok").inc()
    return user


def login_limiter(request: Request) -> LoginLimiter:
    limiter = request.app.state.login_limiter
    assert isinstance(limiter, LoginLimiter)
    return limiter
