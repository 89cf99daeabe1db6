"""Where transitions go once stored: InfluxDB, MQTT, webhooks.

A sink delivers a batch of outbox items in order, or says why it could not:
`SinkUnavailable` (try again later: the items stay) or `SinkRejected` (this item will
never be accepted: it is marked failed and kept for inspection). Both may name the items
delivered before the failure, so a retry does not resend them. The dispatcher
(events/dispatcher.py) owns retries; sinks never loop or sleep.

A sink may also offer a readiness probe (`ProbedSink.ready`): while its queue backs off,
the dispatcher asks it about every half second and delivers as soon as it says yes, so
the outbox empties within about a second of the receiver's return however long the
backoff had grown. The InfluxDB sink asks `/ping`, the MQTT sink whether its connection
is up. A webhook has no general probe: it waits its backoff, capped lower
(`WEBHOOK_BACKOFF_MAX_S`, via `BackoffCapped`) so it resumes within that of the
receiver's return.

Transports are injected (an InfluxDB write, an MQTT publish, an httpx client), so this
package stays below ingest/ and hub/ in the layering.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol, runtime_checkable

import httpx
from pydantic import SecretStr

from events.model import OutboxItem
from events.render import event_json, event_point
from sensors.topics import DEFAULT_PREFIX, TopicError, events_topic, normalise_prefix

__all__ = [
    "WEBHOOK_BACKOFF_MAX_S",
    "BackoffCapped",
    "InfluxSink",
    "MqttSink",
    "ProbedSink",
    "Sink",
    "SinkError",
    "SinkRejected",
    "SinkUnavailable",
    "WebhookSink",
    "event_json",
    "event_point",
]


PROBE_INTERVAL_S: Final = 0.5
"""While a peer is down, its readiness probe is asked every 0.8 to 1.2 times this."""


async def wait_until_ready(seconds: float, ready: Callable[[], Awaitable[bool]]) -> bool:
    """Wait up to `seconds`, asking `ready` every ~PROBE_INTERVAL_S: True as soon as it
    says so (act now), False once the wait has run out. Used by the outbox for a sink's
    probe and by the spool writer for InfluxDB's `/ping`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        step = random.uniform(0.8 * PROBE_INTERVAL_S, 1.2 * PROBE_INTERVAL_S)
        remaining = deadline - loop.time()
        if remaining <= step:  # the retry itself comes sooner than a probe would
            await asyncio.sleep(max(remaining, 0.0))
            return False
        await asyncio.sleep(step)
        if await ready():
            return True


