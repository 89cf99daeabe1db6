"""Intake: MQTT message → decode → spool or dead letters → fsync → PUBACK, in that order.

The spool is the hub's log: each frame carries the batch's line protocol (InfluxDB's)
and its records (readings, rejections, clock ticks: what the rules and anomaly
consumers evaluate, `ingest.records`). Consumers read the log after the fsync, each at
its own position, so an acked reading reaches every consumer whatever crashes when.
A redelivered reading (same device, seq and timestamp as one the log already holds), or
a message without a sequence number (a status, a rejection) sent again with MQTT's DUP
flag whose content the log holds, is acked and counted (`duplicates`), not logged twice
(`ingest.records.Deduplicator`).

Messages are decoded as they arrive (synchronously, on the event loop) and grouped
into batches; one batch at a time is written and fsynced on a worker thread while the
next one fills, then its packet ids are acked. So a QoS 1 message is acknowledged only
when it is durable, and the broker's Receive Maximum caps what sits unacked in memory.
When the spool is full (InfluxDB down too long) the intake stops persisting and thus
stops acking: the broker keeps the backlog for our persistent session.

When the disk refuses a write (full, I/O error) the spool cuts the frame back and the
intake keeps the batch, acks nothing, and tries again every `STORAGE_RETRY_S` until the
disk takes it; meanwhile it reports the failure (`storage_error` in the stats, the
`on_storage` callback: a hub health event) and the broker keeps what it has not acked.
The loop never ends on it: a full disk is bad input, not a crash.

No message may stop the hub: whatever raises while one message is handled (decode, line
protocol, an observer) is caught at the message boundary, and the message is
dead-lettered as `internal_error` (with the exception type), counted and acked like any
rejection. A message that raised once is therefore never redelivered (no poison loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ingest.deadletter import DeadLetter, DeadLetterStore
from ingest.decode import Decoder, Rejected, RejectReason
from ingest.line_protocol import LineEncoder, LineProtocolError
from ingest.records import Deduplicator, Record, SessionLost, Tick
from ingest.spool import Spool, SpoolWriteError, encode_frame
from ingest.stats import AHEAD_NOTED_S, IngestStats
from sensors.base import Reading
from sensors.topics import Route

log = logging.getLogger(__name__)

AckFn = Callable[[int, list[int]], int]
"""(connection generation, packet ids) -> number acked."""
STORAGE_RETRY_S: Final = 1.0
"""A batch the disk refused is written again this often (resumes within it)."""
STORAGE_REMIND_S: Final = 60.0
"""While writes fail, the log says so again this often."""


@dataclass(slots=True)
class _Batch:
    generation: int
    lines: list[bytes] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    packet_ids: list[int] = field(default_factory=list)
    first_ns: int = 0
    size: int = 0
    """Messages and points in the batch (lines + rejects)."""
    spooled: bool = False
    """Its frame is in the log (a retry after a dead-letter failure must not log it twice)."""


class Intake:
    def __init__(
        self,
        decoder: Decoder,
        spool: Spool,
        dead_letters: DeadLetterStore,
        stats: IngestStats,
        *,
        ack: AckFn,
        generation: Callable[[], int],
        set_reading: Callable[[bool], None] = lambda _enabled: None,
        batch_max: int = 2000,
        linger_s: float = 0.005,
        high_water: int = 20_000,
        records: bool = True,
        on_persisted: Callable[[], None] = lambda: None,
        on_storage: Callable[[str | None], None] = lambda _error: None,
        dup: Callable[[], bool] = lambda: False,
        storage_retry_s: float = STORAGE_RETRY_S,
    ) -> None:
        self._decoder = decoder
        self._spool = spool
        self._dead = dead_letters
        self._stats = stats
        self._ahead_ns = int(AHEAD_NOTED_S * 1e9)
        self._ack = ack
        self._generation = generation
        self._set_reading = set_reading
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._high_water = high_water
        self._batch = _Batch(generation=0)
        self._sealed: list[_Batch] = []
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._waiting_messages = 0
        self._reading_paused = False
        self._stopping = False
        self._encoder = LineEncoder()
        self._records = records
        """Log records for the detection consumers (off when none runs)."""
        self._on_persisted = on_persisted
        """Called after each fsync (wakes the consumers)."""
        self._dup = dup
        """The DUP flag of the message being handled (what tells a redelivery of a
        rejection, or of a reading without a sequence number, from a new message)."""
        self._storage_reminded = 0.0
        self._on_storage = on_storage
        """Called with the error when writes start failing, with None when they resume."""
        self._storage_retry_s = storage_retry_s
        self.dedup = Deduplicator()
        self._internal_errors: dict[tuple[str, str], int] = {}

    # -- called by the MQTT client for every PUBLISH --------------------------------
    def on_publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int
    ) -> None:
        """Decode one message into the batch being filled; never raises for a message.

        Each step that runs code of other modules is its own message boundary: a `try`
        costs nothing until something raises (CPython 3.11+), so the hot path is as it
        was. The steps are inline, not helpers: a call costs per message."""
        now_ns = time.time_ns()
        stats = self._stats
        if not stats.received:
            stats.first_received_ns = now_ns
            stats.first_received_cpu_s = time.process_time()
        stats.received += 1
        generation = self._generation()
        batch = self._batch
        if batch.size and batch.generation != generation:
            self._seal()
            batch = self._batch
        if not batch.size:
            batch.generation = generation
            batch.first_ns = now_ns
            self._wake.set()  # start the linger clock
        batch.size += 1
        try:
            result = self._decoder.decode(topic, payload, now_ns)
        except Exception as exc:  # noqa: BLE001 (the message boundary)
            result = self._internal_error(topic, payload, now_ns, exc, "decode")
        line = None
        if not isinstance(result, Rejected):
            try:
                line = self._encoder.encode(result)
            except LineProtocolError as exc:
                route = Route(result.site, result.kind, result.device, result.channel)
                result = Rejected(
                    RejectReason.INVALID_PAYLOAD, str(exc), topic, payload, now_ns, route
                )
            except Exception as exc:  # noqa: BLE001 (the message boundary)
                result = self._internal_error(topic, payload, now_ns, exc, "line protocol")
        if line is None:
            assert isinstance(result, Rejected)  # no line: decode or encoding refused it
            if self.dedup.seen_again(result, self._dup()):
                stats.duplicates += 1  # sent again after a lost PUBACK: the log has it
            else:
                batch.rejects.append(result)
                stats.rejected[result.reason.value] += 1
                if self._records:
                    batch.records.append(result)
        else:
            assert isinstance(result, Reading)
            if self.dedup.seen(result, self._dup()):
                stats.duplicates += 1  # the log has it: acked, not logged again
            else:
                if result.ts_ns - now_ns > self._ahead_ns:  # a fast clock (transit ages)
                    stats.note_ahead(result.device, result.ts_ns - now_ns)
                batch.lines.append(line)
                if self._records:
                    batch.records.append(result)
        if qos:
            batch.packet_ids.append(packet_id)
        self._waiting_messages += 1
        if batch.size >= self._batch_max:
            self._seal()
        if self._waiting_messages >= self._high_water and not self._reading_paused:
            # Only QoS 0 floods or MQTT 3.1.1 without Receive Maximum get here.
            self._reading_paused = True
            self._set_reading(False)

    def on_reserved(
        self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int
    ) -> None:
        """A message under the hubs' `<prefix>/_hub/`: a hub's presence flag is dropped
        (acked now: nothing to persist); anything else is a `reserved_topic` rejection,
        dead-lettered, counted and acked like any other. Never raises for a message."""
        now_ns = time.time_ns()
        try:
            result = self._decoder.decode_reserved(topic, payload, now_ns)
        except Exception as exc:  # noqa: BLE001 (the boundary)
            result = self._internal_error(topic, payload, now_ns, exc, "reserved topic")
        if result is None:
            self._ack(self._generation(), [packet_id] if qos else [])
            return
        self.reject(result, qos, packet_id)

    def on_oversize(self, topic: str, size: int, limit: int, qos: int, packet_id: int) -> None:
        """A PUBLISH the MQTT client discarded as above our maximum packet size `limit`: an
        `oversize` rejection (dead-lettered with its topic and size, counted) acked after
        the fsync like any other, so the acknowledgement still means "recorded"."""
        try:
            rejected = self._decoder.oversize(topic, size, limit, time.time_ns())
        except Exception as exc:  # noqa: BLE001 (the message boundary)
            rejected = self._internal_error(topic, b"", time.time_ns(), exc, "oversize")
        self.reject(rejected, qos, packet_id)

    def skip_retained(self, qos: int, packet_id: int) -> None:
        """A retained message the broker re-sent on resubscription: counted and acked
        with the batch (PUBACKs go in the order messages came), not stored again."""
        self._stats.received += 1
        self._stats.retained_skipped += 1
        self._admit(self._batch_for(time.time_ns()), qos, packet_id)

    def skip_foreign(self, qos: int, packet_id: int) -> None:
        """A message of a site another hub reads (cluster mode's catch-all partition):
        counted and acked with the batch, not logged."""
        self._stats.received += 1
        self._stats.foreign_skipped += 1
        self._admit(self._batch_for(time.time_ns()), qos, packet_id)

    def reject(self, rejected: Rejected, qos: int, packet_id: int) -> None:
        """Dead-letter, count and (after the fsync) ack one message refused before decode."""
        self._stats.received += 1
        batch = self._batch_for(rejected.received_ns)
        batch.rejects.append(rejected)
        self._stats.rejected[rejected.reason.value] += 1
        self._admit(batch, qos, packet_id)

    def _batch_for(self, now_ns: int) -> _Batch:
        """The batch a message received now joins (a new connection seals the old one)."""
        generation = self._generation()
        batch = self._batch
        if batch.size and batch.generation != generation:
            self._seal()
            batch = self._batch
        if not batch.size:
            batch.generation = generation
            batch.first_ns = now_ns
            self._wake.set()  # start the linger clock
        batch.size += 1
        return batch

    def _admit(self, batch: _Batch, qos: int, packet_id: int) -> None:
        """The message is in the batch: ack it with the batch, seal a full one, and stop
        reading above the high-water mark."""
        if qos:
            batch.packet_ids.append(packet_id)
        self._waiting_messages += 1
        if batch.size >= self._batch_max:
            self._seal()
        if self._waiting_messages >= self._high_water and not self._reading_paused:
            # Only QoS 0 floods or MQTT 3.1.1 without Receive Maximum get here.
            self._reading_paused = True
            self._set_reading(False)

    def _internal_error(
        self, topic: str, payload: bytes, now_ns: int, exc: Exception, stage: str
    ) -> Rejected:
        """The rejection for a message whose handling raised; logged (with the traceback
        the first times per exception type and stage, then every 1000th: a flood of
        poison must not flood the log)."""
        key = (type(exc).__name__, stage)
        seen = self._internal_errors[key] = self._internal_errors.get(key, 0) + 1
        if seen <= 3 or seen % 1000 == 0:
            log.error(
                "message on %r: %s raised %s (%d so far): dead-lettered as internal_error",
                topic[:200],
                stage,
                key[0],
                seen,
                exc_info=exc if seen <= 3 else None,
            )
        return self._decoder.internal_error(topic, payload, now_ns, exc, stage)

    def add_point(self, line: bytes) -> None:
        """Spool a hub-generated point (hub_stats) through the same durable path."""
        if not self._batch.size:
            self._batch.first_ns = time.time_ns()
            self._wake.set()
        self._batch.size += 1
        self._batch.lines.append(line)
        self._waiting_messages += 1

    def add_tick(self, at_ms: int) -> None:
        """Log a clock tick (the input is idle: event time is at least `at_ms`)."""
        if not self._records:
            return
        if not self._batch.size:
            self._batch.first_ns = time.time_ns()
            self._wake.set()
        self._batch.size += 1
        self._batch.records.append(Tick(at_ms))
        self._waiting_messages += 1

    def add_session_lost(self, at_ms: int, hub: str) -> None:
        """Log that the broker lost our session (before what the new one brings)."""
        if not self._records:
            return
        if not self._batch.size:
            self._batch.first_ns = time.time_ns()
            self._wake.set()
        self._batch.size += 1
        self._batch.records.append(SessionLost(at_ms, hub))
        self._waiting_messages += 1

    def space_freed(self) -> None:
        """The writer committed: a full spool may have room again."""
        self._space.set()

    # -- the flush loop -----------------------------------------------------------------
    async def run(self) -> None:
        """Persist batches until `stop()`: one on the worker thread while the next one fills."""
        while not self._stopping:
            batch = await self._next_batch()
            if batch is None:
                break
            if self._spool.full and not self._stopping:
                self._stats.backpressure_waits += 1
                log.warning(
                    "spool full (%d bytes kept for its slowest consumer, %d for InfluxDB): "
                    "not acking until it catches up",
                    self._spool.retained_bytes,
                    self._spool.pending_bytes,
                )
            while self._spool.full and not self._stopping:
                self._space.clear()
                # The writer's commits wake us; a consumer's release frees space too,
                # so look again every second rather than wait for the writer alone.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._space.wait(), 1.0)
            await self.persist(batch)

    def stop(self) -> None:
        """Make `run` return after the batch in hand; then `drain` persists the rest."""
        self._stopping = True
        self._wake.set()
        self._space.set()

    async def drain(self) -> None:
        """Persist and ack everything received so far (graceful shutdown)."""
        if self._batch.size:
            self._seal()
        while self._sealed:
            await self.persist(self._sealed.pop(0))

    @property
    def backlogged(self) -> bool:
        """Messages received and not yet acked (the broker may hold more behind them)."""
        return self._waiting_messages > 0

    async def persist(self, batch: _Batch) -> None:
        """Write the batch durably, then ack it; while the disk refuses it, retry (the
        broker keeps the unacked messages). On `stop` a batch that still cannot be
        written is left unacked: the broker re-sends it to the next run."""
        while True:
            try:
                await asyncio.to_thread(self._write_durably, batch)
            except (SpoolWriteError, OSError) as exc:
                self._storage_failed(exc)
                if self._stopping:
                    log.error(
                        "stopping with %d messages not written (the broker re-sends them)",
                        batch.size,
                    )
                    self._waiting_messages -= batch.size
                    return
                if not self._spool.reclaim():  # space consumers no longer need: at once
                    await asyncio.sleep(self._storage_retry_s)
                continue
            break
        if self._stats.storage_error is not None:
            self._storage_recovered()
        self._stats.dead_lettered += len(batch.rejects)
        self._stats.acked += self._ack(batch.generation, batch.packet_ids)
        self._waiting_messages -= batch.size
        if batch.records:
            self._on_persisted()
        if self._reading_paused and self._waiting_messages < self._high_water // 2:
            self._reading_paused = False
            self._set_reading(True)

    def _storage_failed(self, exc: Exception) -> None:
        stats = self._stats
        stats.storage_failures += 1
        error = str(exc) or type(exc).__name__
        now = time.monotonic()
        if stats.storage_error is None:
            stats.storage_error, stats.storage_failing_since = error, now
            self._storage_reminded = now
            log.error(
                "%s: not acknowledging; the broker keeps the backlog; retrying every %.0f s",
                error,
                self._storage_retry_s,
            )
            self._on_storage(error)
        elif now - self._storage_reminded >= STORAGE_REMIND_S:
            self._storage_reminded = now
            log.error(
                "storage still failing after %.0f s (%d attempts, %d messages unacked): %s",
                now - (stats.storage_failing_since or now),
                stats.storage_failures,
                self._waiting_messages,
                error,
            )

    def _storage_recovered(self) -> None:
        stats = self._stats
        since = stats.storage_failing_since
        log.warning(
            "storage writes resumed after %.1f s; acknowledging again",
            time.monotonic() - since if since is not None else 0.0,
        )
        stats.storage_error = stats.storage_failing_since = None
        self._on_storage(None)

    def _write_durably(self, batch: _Batch) -> None:
        """Worker thread: append + fsync spool and dead letters; no event-loop state here.
        Raises when the disk refuses either; what was done stays done (`spooled`)."""
        if (batch.lines or batch.records) and not batch.spooled:
            frame = encode_frame(batch.lines, batch.first_ns // 1_000_000, batch.records)
            self._spool.append(frame, len(batch.lines), batch.records)
            self._spool.sync()
        batch.spooled = True
        if batch.rejects:
            self._dead.append(
                [
                    DeadLetter(
                        "decode",
                        rejected.reason.value,
                        rejected.detail,
                        rejected.topic,
                        rejected.payload,
                        rejected.received_ns,
                    )
                    for rejected in batch.rejects
                ]
            )

    async def _next_batch(self) -> _Batch | None:
        while not self._stopping:
            if self._sealed:
                return self._take_sealed()
            batch = self._batch
            if batch.size:
                age_s = (time.time_ns() - batch.first_ns) / 1e9
                if age_s >= self._linger_s:
                    self._seal()
                    continue
                timeout: float | None = self._linger_s - age_s
            else:
                timeout = None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        return None

    def _take_sealed(self) -> _Batch:
        """The sealed batches of one connection generation, as one batch: one fsync and
        one PUBACK write for all. Batches are sealed faster than a persist returns (the
        worker thread waits for the GIL while messages are decoded); one persist each
        would fall behind until the high-water mark pauses reading."""
        batch = self._sealed.pop(0)
        while self._sealed and self._sealed[0].generation == batch.generation:
            more = self._sealed.pop(0)
            batch.lines += more.lines
            batch.rejects += more.rejects
            batch.records += more.records
            batch.packet_ids += more.packet_ids
            batch.size += more.size
        return batch

    def _seal(self) -> None:
        self._sealed.append(self._batch)
        self._batch = _Batch(generation=self._batch.generation)
        self._wake.set()
