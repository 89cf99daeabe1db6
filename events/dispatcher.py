"""Delivers the outbox to the sinks: per sink, in outbox order, at least once.

One task per sink, so a slow or dead webhook never delays MQTT or InfluxDB. Within a
sink, items go strictly in outbox id order and a batch that must be retried blocks the
items after it: consumers rebuild an event from its transitions (acknowledge before
close, return before repeat), so a later transition must never overtake an earlier one.

Failures: `SinkUnavailable` leaves the items queued and backs off (exponential, with
jitter, the backoff stored on the head item so a restart keeps it); `SinkRejected` marks
that one item failed - kept in the outbox with its reason, counted and logged - and
delivery goes on. Nothing is ever dropped silently.

Readiness: while a sink's head backs off, a sink with a probe (`ProbedSink`: InfluxDB's
`/ping`, the MQTT connection) is asked every ~PROBE_INTERVAL_S, and the queue is
delivered as soon as it says ready, whatever the stored backoff says: the outbox empties
within about a second of the receiver's return. If a delivery the probe started fails
again (ready, yet unavailable), the next wait is the plain backoff, so a receiver that
answers probes but fails deliveries is not hammered. Sinks without a probe (webhooks)
wait their backoff, capped by `BackoffCapped.max_backoff_s` where a sink declares one.

At least once: if the hub stops (or the store fails) between a delivery and
`outbox_done`, the items are sent again. The InfluxDB point of a transition is the same
on every send; MQTT consumers dedupe on (event id, version), webhook receivers on the
Idempotency-Key.

Store contract (events/store.py): `outbox_due(sink, now_ms, limit)` reads, without
claiming, the non-failed items of one sink with `next_attempt_ms <= now_ms`, in id order.
The dispatcher asks with an unbounded `now_ms` to see the head of each queue even while it
backs off, and decides itself when the head is due: asking only for due items would let
items after a backed-off head through, out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from events.model import OutboxItem
from events.sinks import (
    BackoffCapped,
    ProbedSink,
    Sink,
    SinkRejected,
    SinkUnavailable,
    wait_until_ready,
)

log = logging.getLogger(__name__)

_HORIZON_MS: Final = 2**62
"""`now_ms` that makes every queued item "due": fits SQLite and PostgreSQL integers."""

PROBE_TIMEOUT_S: Final = 2.0
"""A readiness probe that has not answered in this long counts as "not ready"."""


class OutboxStore(Protocol):
    """The part of the event store the dispatcher uses (synchronous: called in a thread)."""

    def outbox_due(self, sink: str, now_ms: int, limit: int = 100) -> list[OutboxItem]: ...

    def outbox_done(self, ids: Sequence[int]) -> None: ...

    def outbox_retry(
        self, item_id: int, *, error: str, next_attempt_ms: int, failed: bool = False
    ) -> None: ...

    def outbox_pending(self) -> dict[str, int]: ...


@dataclass(slots=True)
class SinkStats:
    delivered: int = 0
    failed: int = 0
    """Items refused for good (or out of attempts) in this process; kept in the outbox."""
    retries: int = 0
    """Deliveries that found the sink unavailable."""
    pending: int = 0
    """Queued in the store, as of this sink's last round."""
    last_error: str = ""


@dataclass(slots=True)
class _Worker:
    sink: Sink
    stats: SinkStats = dataclasses.field(default_factory=SinkStats)
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    """One delivery round at a time per sink, whether from run() or drain()."""
    single_until: int = 0
    """After a batch was refused without naming the item: deliver one at a time up to
    this outbox id, so only the offending item is failed."""
    store_errors: int = 0
    probe: Callable[[], Awaitable[bool]] | None = None
    """The sink's readiness probe; None when it has none (or one that raised)."""
    max_backoff_s: float = float("inf")


