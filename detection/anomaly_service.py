"""Anomaly scoring inside the hub: readings in (never blocking ingest), events out.

Intake hands every decoded reading to `observe`, which only appends it to a bounded
queue: when the scorer falls behind, readings beyond `queue_max` are dropped and counted
(`dropped`), never waited for. `run` takes the queue as one batch every
`batch_interval_s` and scores it on a worker thread (features, detectors and the event
manager's SQL all run there), so the event loop only swaps a deque. Detections go
through the same event manager as rule events (source `anomaly`), which deduplicates
them by (rule, key) and feeds the same sinks.

`step` is one turn of `run` done synchronously: score what is queued at the clock's
`now` (`clock_ms`, the wall clock by default) in the caller's thread. The offline
scenario harness drives the service with it in simulated time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from anomaly.online import AnomalyScorer, Scored
from events.manager import EventManager
from events.model import Detection
from ingest.decode import Rejected
from sensors.base import Reading

log = logging.getLogger(__name__)


@dataclass
class AnomalyCounters:
    queued: int = 0
    dropped: int = 0
    scored: int = 0
    flagged: int = 0
    detections: int = 0
    batches: int = 0
    busy_s: float = 0.0


class AnomalyService:
    """Owns the scorer; `observe` from intake, `run` in the hub's TaskGroup."""

    def __init__(
        self,
        scorer: AnomalyScorer,
        manager: EventManager,
        *,
        queue_max: int = 50_000,
        batch_interval_s: float = 0.5,
        on_events: Callable[[], None] = lambda: None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        on_scored: Callable[[list[Scored]], None] | None = None,
    ) -> None:
        self.scorer = scorer
        self.manager = manager
        self.queue_max = queue_max
        self.batch_interval_s = batch_interval_s
        self._on_events = on_events
        self._clock_ms = clock_ms
        """Event time for the scorer's quiet-device clears and the event manager."""
        self._on_scored = on_scored
        """Sees every batch's scored vectors (the harness keeps some for plots)."""
        self._queue: deque[Reading] = deque()
        self._busy = asyncio.Lock()  # the scorer is not thread-safe: one batch at a time
        self.counters = AnomalyCounters()

    def observe(self, item: Reading | Rejected) -> None:
        """Queue a reading for scoring; O(1), never blocks, drops (counted) when full."""
        if not isinstance(item, Reading):
            return
        if len(self._queue) >= self.queue_max:
            self.counters.dropped += 1
            return
        self._queue.append(item)
        self.counters.queued += 1

    def status(self) -> dict[str, int | float]:
        """Counters for the hub's status file (`gridwatch status --json`)."""
        return {**dataclasses.asdict(self.counters), "waiting": len(self._queue)}

    def _take(self) -> list[Reading]:
        batch = list(self._queue)
        self._queue.clear()
        return batch

    def process(self, batch: list[Reading], now_ms: int) -> list[Detection]:
        """Score a batch and persist its detections (blocking: runs on a worker thread)."""
        started = time.perf_counter()
        detections, scored = self.scorer.score_batch(batch)
        if self._on_scored is not None:
            self._on_scored(scored)
        detections += self.scorer.tick(now_ms)
        for detection in detections:
            self.manager.handle(detection, now_ms)
        counters = self.counters
        counters.scored += len(scored)
        counters.flagged += sum(1 for s in scored if s.flagged)
        counters.detections += len(detections)
        counters.batches += 1
        counters.busy_s += time.perf_counter() - started
        return detections

    def step(self) -> list[Detection]:
        """One turn of `run`, synchronously and now (by the clock): score what is queued
        and persist the detections, in the caller's thread (not while `run` runs).
        Returns the detections."""
        detections = self.process(self._take(), self._clock_ms())
        if detections:
            self._on_events()
        return detections

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.batch_interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Score whatever is queued now (also used at a graceful stop)."""
        async with self._busy:
            batch = self._take()
            detections = await asyncio.to_thread(self.process, batch, self._clock_ms())
        if detections:
            self._on_events()


def fan_out(
    *observers: Callable[[Reading | Rejected], None] | None,
) -> Callable[[Reading | Rejected], None] | None:
    """One intake hook calling each present observer in turn (None when there is none)."""
    present = [o for o in observers if o is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def observe(item: Reading | Rejected) -> None:
        for observer in present:
            observer(item)

    return observe
