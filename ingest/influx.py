"""InfluxDB writers for both API generations, with failures sorted the same way.

Sorting (after Telegraf's outputs/influxdb_v2): a point InfluxDB refuses as data (400,
413, 422, other 4xx) goes to dead letters, because retrying cannot help; throttling,
server errors and connection failures (429, 5xx, timeouts) are retried from the spool
with backoff. 401/403/404 mean the hub is misconfigured (token, database, bucket), not
that the data is bad: they are retried too, loudly, so fixing the config loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

import httpx

if TYPE_CHECKING:
    from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
    from influxdb_client.rest import ApiException

log = logging.getLogger(__name__)

PING_TIMEOUT_S: Final = 1.0
"""A readiness probe (`/ping`) that takes longer than this counts as "not back yet"."""


class Failure(StrEnum):
    REJECTED = "rejected"
    """The data itself was refused: dead-letter it."""
    RETRY = "retry"
    """Throttled, down or unreachable: back off and retry."""
    CONFIG = "config"
    """Authentication or database/bucket problem: retry after the operator fixes it."""


class WriteError(Exception):
    def __init__(
        self, failure: Failure, status: int | None, detail: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(
            f"{failure.value}: HTTP {status}: {detail}" if status else f"{failure.value}: {detail}"
        )
        self.failure = failure
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s

    @property
    def unavailable(self) -> bool:
        """Down or unreachable (no answer at all, or 5xx): its `/ping` tells when it is back.
        Not for 429 (up, throttling: `/ping` would answer at once) nor refusals."""
        return self.failure is Failure.RETRY and (self.status is None or self.status >= 500)


def classify(status: int) -> Failure:
    if status in (401, 403, 404):
        return Failure.CONFIG
    if status == 429 or status >= 500:
        return Failure.RETRY
    return Failure.REJECTED


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


class InfluxWriter(Protocol):
    """Write newline-separated line protocol at ns precision, or raise WriteError."""

    async def write(self, payload: bytes) -> None: ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class V1Target:
    url: str
    database: str
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0
    create_database: bool = False
    """Create the database when a write finds it missing (InfluxDB may come up empty)."""


def detached(resp: httpx.Response) -> httpx.Response:
    """`resp` (read whole) without the reference cycle httpx leaves between a response
    and its stream. Through the response's request the cycle holds the request body,
    here a batch of up to ~1 MB, until the cyclic GC runs, which the hub makes rare
    (`hub.supervision.tune_gc`): 32 MB of sent batches were alive in a hub during a
    300,000-message backlog (tracemalloc). With the cycle cut, the batch goes when the
    response does."""
    resp.stream = httpx.ByteStream(resp.content)
    return resp


class InfluxV1Writer:
    """InfluxDB 1.x `/write` (db, rp, optional basic auth)."""

    def __init__(self, target: V1Target) -> None:
        self._target = target
        auth = (target.username, target.password or "") if target.username else None
        self._client = httpx.AsyncClient(
            base_url=target.url.rstrip("/"), timeout=target.timeout_s, auth=auth
        )
        self._params = {"db": target.database, "precision": "ns"}
        if target.retention_policy:
            self._params["rp"] = target.retention_policy

    async def write(self, payload: bytes) -> None:
        resp = await self._post_write(payload)
        if (
            resp.status_code == 404
            and self._target.create_database
            and "database not found" in resp.text
        ):
            await self.ensure_database()
            resp = await self._post_write(payload)
        if resp.status_code in (200, 204):
            return
        raise WriteError(
            classify(resp.status_code),
            resp.status_code,
            _error_text(resp.text),
            _retry_after(resp.headers),
        )

    async def _post_write(self, payload: bytes) -> httpx.Response:
        try:
            resp = await self._client.post("/write", params=self._params, content=payload)
        except httpx.HTTPError as exc:
            raise WriteError(Failure.RETRY, None, f"{type(exc).__name__}: {exc}") from exc
        return detached(resp)

    async def ensure_database(self) -> None:
        """CREATE DATABASE is idempotent in InfluxDB 1.x; the hub runs it at start-up."""
        name = self._target.database.replace("\\", "\\\\").replace('"', '\\"')
        try:
            resp = await self._client.post("/query", data={"q": f'CREATE DATABASE "{name}"'})
        except httpx.HTTPError as exc:
            raise WriteError(Failure.RETRY, None, f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200 or '"error"' in resp.text:
            raise WriteError(classify(resp.status_code), resp.status_code, _error_text(resp.text))

    async def ping(self) -> None:
        try:
            resp = await self._client.get("/ping")
        except httpx.HTTPError as exc:
            raise WriteError(Failure.RETRY, None, f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code != 204:
            raise WriteError(classify(resp.status_code), resp.status_code, _error_text(resp.text))

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True, slots=True)
class V2Target:
    url: str
    org: str
    bucket: str
    token: str
    timeout_s: float = 10.0


def _api_exception() -> type[ApiException]:
    from influxdb_client.rest import ApiException

    return ApiException


def _transport_errors() -> tuple[type[Exception], ...]:
    """What the 2.x client raises when the server cannot be reached (aiohttp is its
    transport: imported here, not by every hub process, about 9 MB and 0.1 s)."""
    import aiohttp

    return (aiohttp.ClientError, TimeoutError, OSError)


class InfluxV2Writer:
    """InfluxDB 2.x/3.x `/api/v2/write` through the official `influxdb-client` (async)."""

    def __init__(self, target: V2Target) -> None:
        self._target = target
        self._client: InfluxDBClientAsync | None = None

    def _api(self) -> InfluxDBClientAsync:
        # Created lazily: the client needs a running event loop. Imported lazily too:
        # about 20 MB in every hub process, for the InfluxDB 2.x/3.x users alone.
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        if self._client is None:
            self._client = InfluxDBClientAsync(
                url=self._target.url,
                token=self._target.token,
                org=self._target.org,
                timeout=int(self._target.timeout_s * 1000),
            )
        return self._client

    async def write(self, payload: bytes) -> None:
        try:
            await (
                self._api()
                .write_api()
                .write(
                    bucket=self._target.bucket,
                    org=self._target.org,
                    record=payload.rstrip(b"\n"),
                )
            )
        except _api_exception() as exc:
            status = int(exc.status or 0)
            failure = classify(status) if status else Failure.RETRY
            headers = exc.headers if hasattr(exc, "headers") else None
            raise WriteError(
                failure,
                status or None,
                _error_text(str(exc.body or exc.reason)),
                _retry_after(headers),
            ) from exc
        except _transport_errors() as exc:
            raise WriteError(Failure.RETRY, None, f"{type(exc).__name__}: {exc}") from exc

    async def ping(self) -> None:
        try:
            ok = await self._api().ping()
        except _api_exception() as exc:
            status = int(exc.status or 0)
            failure = classify(status) if status else Failure.RETRY
            raise WriteError(failure, status or None, _error_text(str(exc.reason))) from exc
        except _transport_errors() as exc:
            raise WriteError(Failure.RETRY, None, f"{type(exc).__name__}: {exc}") from exc
        if not ok:
            raise WriteError(Failure.RETRY, None, "ping failed")

    async def aclose(self) -> None:
        if self._client is not None:
            close: Callable[[], Awaitable[None]] = self._client.close  # untyped in the library
            await close()
            self._client = None


async def answers_ping(writer: InfluxWriter, timeout_s: float = PING_TIMEOUT_S) -> bool:
    """True when InfluxDB (1.x, 2.x, VictoriaMetrics: `GET /ping`, 204) answers in time:
    the readiness probe that ends a wait for a server that was down."""
    try:
        async with asyncio.timeout(timeout_s):
            await writer.ping()
    except (WriteError, TimeoutError):
        return False
    return True


def _error_text(body: str) -> str:
    return " ".join(body.split())[:500]


class WatchedWriter:
    """The spool writer's InfluxDB writer, noting since when writes have been failing
    (for `/readyz`); refused lines are InfluxDB working, not failing."""

    def __init__(self, inner: InfluxWriter) -> None:
        self.inner = inner
        self.failing_since: float | None = None

    def failing_s(self) -> float:
        since = self.failing_since
        return 0.0 if since is None else time.monotonic() - since

    async def write(self, payload: bytes) -> None:
        try:
            await self.inner.write(payload)
        except WriteError as exc:
            if exc.failure is not Failure.REJECTED:
                if self.failing_since is None:
                    self.failing_since = time.monotonic()
            else:
                self.failing_since = None
            raise
        self.failing_since = None

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        await self.inner.aclose()
