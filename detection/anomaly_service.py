"""Anomaly scoring inside the hub: a consumer of the log, on event time.

Like the rules (`detection.rules_service`), the service reads the spool (the hub's
log) from its own position, every `batch_interval_s` or when woken, and scores what it
finds on a worker thread (features, detectors and the event manager's SQL all run
there). The events a batch causes and the position after it are committed in one
event-store transaction, so no acknowledged reading is skipped and none is scored into
events twice; a slow scorer makes the log keep more (the intake stops acking only when
the log is full), it never drops readings. "Now" for the scorer's quiet-device clears
is the watermark: the newest event time the log has shown.

The scorer's learned state is part of the commit: `Scorer.state_changes()` gives the
rows that changed since the last commit (the online baselines of `anomaly.baselines`:
one row per device seen in the batch, plus its visited cells when they changed), and
they are written in the same transaction as the events and the position
(`EventStore.put_consumer_state`). A restart (or a SIGKILL) loads the rows back with the
position they were committed with, so the baselines resume exactly where the committed
log position left them and a run with restarts raises the same events as one without.
A scorer with a trained model (`anomaly.online.AnomalyScorer`) has no rows to commit:
its model is fixed, and it re-learns each device's recent window from the log.

`step` is one turn done synchronously (the offline harnesses drive the service with it).
Detections go through the same event manager as rule events (source `anomaly`), which
deduplicates them by (rule, key) and feeds the same sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from anomaly.conditions import Scored
from events.manager import EventManager
from events.model import Detection
from events.store import EventStore
from ingest.records import Record, Tick
from ingest.spool import ConsumerLag, Cursor, LogReader
from sensors.base import Reading

log = logging.getLogger(__name__)

SNAPSHOT_NAME: Final = "anomaly-consumer"
STATE_NAME: Final = "anomaly"
"""The consumer's rows in the event store's `consumer_state`."""
CHUNK: Final = 20_000
"""Records scored per commit at most: a commit writes the state rows of every device
the records changed, so fewer, larger commits cost less per record."""
YIELD_S: Final = 0.05
"""How often a consumer that yields to the rules looks again."""
READ_CHUNK: Final = 2_000
"""Records decoded and scored at a time between commits: the decoded records are the
turn's largest allocation (about 1.4 KB each), and at 20,000 they were 28 MB of the
detection worker's peak with 10,000 devices."""


class Scorer(Protocol):
    """What the service needs of a scorer (`AnomalyScorer`, `OnlineScorer`)."""

    scored: int
    """Readings scored so far."""
    flagged: int
    """Of those, flagged as unusual."""
    keep: bool
    """Whether `score_batch` returns what it scored (the service sets it: only a caller
    that looks at them, `on_scored`, needs them)."""

    def score_batch(self, readings: Sequence[Reading]) -> tuple[list[Detection], list[Scored]]:
        """Score readings in log order: the detections, and (`keep`) what was scored."""
        ...

    def tick(self, now_ms: int) -> list[Detection]:
        """Clear the conditions of devices quiet by event time `now_ms`."""
        ...

    def state_changes(self) -> dict[str, bytes]:
        """The learned-state rows changed since the last call (committed with the position)."""
        ...

    def load_state(self, rows: Mapping[str, bytes]) -> None:
        """Replace the learned state with committed rows (a restart)."""
        ...


@dataclass
class AnomalyCounters:
    scored: int = 0
    flagged: int = 0
    detections: int = 0
    batches: int = 0
    busy_s: float = 0.0
    readings: int = 0
    errors: int = 0
    """Readings whose scoring raised (skipped, logged)."""
    state_rows: int = 0
    """Learned-state rows committed (devices changed per batch, and their cells)."""
    yielded_s: float = 0.0
    """Time spent waiting for the rules consumer to catch up (alarms first)."""