class OutboxDispatcher:
    def __init__(
        self,
        store: OutboxStore,
        sinks: Sequence[Sink],
        *,
        clock_ms: Callable[[], int],
        batch: int = 100,
        idle_s: float = 0.5,
        backoff_s: tuple[float, float] = (0.5, 60.0),
        max_attempts: int | None = None,
    ) -> None:
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique (they key the outbox): {names}")
        if batch < 1 or backoff_s[0] <= 0 or backoff_s[1] < backoff_s[0]:
            raise ValueError("batch must be >= 1 and backoff_s (min, max) with 0 < min <= max")
        self._store = store
        self._workers = [
            _Worker(
                s,
                probe=s.ready if isinstance(s, ProbedSink) else None,
                max_backoff_s=s.max_backoff_s if isinstance(s, BackoffCapped) else float("inf"),
            )
            for s in sinks
        ]
        self._clock_ms = clock_ms
        # 100: 250 a round saved the detection worker 7 % of its CPU in a replay of the
        # ingest bench's 11,000 transitions, but held 8-10 MB more at its peak (a flood
        # parent's device list in every version), and the worker must fit the hub's
        # memory budget.
        self._batch = batch
        self._idle_s = idle_s
        self._backoff = backoff_s
        self._max_attempts = max_attempts
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public ----------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver until cancelled, one task per sink."""
        self._loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            for worker in self._workers:
                tg.create_task(self._serve(worker), name=f"outbox-{worker.sink.name}")

    def wake(self) -> None:
        """Look for new items now rather than after `idle_s` (the manager calls it after a
        save). Safe from any thread; does not cut a backoff short."""
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop:
            self._set_wake()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._set_wake)

    async def drain(self, timeout_s: float) -> bool:
        """Deliver everything queued (waiting out backoffs), then return True; False if
        items are still queued after `timeout_s`. Safe while run() is running."""
        try:
            async with asyncio.timeout(timeout_s), asyncio.TaskGroup() as tg:
                for worker in self._workers:
                    tg.create_task(self._drain_one(worker))
        except TimeoutError:
            return False
        return True

    def stats(self) -> dict[str, SinkStats]:
        return {w.sink.name: dataclasses.replace(w.stats) for w in self._workers}

    # -- loops -----------------------------------------------------------------------
    def _set_wake(self) -> None:
        for worker in self._workers:
            worker.wake.set()

    async def _serve(self, worker: _Worker) -> None:
        ready = False
        while True:
            worker.wake.clear()  # before the round: a wake() during it is not lost
            delay = await self._round(worker, ready)
            if delay is None:
                ready = False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_s):
                        await worker.wake.wait()
            else:
                # A delivery the probe started that failed again: a plain wait this time.
                ready = await self._back_off(worker, delay, probe=not ready) if delay else False

    async def _drain_one(self, worker: _Worker) -> None:
        ready = False
        while True:
            delay = await self._round(worker, ready)
            if delay is None:
                return
            ready = await self._back_off(worker, delay, probe=not ready) if delay else False

    async def _back_off(self, worker: _Worker, delay: float, *, probe: bool) -> bool:
        """Wait `delay` seconds, or less: True as soon as the sink's probe (asked every
        ~PROBE_INTERVAL_S) says it is ready, to deliver now despite the head's backoff."""
        if not probe or worker.probe is None:
            await asyncio.sleep(delay)
            return False
        return await wait_until_ready(delay, lambda: self._probe(worker))

    async def _probe(self, worker: _Worker) -> bool:
        probe = worker.probe
        if probe is None:
            return False
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                return await probe()
        except TimeoutError:
            return False
        except Exception:
            # A sink bug: logged once, and the sink waits out its backoffs from now on.
            log.exception("outbox %s: readiness probe raised; not asked again", worker.sink.name)
            worker.probe = None
            return False

    async def _round(self, worker: _Worker, ready: bool = False) -> float | None:
        """One locked round; a failing store is logged and retried, never fatal.
        `ready`: the sink's probe said it is back, so the head goes now if it backs off."""
        async with worker.lock:
            try:
                delay = await self._step(worker, ready)
            except Exception:
                # The store (not a sink) failed: back off; the other sinks carry on.
                worker.store_errors += 1
                log.exception("outbox %s: store failed", worker.sink.name)
                return self._delay(worker.store_errors)
            worker.store_errors = 0
            return delay

    async def _step(self, worker: _Worker, ready: bool = False) -> float | None:
        """Deliver one batch. None: nothing queued. Else seconds until the next round."""
        name = worker.sink.name
        items = await asyncio.to_thread(self._store.outbox_due, name, _HORIZON_MS, self._batch)
        if not items:
            await self._refresh_pending(worker)
            return None
        items = sorted(items, key=lambda i: i.id)
        wait_ms = items[0].next_attempt_ms - self._clock_ms()
        if wait_ms > 0 and not ready:
            return wait_ms / 1000  # the head is backing off: so does everything after it
        if items[0].id <= worker.single_until:
            items = items[:1]
        delay = 0.0
        try:
            await worker.sink.deliver(items)
        except SinkUnavailable as exc:
            delay = await self._unavailable(worker, items, exc)
        except SinkRejected as exc:
            await self._rejected(worker, items, exc)
        except Exception as exc:
            # A sink bug: treated as unavailable so the items stay (max_attempts bounds it).
            log.exception("outbox %s: sink raised unexpectedly", name)
            delay = await self._unavailable(
                worker, items, SinkUnavailable(f"{type(exc).__name__}: {exc}")
            )
        else:
            await self._done(worker, [i.id for i in items])
            if items[0].attempts:
                log.info(
                    "outbox %s: delivering again (%d item(s) from id %d, at attempt %d)",
                    name,
                    len(items),
                    items[0].id,
                    items[0].attempts + 1,
                )
        await self._refresh_pending(worker)
        return delay

    # -- outcomes --------------------------------------------------------------------
    async def _done(self, worker: _Worker, ids: Sequence[int]) -> None:
        if ids:
            await asyncio.to_thread(self._store.outbox_done, list(ids))
            worker.stats.delivered += len(ids)

    async def _settle_delivered(
        self, worker: _Worker, items: Sequence[OutboxItem], delivered: Sequence[int]
    ) -> list[OutboxItem]:
        """Mark what the sink reported delivered; return the rest, in order."""
        got = set(delivered)
        await self._done(worker, [i.id for i in items if i.id in got])
        return [i for i in items if i.id not in got]

    async def _unavailable(
        self, worker: _Worker, items: Sequence[OutboxItem], exc: SinkUnavailable
    ) -> float:
        rest = await self._settle_delivered(worker, items, exc.delivered)
        if not rest:
            return 0.0
        head = rest[0]
        attempts = head.attempts + 1
        delay = min(self._delay(attempts), worker.max_backoff_s)
        if exc.retry_after_s is not None:  # the server knows best, within our ceiling
            delay = max(delay, min(exc.retry_after_s, self._backoff[1]))
        worker.stats.last_error = exc.reason
        if self._max_attempts is not None and attempts >= self._max_attempts:
            await self._fail(worker, head, f"gave up after {attempts} attempts: {exc.reason}")
            return 0.0
        await asyncio.to_thread(
            self._store.outbox_retry,
            head.id,
            error=exc.reason,
            next_attempt_ms=self._clock_ms() + round(delay * 1000),
        )
        worker.stats.retries += 1
        # One warning per outage (and per new reason); the head keeps the last one.
        log.log(
            logging.DEBUG if exc.reason == head.last_error else logging.WARNING,
            "outbox %s: unavailable (%s); %d item(s) from id %d wait %.1f s (attempt %d)",
            worker.sink.name,
            exc.reason,
            len(rest),
            head.id,
            delay,
            attempts,
        )
        return delay

    async def _rejected(
        self, worker: _Worker, items: Sequence[OutboxItem], exc: SinkRejected
    ) -> None:
        rest = await self._settle_delivered(worker, items, exc.delivered)
        by_id = {i.id: i for i in rest}
        if exc.item_id in by_id:
            await self._fail(worker, by_id[exc.item_id], exc.reason)
        elif len(rest) == 1:
            await self._fail(worker, rest[0], exc.reason)
        elif rest:
            # Refused as a batch: retry one by one so only the culprit is failed.
            worker.single_until = rest[-1].id
            log.warning(
                "outbox %s: batch refused (%s); retrying items %d..%d one by one",
                worker.sink.name,
                exc.reason,
                rest[0].id,
                rest[-1].id,
            )

    async def _fail(self, worker: _Worker, item: OutboxItem, reason: str) -> None:
        await asyncio.to_thread(
            self._store.outbox_retry,
            item.id,
            error=reason,
            next_attempt_ms=self._clock_ms(),
            failed=True,
        )
        worker.stats.failed += 1
        worker.stats.last_error = reason
        log.error(
            "outbox %s: item %d (event %s, %s at %d) failed, kept in the outbox: %s",
            worker.sink.name,
            item.id,
            item.event.id,
            item.audit.action.value,
            item.audit.at_ms,
            reason,
        )

    async def _refresh_pending(self, worker: _Worker) -> None:
        pending = await asyncio.to_thread(self._store.outbox_pending)
        worker.stats.pending = pending.get(worker.sink.name, 0)

    def _delay(self, attempts: int) -> float:
        """Exponential backoff with equal jitter: between half and all of min * 2^(n-1),
        capped, so retries never hammer and many hubs do not retry in step."""
        low, high = self._backoff
        ceiling = min(high, low * 2.0 ** min(attempts - 1, 62))
        return ceiling / 2 + random.uniform(0, ceiling / 2)
