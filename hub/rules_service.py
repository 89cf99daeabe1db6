"""Rules inside the running hub: readings in, events out, state snapshotted.

Intake hands every decoded reading (and every rejection) to `observe`, which only
queues it: the ingest path never waits for rules. `run` evaluates the queue on the
event loop (pure CPU, microseconds per reading), persists detections through the
event manager on a worker thread (SQL), wakes the outbox dispatcher, and snapshots the
engine state after every change and every `snapshot_interval_s`, so a restart resumes
open conditions instead of forgetting or repeating them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from events.manager import EventManager
from events.model import Detection
from events.store import EventStore
from ingest.decode import Rejected
from rules.engine import Engine, EngineState, rejected_reading
from sensors.base import Reading

log = logging.getLogger(__name__)

SNAPSHOT_NAME: Final = "rules-engine"
TICK_S: Final = 1.0


def as_reading(item: Reading | Rejected, prefix_parts: int) -> Reading | None:
    """What rules see of a decoded message: the reading, or for a rejection a pseudo-
    reading of its device (None when the topic names no device)."""
    if isinstance(item, Reading):
        return item
    parts = item.topic.split("/")[prefix_parts:]
    if len(parts) != 4:
        return None
    return rejected_reading(parts[0], parts[1], parts[2], item.reason.value, item.received_ns)


class RulesService:
    def __init__(
        self,
        engine: Engine,
        store: EventStore,
        manager: EventManager,
        *,
        topic_prefix: str,
        snapshot_interval_s: float = 10.0,
        on_events: Callable[[], None] = lambda: None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.engine = engine
        self.store = store
        self.manager = manager
        self._prefix_parts = len(topic_prefix.strip("/").split("/"))
        self._snapshot_interval_s = snapshot_interval_s
        self._on_events = on_events
        self._clock_ms = clock_ms
        self._queue: deque[Reading | Rejected] = deque()
        self._wake = asyncio.Event()
        self.state = EngineState()
        self.detections = 0
        self.evaluated = 0

    def restore(self) -> None:
        """Load the last snapshot (a corrupt or foreign one is logged and ignored)."""
        data = self.store.get_snapshot(SNAPSHOT_NAME)
        if data is None:
            return
        try:
            self.state = EngineState.from_json(data)
        except (ValueError, KeyError) as exc:
            log.warning("ignoring rules snapshot: %s", exc)
            return
        log.info("rules: resumed %d condition slots from the snapshot", len(self.state.slots))

    def observe(self, item: Reading | Rejected) -> None:
        self._queue.append(item)
        self._wake.set()

    def _evaluate_queued(self, now_ms: int) -> list[Detection]:
        out = self.engine.tick(self.state, now_ms)
        queue = self._queue
        while queue:
            reading = as_reading(queue.popleft(), self._prefix_parts)
            if reading is not None:
                out += self.engine.evaluate(reading, self.state, now_ms)
                self.evaluated += 1
        return out

    def _persist(self, detections: list[Detection], now_ms: int, snapshot: bool) -> None:
        for detection in detections:
            self.manager.handle(detection, now_ms)
        self.manager.tick(now_ms)
        if snapshot:
            self.store.put_snapshot(SNAPSHOT_NAME, self.state.to_json(), now_ms)

    async def run(self) -> None:
        last_snapshot = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK_S)
            self._wake.clear()
            now_ms = self._clock_ms()
            detections = self._evaluate_queued(now_ms)
            due = time.monotonic() - last_snapshot >= self._snapshot_interval_s
            snapshot = bool(detections) or due
            if detections or due:
                await asyncio.to_thread(self._persist, detections, now_ms, snapshot)
                last_snapshot = time.monotonic()
            if detections:
                self.detections += len(detections)
                self._on_events()

    async def flush(self) -> None:
        """Evaluate what is queued and snapshot (graceful stop)."""
        now_ms = self._clock_ms()
        detections = self._evaluate_queued(now_ms)
        await asyncio.to_thread(self._persist, detections, now_ms, True)
        if detections:
            self._on_events()