class AnomalyService:
    """Owns the scorer; `run(spool)` in the hub's TaskGroup, `step` in the harnesses."""

    NAME: Final = "anomaly"

    def __init__(
        self,
        scorer: Scorer,
        manager: EventManager,
        *,
        batch_interval_s: float = 0.5,
        yield_lag_records: int = 0,
        on_events: Callable[[], None] = lambda: None,
        on_scored: Callable[[list[Scored]], None] | None = None,
    ) -> None:
        self.scorer = scorer
        scorer.keep = on_scored is not None
        self.manager = manager
        self.store: EventStore = manager.store
        self.batch_interval_s = batch_interval_s
        self.yield_lag_records = yield_lag_records
        """`run` waits while the rules are behind, up to this many records of its own
        lag (0: never waits)."""
        self._on_events = on_events
        self._on_scored = on_scored
        """Sees every batch's scored vectors (the harness keeps some for plots)."""
        self.counters = AnomalyCounters()
        self.watermark_ms = 0
        self.position: Cursor | None = None
        self._stopping = False
        self._running = False
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()
        self._lag = ConsumerLag()

    def status(self) -> dict[str, int | float]:
        """Counters for the hub's status file (`gridwatch status --json`)."""
        lag_records = self._lag.records()
        return {
            **dataclasses.asdict(self.counters),
            "watermark_ms": self.watermark_ms,
            "lag_records": lag_records,
            "lag_s": self._lag.seconds(self.watermark_ms) if lag_records else 0.0,
        }

    def restore(self) -> None:
        """Load the committed position, watermark and learned state (the scorer's rows
        were committed with that position: they go together)."""
        data = self.store.get_snapshot(SNAPSHOT_NAME)
        self.position = None
        rows = self.store.get_consumer_state(STATE_NAME)
        try:
            self.scorer.load_state(rows)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("anomaly: ignoring the learned state (%s); learning afresh", exc)
            self.scorer.load_state({})
        else:
            if rows:
                log.info("anomaly: resumed learned state (%d rows)", len(rows))
        if data is None:
            return
        try:
            body = json.loads(data)
            raw = body["position"]
            self.position = None if raw is None else Cursor(int(raw[0]), int(raw[1]))
            self.watermark_ms = int(body["watermark_ms"])
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring anomaly consumer snapshot: %s", exc)

    def process(self, records: Sequence[Record], position: Cursor | None) -> list[Detection]:
        """Score a batch of records and commit its detections with `position` (blocking:
        runs on a worker thread in the hub)."""
        return self.commit(self.score(records), position)

    def score(self, records: Sequence[Record]) -> list[tuple[Detection, int]]:
        """Score records in log order, committing nothing: the detections, each with the
        watermark it was decided at (`commit` hands them to the manager with it, so
        scoring several parts before one commit writes what one `process` would)."""
        started = time.perf_counter()
        readings: list[Reading] = []
        for record in records:
            if isinstance(record, Reading):
                readings.append(record)
                if record.ts_from_device:  # arrival stamps say when, not what, happened
                    self.watermark_ms = max(self.watermark_ms, record.ts_ns // 1_000_000)
            elif isinstance(record, Tick):
                self.watermark_ms = max(self.watermark_ms, record.at_ms)
            # rejections and session losses: nothing to score
        scorer = self.scorer
        scored_before, flagged_before = scorer.scored, scorer.flagged
        try:
            detections, scored = scorer.score_batch(readings)
        except Exception as exc:  # noqa: BLE001 (the batch boundary)
            # Scoring is deterministic: retried after a restart, the batch would fail
            # again and hold the log until it fills. Score it reading by reading instead,
            # skipping (and counting) the ones that raise.
            detections, scored = self._score_one_by_one(readings, exc)
        if self._on_scored is not None:
            self._on_scored(scored)
        detections += scorer.tick(self.watermark_ms)
        counters = self.counters
        counters.readings += len(readings)
        counters.scored += scorer.scored - scored_before
        counters.flagged += scorer.flagged - flagged_before
        counters.busy_s += time.perf_counter() - started
        return [(detection, self.watermark_ms) for detection in detections]

    def commit(
        self, decided: Sequence[tuple[Detection, int]], position: Cursor | None
    ) -> list[Detection]:
        """Commit what `score` decided since the last commit, the learned state it
        changed and `position` (the log position after those records) in ONE store
        transaction."""
        started = time.perf_counter()
        body = {
            "position": None if position is None else [position.segment, position.offset],
            "watermark_ms": self.watermark_ms,
        }
        rows = self.scorer.state_changes()
        with self.manager.batch():
            for detection, at_ms in decided:
                self.manager.handle(detection, at_ms)
            self.store.put_consumer_state(STATE_NAME, rows, self.watermark_ms)
            self.store.put_snapshot(SNAPSHOT_NAME, json.dumps(body).encode(), self.watermark_ms)
        counters = self.counters
        counters.state_rows += len(rows)
        counters.detections += len(decided)
        counters.batches += 1
        counters.busy_s += time.perf_counter() - started
        return [detection for detection, _at in decided]

    def _score_one_by_one(
        self, readings: Sequence[Reading], first: Exception
    ) -> tuple[list[Detection], list[Scored]]:
        log.error("anomaly: scoring a batch raised %s; scoring it reading by reading", first)
        detections: list[Detection] = []
        scored: list[Scored] = []
        for reading in readings:
            try:
                more, vectors = self.scorer.score_batch([reading])
            except Exception as exc:  # noqa: BLE001 (the reading boundary)
                self.counters.errors += 1
                if self.counters.errors <= 3:
                    log.error("anomaly: skipped a reading of %s: %r", reading.device, exc)
                continue
            detections += more
            scored += vectors
        return detections, scored

    def step(self, records: Sequence[Record]) -> list[Detection]:
        """One turn synchronously: score `records`, commit, return the detections."""
        detections = self.process(records, self.position)
        if detections:
            self._on_events()
        return detections

    def wake(self) -> None:
        self._wake.set()

    async def run(self, spool: LogReader, rules_behind: Callable[[], bool] | None = None) -> None:
        """Consume the log until `stop`. Alarms first: while `rules_behind()` (the rules
        consumer has more of the log waiting), scoring waits between commits, so the
        rules get the CPU the two share, unless this consumer is `yield_lag_records`
        behind itself or the log needs space. Under load anomaly events come later; what
        they decide does not change (the log and the state decide it, not the timing)."""
        self._running = True
        try:
            await self._follow(spool, rules_behind)
        finally:
            self._running = False

    def _yields(self, spool: LogReader, rules_behind: Callable[[], bool] | None) -> bool:
        return (
            rules_behind is not None
            and not self._stopping
            and self._lag.records() < self.yield_lag_records
            and not spool.needs_space
            and rules_behind()
        )

    async def _follow(self, spool: LogReader, rules_behind: Callable[[], bool] | None) -> None:
        await asyncio.to_thread(self.restore)
        position = spool.hold(self.NAME, self.position)
        self._lag.start(spool, position)
        decided: list[tuple[Detection, int]] = []
        pending = 0  # records scored since the last commit
        while True:
            if not pending and self._yields(spool, rules_behind):
                await asyncio.sleep(YIELD_S)
                self.counters.yielded_s += YIELD_S
                continue
            batch = spool.read_records(position, READ_CHUNK)
            if batch is not None:
                decided += await asyncio.to_thread(self.score, batch.records)
                position = batch.end
                pending += len(batch.records)
                if pending < CHUNK:
                    continue  # read on: one commit for up to CHUNK records
            if pending:
                detections = await asyncio.to_thread(self.commit, decided, position)
                self.position = position
                self._lag.consumed += pending
                spool.release(self.NAME, position)
                decided, pending = [], 0
                if detections:
                    self._on_events()
                if not self._stopping:
                    await asyncio.sleep(self.batch_interval_s / 10)  # batches, not per fsync
                continue
            if self._stopping:
                self._stopped.set()
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.batch_interval_s)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop: score what the log holds, commit, end the run loop."""
        self._stopping = True
        self._wake.set()
        if not self._running:
            return  # failed and waiting to restart, or never started: nothing to finish
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout_s)
