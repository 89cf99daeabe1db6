"""Spool → InfluxDB: batches by size and linger, sorted failures, cursor after success.

Always from the spool cursor: a failed write is simply read and sent again after a
backoff. One batch is in flight, or two when a backlog holds two full batches (they are
committed together, in order); a crash re-sends at most those (InfluxDB folds
identical points). When InfluxDB refuses a batch as data, the batch is
split in halves until the refused lines are isolated; those go to dead letters and the
rest is stored.

Retries back off exponentially (up to `retry_max_s`), but a backoff after InfluxDB was
down (no answer, 5xx) is cut short by a readiness probe: its `/ping` is asked every
PROBE_INTERVAL_S (`events.sinks.wait_until_ready`) and the write retried as soon as it
answers, so writes resume within about a second of its return however long the outage.
429 and configuration failures (401/403/404) wait the plain backoff; a Retry-After is
honoured up to RETRY_AFTER_MAX_S.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Final

from events.sinks import wait_until_ready
from ingest.deadletter import DeadLetter, DeadLetterStore
from ingest.influx import Failure, InfluxWriter, WriteError, answers_ping
from ingest.spool import Spool, SpoolBatch
from ingest.stats import IngestStats

log = logging.getLogger(__name__)

DEAD_LETTER_RETRY_S: Final = 1.0
"""Refused lines the dead-letter disk would not take are filed again this often."""

RETRY_AFTER_MAX_S: Final = 60.0
"""A longer Retry-After (a proxy asking for an hour) is cut to this: the spool fills
meanwhile, and the server can always say it again."""


class SpoolWriter:
    def __init__(
        self,
        spool: Spool,
        sink: InfluxWriter,
        dead_letters: DeadLetterStore,
        stats: IngestStats,
        *,
        batch_size: int = 5000,
        flush_interval_s: float = 1.0,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
        idle_s: float = 0.05,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._spool = spool
        self._sink = sink
        self._dead = dead_letters
        self._stats = stats
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._on_commit = on_commit
        self._idle_s = idle_s
        self._poll_s = min(0.01, flush_interval_s, idle_s)
        self._failing_since: float | None = None

    async def run(self) -> None:
        """Write when a batch is full, when the linger has passed, or as soon as the input
        goes quiet (no new lines for `idle_s`): bursts are batched, their tails not delayed.

        Quiet means no newly synced lines, not an unchanged backlog: once a burst is over,
        the rest of it goes out batch after batch, with no idle wait before each one."""
        waiting_since = grew_at = 0.0
        seen_synced = -1
        while True:
            pending = self._spool.pending_lines
            now = time.monotonic()
            synced = self._spool.synced_lines
            if synced != seen_synced:
                seen_synced, grew_at = synced, now
            if pending == 0:
                waiting_since = 0.0
                await asyncio.sleep(self._poll_s)
                continue
            if not waiting_since:
                waiting_since = now
            ready = (
                pending >= self._batch_size
                or now - waiting_since >= self._flush_interval_s
                or now - grew_at >= self._idle_s
            )
            if not ready:
                await asyncio.sleep(self._poll_s)
                continue
            backlog = pending >= 2 * self._batch_size
            if not await (self._write_two() if backlog else self.write_once()):
                await asyncio.sleep(self._poll_s)  # counted lines but nothing readable: no spin
            waiting_since = 0.0  # the linger starts again for what is left

    async def write_once(self) -> bool:
        """Send the next batch from the cursor until it is stored or dead-lettered."""
        batch = self._spool.read(self._batch_size)
        if batch is None:
            return False
        await self._store([batch])
        return True

    async def _write_two(self) -> bool:
        """Two batches in flight, for a backlog: InfluxDB parses each request on one core,
        so the second one uses the other core once the hub has stopped receiving. Both are
        committed together, in order, once both are stored: the cursor still moves only
        over stored lines, and a crash re-sends at most these two batches (folded)."""
        first = self._spool.read(self._batch_size)
        if first is None:
            return False
        second = self._spool.read(self._batch_size, start=first.end)
        await self._store([first] if second is None else [first, second])
        return True

    async def _store(self, batches: list[SpoolBatch]) -> None:
        """Deliver consecutive batches concurrently, then dead-letter and commit them."""
        outcomes = await asyncio.gather(*(self._deliver_until_done(b.payload) for b in batches))
        # Refused lines are dead-lettered only once every batch got through: a retryable
        # failure later in a bisection re-sends that batch from the start, and must not
        # dead-letter (and count) the same lines again.
        refused_lines = [refusal for refusals in outcomes for refusal in refusals]
        if self._failing_since is not None:
            log.warning(
                "InfluxDB writes recovered after %.0f s", time.monotonic() - self._failing_since
            )
            self._failing_since = None
        if refused_lines:
            await self._dead_letter_until_done(refused_lines)
            # Counted here, on the event loop: the intake updates the same counter.
            self._stats.dead_lettered += len(refused_lines)
        lines = sum(batch.lines for batch in batches)
        self._spool.commit(batches[-1].end, lines)
        self._stats.stored += lines - len(refused_lines)
        self._stats.last_stored_ns = time.time_ns()
        for batch in batches:
            self._record_latency(batch.payload)
        self._on_commit()

    async def _deliver_until_done(self, payload: bytes) -> list[tuple[bytes, WriteError]]:
        """Write one batch, backing off on retryable failures; return its refused lines.

        A retry that a probe started and that failed again (InfluxDB answers `/ping` but
        not writes) is followed by a plain backoff, so a failing server is not hammered."""
        delay = self._retry_min_s
        probe = True
        while True:
            refused_lines: list[tuple[bytes, WriteError]] = []
            try:
                await self._deliver(payload, refused_lines)
                return refused_lines
            except WriteError as exc:
                self._stats.write_failures[exc.failure.value] += 1
                self._report_failure(exc)
                if exc.retry_after_s is not None:  # the server knows best, within reason
                    await asyncio.sleep(min(max(exc.retry_after_s, 0.0), RETRY_AFTER_MAX_S))
                    probe = True
                elif probe and exc.unavailable:
                    probe = not await self._wait_or_ready(random.uniform(self._retry_min_s, delay))
                else:
                    await asyncio.sleep(random.uniform(self._retry_min_s, delay))
                    probe = True
                delay = min(delay * 2, self._retry_max_s)

    async def _wait_or_ready(self, seconds: float) -> bool:
        """Wait up to `seconds`, probing InfluxDB's `/ping` every ~PROBE_INTERVAL_S;
        True as soon as it answers (retry now), False once the wait has run out."""
        return await wait_until_ready(seconds, lambda: answers_ping(self._sink))

    async def _deliver(self, payload: bytes, refused: list[tuple[bytes, WriteError]]) -> None:
        """Write; on a data refusal bisect, collecting the refused lines in `refused`."""
        try:
            await self._sink.write(payload)
        except WriteError as exc:
            if exc.failure is not Failure.REJECTED:
                raise
            lines = payload.splitlines(keepends=True)
            if len(lines) == 1:
                refused.append((payload, exc))
                return
            middle = len(lines) // 2
            await self._deliver(b"".join(lines[:middle]), refused)
            await self._deliver(b"".join(lines[middle:]), refused)

    async def _dead_letter_until_done(self, refused: list[tuple[bytes, WriteError]]) -> None:
        """Dead-letter the refused lines before the commit; while the disk refuses them
        (full), retry every `DEAD_LETTER_RETRY_S`: the cursor must not pass lines that
        are neither stored nor filed, and the writer must not end on a full disk."""
        failing = False
        while True:
            try:
                await asyncio.to_thread(self._dead_letter, refused)
            except OSError as exc:
                if not failing:
                    failing = True
                    log.error("cannot file %d refused lines as dead letters: %s", len(refused), exc)
                await asyncio.sleep(DEAD_LETTER_RETRY_S)
                continue
            if failing:
                log.warning("refused lines filed as dead letters again")
            return

    def _dead_letter(self, refused: list[tuple[bytes, WriteError]]) -> None:
        """Worker thread: all refused lines of a batch, one fsync, before the commit."""
        self._dead.append(
            [
                DeadLetter(
                    "influx",
                    f"influx_{exc.status or 'error'}",
                    exc.detail,
                    "",
                    line,
                    time.time_ns(),
                )
                for line, exc in refused
            ]
        )

    def _report_failure(self, exc: WriteError) -> None:
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            level = logging.ERROR if exc.failure is Failure.CONFIG else logging.WARNING
            log.log(
                level,
                "InfluxDB write failed (%s); keeping %d lines in the spool and retrying",
                exc,
                self._spool.pending_lines,
            )

    def _record_latency(self, payload: bytes) -> None:
        """publish→stored from each line's timestamp (device time when the device sent one)."""
        now_ns = time.time_ns()
        window = self._stats.latency
        # Every 8th line: percentiles need samples, not every point, and this is per line.
        for line in payload.splitlines()[::8]:
            ts = line[line.rfind(b" ") + 1 :]
            if ts:
                window.add((now_ns - int(ts)) / 1e6)