class SinkError(Exception):
    """A delivery failed; `delivered` lists the ids of the batch that did get through."""

    def __init__(self, reason: str, *, delivered: Sequence[int] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delivered: tuple[int, ...] = tuple(delivered)


class SinkUnavailable(SinkError):
    """Down, unreachable, timed out, throttled or 5xx: retry later, keep the items."""

    def __init__(
        self, reason: str, *, delivered: Sequence[int] = (), retry_after_s: float | None = None
    ) -> None:
        super().__init__(reason, delivered=delivered)
        self.retry_after_s = retry_after_s


class SinkRejected(SinkError):
    """Refused for good. `item_id` names the refused item; None means the sink refused
    the batch as a whole and cannot tell which item (the dispatcher then retries the
    items one by one to find it)."""

    def __init__(
        self, reason: str, *, item_id: int | None = None, delivered: Sequence[int] = ()
    ) -> None:
        super().__init__(reason, delivered=delivered)
        self.item_id = item_id


class Sink(Protocol):
    name: str
    """Outbox key: items are queued per sink name, so it must stay stable across restarts."""

    async def deliver(self, items: Sequence[OutboxItem]) -> None:
        """Deliver in order; raise SinkUnavailable or SinkRejected."""
        ...


@runtime_checkable
class ProbedSink(Sink, Protocol):
    """A sink that can tell, cheaply, whether a delivery now would find its receiver up."""

    async def ready(self) -> bool:
        """True when the receiver is up again; False when it is not (or cannot tell).
        Should not raise: the dispatcher logs a probe that raises and stops asking."""
        ...


@runtime_checkable
class BackoffCapped(Protocol):
    """A sink whose retries should not wait longer than `max_backoff_s` (the
    dispatcher's own ceiling still applies, and a Retry-After still wins)."""

    max_backoff_s: float


WEBHOOK_BACKOFF_MAX_S: Final = 15.0
"""The longest a webhook waits between attempts while its receiver is unavailable.
Webhooks have no readiness probe, so this bounds how late delivery resumes after the
receiver's return; one request per 15 s per hub is no load for a receiver that is down."""


def _unavailable(exc: Exception, delivered: Sequence[int] = ()) -> SinkUnavailable:
    return SinkUnavailable(f"{type(exc).__name__}: {exc}", delivered=delivered)


def _json_bytes(item: OutboxItem) -> bytes:
    return json.dumps(
        event_json(item.event, item.audit),
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    ).encode()


class InfluxSink:
    """One `security_event` point per transition, all items of a batch in one write.

    `write` takes line-protocol lines (no newlines) and raises on failure. The hub adapts
    its InfluxDB writer: data refused (HTTP 400) -> SinkRejected (no item id: the
    dispatcher narrows it down); anything not a SinkError counts as unavailable.
    `ping`, when given, is the readiness probe (InfluxDB answers `/ping`); it returns a
    bool and does not raise.
    """

    def __init__(
        self,
        write: Callable[[Sequence[str]], Awaitable[None]],
        *,
        name: str = "influxdb",
        ping: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.name = name
        self._write = write
        self._ping = ping

    async def ready(self) -> bool:
        """InfluxDB answers `/ping` (False when no probe was given)."""
        return await self._ping() if self._ping is not None else False

    async def deliver(self, items: Sequence[OutboxItem]) -> None:
        lines: list[str] = []
        bad: tuple[OutboxItem, str] | None = None
        for item in items:
            try:
                lines.append(event_point(item.event, item.audit))
            except ValueError as exc:
                bad = (item, str(exc))  # write what comes before it, refuse it
                break
        if lines:
            try:
                await self._write(lines)
            except SinkError:
                raise
            except Exception as exc:
                raise _unavailable(exc) from exc
        if bad is not None:
            done = [item.id for item in items[: len(lines)]]
            raise SinkRejected(f"cannot render: {bad[1]}", item_id=bad[0].id, delivered=done)


class MqttSink:
    """Each transition as compact JSON (`event_json`) on `sensors.topics.events_topic`,
    `gw/events/v1/<site>` for the prefix `gw/v1`: outside the device topics, so no hub
    receives the events it publishes.

    `publish(topic, payload)` must return once the broker has the message (QoS 1 PUBACK).
    A batch's publishes are started together, in order, and their PUBACKs awaited in
    order: consumers see transitions in order, and a batch costs one round trip, not one
    each. `connected`, when given, says whether the connection `publish` uses is up (the
    readiness probe).
    """

    def __init__(
        self,
        publish: Callable[[str, bytes], Awaitable[None]],
        topic_prefix: str = DEFAULT_PREFIX,
        *,
        name: str = "mqtt",
        timeout_s: float = 10.0,
        connected: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self._publish = publish
        self._connected = connected
        self._prefix = normalise_prefix(topic_prefix)
        # A publish that waits for a connection would otherwise hold the sink forever.
        self._timeout_s = timeout_s

    async def ready(self) -> bool:
        """The MQTT connection is up (False when no probe was given)."""
        return self._connected() if self._connected is not None else False

    def topic(self, site: str) -> str:
        """Raises TopicError for a site that cannot be a topic level."""
        return events_topic(self._prefix, site)

    async def deliver(self, items: Sequence[OutboxItem]) -> None:
        # Rendered first: a transition that cannot be sent ends the batch before it.
        sends: list[tuple[int, str, bytes]] = []
        refused: SinkRejected | None = None
        for item in items:
            try:
                sends.append((item.id, self.topic(item.event.site), _json_bytes(item)))
            except TopicError:
                refused = SinkRejected(
                    f"site {item.event.site!r} cannot be an MQTT topic level", item_id=item.id
                )
                break
            except ValueError as exc:
                refused = SinkRejected(f"cannot render: {exc}", item_id=item.id)
                break
        done = await self._send_in_order(sends)
        if refused is not None:
            raise SinkRejected(refused.reason, item_id=refused.item_id, delivered=done)

    async def _send_in_order(self, sends: Sequence[tuple[int, str, bytes]]) -> list[int]:
        """Publish all at once (pipelined: one round trip for the batch, not one per
        transition) and collect PUBACKs in order. The publishes start in list order, so
        the broker receives, and forwards, them in order. Delivered is the acknowledged
        prefix: what follows a failure is sent again (consumers dedupe on id + version)."""
        done: list[int] = []
        pending = [
            asyncio.ensure_future(self._publish(topic, payload)) for _, topic, payload in sends
        ]
        try:
            async with asyncio.timeout(self._timeout_s):
                for (item_id, _, _), publish in zip(sends, pending, strict=True):
                    try:
                        await publish
                    except SinkRejected as exc:
                        raise SinkRejected(exc.reason, item_id=item_id, delivered=done) from exc
                    except SinkUnavailable as exc:
                        raise SinkUnavailable(
                            exc.reason, delivered=done, retry_after_s=exc.retry_after_s
                        ) from exc
                    except SinkError:
                        raise
                    except Exception as exc:
                        raise _unavailable(exc, done) from exc
                    done.append(item_id)
        except TimeoutError as exc:
            raise SinkUnavailable(f"no PUBACK within {self._timeout_s} s", delivered=done) from exc
        finally:
            for publish in pending:
                if not publish.done():
                    publish.cancel()
                elif not publish.cancelled():
                    publish.exception()  # retrieved: a failure after the first is not logged
        return done


SIGNATURE_HEADER: Final = "X-GridWatch-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"


def sign(secret: str, body: bytes) -> str:
    """Header value receivers recompute: `sha256=<hex HMAC-SHA256 of the raw body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def idempotency_key(item: OutboxItem) -> str:
    """Same for every retry of an item. The outbox id keeps it readable; the digest of
    event id and version keeps it unique should the outbox ids ever start over."""
    digest = hashlib.sha256(
        f"{item.event.id}\x1f{item.event.version}\x1f{item.audit.action.value}".encode()
    ).hexdigest()[:16]
    return f"{item.id}-{digest}"


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["Retry-After"])
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: our own backoff applies


class WebhookSink:
    """POST each transition on its own (body: `event_json`), in order.

    One request per transition, not a batch: the Idempotency-Key then names exactly one
    transition on every retry (batches change as items arrive), and one refused
    transition does not take its neighbours with it.

    Status sorting: 2xx delivered; 408, 429 and 5xx retried (Retry-After honoured); 3xx,
    401, 403 and 404 also retried, because they mean our configuration (URL, secret) is
    wrong rather than the transition, and fixing the configuration should lose nothing
    (as ingest/influx.py does for InfluxDB); any other 4xx refuses the transition.

    No readiness probe (a receiver's health URL is not standard, and a POST is the only
    honest test): retries back off up to `max_backoff_s` (WEBHOOK_BACKOFF_MAX_S).
    """

    max_backoff_s: float = WEBHOOK_BACKOFF_MAX_S

    def __init__(
        self,
        url: str,
        *,
        secret: SecretStr | str | None = None,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
        name: str = "webhook",
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s): {url!r}")
        self.name = name
        self.url = url
        self._secret = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        self._timeout_s = timeout_s
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout_s)

    async def aclose(self) -> None:
        """Close the client if this sink made it (a passed-in client is the caller's)."""
        if self._owns_client:
            await self._client.aclose()

    async def deliver(self, items: Sequence[OutboxItem]) -> None:
        done: list[int] = []
        for item in items:
            try:
                body = _json_bytes(item)
            except ValueError as exc:
                raise SinkRejected(
                    f"cannot render: {exc}", item_id=item.id, delivered=done
                ) from exc
            headers = {
                "Content-Type": "application/json",
                IDEMPOTENCY_HEADER: idempotency_key(item),
            }
            if self._secret:
                headers[SIGNATURE_HEADER] = sign(self._secret, body)
            try:
                resp = await self._client.post(
                    self.url, content=body, headers=headers, timeout=self._timeout_s
                )
            except httpx.HTTPError as exc:
                raise _unavailable(exc, done) from exc
            status = resp.status_code
            if 200 <= status < 300:
                done.append(item.id)
                continue
            detail = f"HTTP {status}: {' '.join(resp.text.split())[:200]}"
            if status in (408, 429) or status >= 500 or status < 400 or status in (401, 403, 404):
                raise SinkUnavailable(detail, delivered=done, retry_after_s=_retry_after(resp))
            raise SinkRejected(detail, item_id=item.id, delivered=done)
