"""Rules inside the running hub: readings in, events out, state snapshotted.

Intake hands every decoded reading (and every rejection) to `observe`, which only
queues it: the ingest path never waits for rules reading by reading. The queue is
bounded without losing anything: when it holds `max_queue` items, `observe` still
queues the item in hand but tells the intake to stop reading from the broker (the
`pause_intake` callback, counted in `queue_waits`) until `run` has drained it to half;
unread messages wait at the broker, so memory stays bounded under overload. `run`
evaluates the queue on the event loop in chunks (pure CPU, microseconds per reading;
between chunks the intake gets the loop), persists detections through the event
manager on a worker thread (SQL), wakes the outbox dispatcher, and snapshots the
engine state after every change and every `snapshot_interval_s`, so a restart resumes
open conditions instead of forgetting or repeating them.

`step` is one turn of `run` done synchronously (evaluate what is queued at the clock's
`now`, persist, snapshot): the offline evaluation harness drives the service with it in
simulated time, through an injected clock (`clock_ms`), so its figures come from this
code path.

Rejections become pseudo-readings keyed by the device their topic names, so rules can
count malformed traffic per device; but those names are the sender's to choose. Only a
device the rules' directory knows (on its own site), or an `unknown_device` rejection
under a known site (its `unregistered_device` alarm), keeps a key of its own. Every
other rejection is tallied by `UnknownSources`: per known site (devices it does not
know) or for the hub (`HUB_SCOPE`: sites it does not know), names and counts in a
bounded table, and reaches the rules as a `rejected` reading of that scope carrying the tally,
so a storm of made-up names opens at most one event per known site plus one for the
hub (rule `unknown_sources` of the default pack), which lists them.

`reload_rules` (SIGHUP in `gridwatch run`; the hub API calls it too) re-reads the rule
files and swaps the engine without a restart: conditions of unchanged rules carry on,
those of changed or removed rules start afresh, and their open events return to normal
(nothing would clear them otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from events.manager import EventManager
from events.model import Detection
from events.store import EventStore
from ingest.decode import Rejected, RejectReason
from rules.directory import Directory
from rules.engine import (
    HUB_SCOPE,
    Engine,
    EngineState,
    rejected_reading,
    unknown_sources_reading,
)
from rules.schema import RuleError, load_rules
from sensors.base import Reading

log = logging.getLogger(__name__)

SNAPSHOT_NAME: Final = "rules-engine"
TICK_S: Final = 1.0
MAX_QUEUE: Final = 20_000
"""Readings queued for rules before the intake stops reading (a fraction of a second
of rules work; the broker keeps the rest)."""
CHUNK: Final = 2_000
"""Readings evaluated per turn of `run` before the event loop goes to other tasks."""


def as_reading(item: Reading | Rejected) -> Reading | None:
    """What rules see of a decoded message: the reading, or for a rejection a pseudo-
    reading of its device (None when the topic is no device topic)."""
    if isinstance(item, Reading):
        return item
    route = item.route
    if route is None:
        return None
    return rejected_reading(
        route.site, route.kind, route.device, item.reason.value, item.received_ns
    )


MAX_NAMES: Final = 1_000
"""Distinct unknown names tallied per scope; messages of further names are counted as
`others` (memory stays bounded whatever the sender makes up)."""
LISTED_NAMES: Final = 10
"""Names an event's message lists (the most frequent)."""
TALLY_RESET_MS: Final = 60 * 60_000
"""A scope's tally starts afresh after this long without a rejection under it."""


@dataclass(slots=True)
class _Tally:
    counts: dict[str, int]
    others: int = 0
    total: int = 0
    last_ns: int = 0

    def add(self, name: str, at_ns: int) -> None:
        if name in self.counts:
            self.counts[name] += 1
        elif len(self.counts) < MAX_NAMES:
            self.counts[name] = 1
        else:
            self.others += 1
        self.total += 1
        self.last_ns = max(self.last_ns, at_ns)

    def names(self) -> str:
        top = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:LISTED_NAMES]
        listed = ", ".join(f"{name} ({n})" for name, n in top)
        rest = self.total - sum(n for _, n in top)
        if not rest:
            return listed
        names = len(self.counts) - len(top)
        beyond = " and more" if self.others else ""  # names beyond the table
        return f"{listed}; {rest} more message(s) from {names}{beyond} other name(s)"


class UnknownSources:
    """Turns rejections into what rules see, aggregating those under unknown names."""

    def __init__(self) -> None:
        self.tallies: dict[str, _Tally] = {}

    def reading(self, item: Rejected, directory: Directory) -> Reading | None:
        """The pseudo-reading of a rejection (None: no device topic)."""
        route = item.route
        if route is None:
            return None
        info = directory.device(route.device)
        known_site = route.site in directory.sites
        if (info is not None and info.site == route.site) or (
            known_site and item.reason is RejectReason.UNKNOWN_DEVICE
        ):
            return as_reading(item)
        scope = route.site if known_site else HUB_SCOPE
        name = route.device if known_site else f"{route.site}/{route.device}"
        at_ns = item.received_ns
        tally = self.tallies.get(scope)
        if tally is None or at_ns - tally.last_ns > TALLY_RESET_MS * 1_000_000:
            tally = self.tallies[scope] = _Tally({})
        tally.add(name, at_ns)
        return unknown_sources_reading(
            scope,
            item.reason.value,
            at_ns,
            total=tally.total,
            sources=len(tally.counts) + (1 if tally.others else 0),
            names=tally.names(),
        )


@dataclass(frozen=True, slots=True)
class _Turn:
    """What one turn evaluated at `now_ms`, and what its SQL half must do."""

    now_ms: int
    detections: list[Detection]
    snapshot: bool
    manager_tick: bool

    @property
    def persist(self) -> bool:
        """Anything for the SQL half (detections always come with a snapshot)."""
        return self.snapshot or self.manager_tick


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did (for the log line and the API's answer)."""

    rules: int
    """Rules now running."""
    kept: int
    """Condition slots carried over (their rules did not change)."""
    dropped: int
    """Slots of changed or removed rules, started afresh."""
    returned: int
    """Open events of those slots, returned to normal."""

    def to_json(self) -> dict[str, int]:
        return {
            "rules": self.rules,
            "kept": self.kept,
            "dropped": self.dropped,
            "returned": self.returned,
        }


class RulesService:
    def __init__(
        self,
        engine: Engine,
        store: EventStore,
        manager: EventManager,
        *,
        rule_paths: Sequence[Path] = (),
        snapshot_interval_s: float = 10.0,
        on_events: Callable[[], None] = lambda: None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        max_queue: int = MAX_QUEUE,
        pause_intake: Callable[[bool], None] = lambda _full: None,
        manager_tick_ms: int | None = None,
    ) -> None:
        self.engine = engine
        self.rule_paths = tuple(rule_paths)
        """Where `reload_rules` reads rules from (empty: the built-in pack)."""
        self.store = store
        self.manager = manager
        self._snapshot_interval_s = snapshot_interval_s
        self._on_events = on_events
        self._clock_ms = clock_ms
        """Event time for rule timers and the event manager (the wall clock in the hub,
        simulated time in the evaluation harness); snapshot intervals use a monotonic
        clock of their own."""
        if manager_tick_ms is not None and manager_tick_ms <= 0:
            raise ValueError("manager_tick_ms must be positive (or None)")
        self._manager_tick_ms = manager_tick_ms
        """None: the event manager's timers (shelve expiry, flood quiet-down) are
        checked at every persist (the hub). N: only at the first turn at or after each
        multiple of N ms of the clock (the evaluation harness: its store queries cost)."""
        self._manager_next_ms: int | None = None
        self._last_snapshot = time.monotonic()
        self._queue: deque[Reading | Rejected] = deque()
        self.max_queue = max_queue
        self.pause_intake = pause_intake
        """Called with True when the queue is full (stop reading), False when it has
        drained to half (read again). The hub wires it to `Intake.consumer_full`."""
        self.queue_full = False
        self.queue_waits = 0
        """Times the queue filled and the intake was told to stop reading."""
        self._wake = asyncio.Event()
        self.state = EngineState()
        self.detections = 0
        self.evaluated = 0
        self.reloads = 0
        # Evaluation runs on the event loop, a reload may come from an API worker
        # thread: the engine and its state change hands under this lock only.
        self._lock = threading.Lock()
        self._owed: list[Detection] = []
        """Clears a reload owes, persisted with the next evaluation."""
        self._dirty = False
        self.unknown = UnknownSources()
        """Rejections under names the directory does not know, tallied per scope."""

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
        """Queue an item; never drops one. A full queue pauses the intake instead (what
        is already on its way in is still queued: the bound is `max_queue` plus what
        the MQTT client had read, itself capped by the broker's Receive Maximum)."""
        self._queue.append(item)
        self._wake.set()
        if len(self._queue) >= self.max_queue and not self.queue_full:
            self.queue_full = True
            self.queue_waits += 1
            log.warning("rules queue full (%d readings): intake paused", len(self._queue))
            self.pause_intake(True)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def status(self) -> dict[str, int | bool]:
        """For `gridwatch status` and `hub_stats`."""
        return {
            "rules_queued": len(self._queue),
            "rules_queue_max": self.max_queue,
            "rules_queue_full": self.queue_full,
            "rules_queue_waits": self.queue_waits,
            "rules_evaluated": self.evaluated,
            "rules_detections": self.detections,
        }

    def _resume_if_drained(self) -> None:
        if self.queue_full and len(self._queue) <= self.max_queue // 2:
            self.queue_full = False
            self.pause_intake(False)

    def reload_rules(self) -> ReloadResult:
        """Re-read `rule_paths` and run the new rules from now on, keeping the state of
        unchanged rules. Raises `RuleError` (naming file and line) when a file is
        invalid or unreadable; the running rules then stay as they were."""
        rules = load_rules(self.rule_paths)
        with self._lock:
            new = Engine(rules, self.engine.directory)
            before = len(self.state.slots)
            owed = new.retire(self.state, self.engine, self._clock_ms())
            kept = len(self.state.slots)
            self.engine = new
            self._owed += owed
            self._dirty = True  # snapshot the pruned state soon
            self.reloads += 1
        result = ReloadResult(len(rules), kept, before - kept, len(owed))
        log.info(
            "rules reloaded: %d rules, %d condition slots kept, %d dropped, %d events returned",
            result.rules,
            result.kept,
            result.dropped,
            result.returned,
        )
        return result

    def set_directory(self, directory: Directory) -> None:
        """What rules know about devices changed (the registry): the same rules over the
        new directory. Condition state carries on as it is (no rule changed), and the
        event manager assigns to the cells' new grid workers."""
        with self._lock:
            self.engine = Engine([c.rule for c in self.engine.rules], directory)
        self.manager.workers = directory.workers()

    def reload_on_signal(self) -> None:
        """SIGHUP: reload, and on a bad file say why and keep running the old rules."""
        try:
            self.reload_rules()
        except RuleError as exc:
            log.error("rules not reloaded, the running rules stay: %s", exc)

    def _evaluate_queued(self, now_ms: int, limit: int | None = None) -> list[Detection]:
        """Evaluate up to `limit` queued items (all when None), in arrival order."""
        with self._lock:
            out, self._owed = self._owed, []
            out += self.engine.tick(self.state, now_ms)
            queue = self._queue
            n = len(queue) if limit is None else min(limit, len(queue))
            for _ in range(n):
                item = queue.popleft()
                reading = (
                    item
                    if isinstance(item, Reading)
                    else self.unknown.reading(item, self.engine.directory)
                )
                if reading is not None:
                    out += self.engine.evaluate(reading, self.state, now_ms)
                    self.evaluated += 1
        self._resume_if_drained()
        return out

    def _snapshot_json(self) -> bytes:
        with self._lock:
            self._dirty = False
            return self.state.to_json()

    def _manager_due(self, now_ms: int) -> bool:
        """With `manager_tick_ms`: whether this turn crossed the next multiple of it
        (the first turn only sets the first one, after its own time)."""
        every = self._manager_tick_ms
        if every is None:
            return False
        due = self._manager_next_ms is not None and now_ms >= self._manager_next_ms
        if self._manager_next_ms is None or due:
            self._manager_next_ms = (now_ms // every + 1) * every
        return due

    def _turn(self, limit: int | None) -> _Turn:
        """The event-loop half of a turn: evaluate at the clock's now, and decide what
        the SQL half does (snapshot after a change or when the interval is up)."""
        now_ms = self._clock_ms()
        detections = self._evaluate_queued(now_ms, limit)
        due = time.monotonic() - self._last_snapshot >= self._snapshot_interval_s or self._dirty
        snapshot = bool(detections) or due
        manager_tick = self._manager_due(now_ms) or (snapshot and self._manager_tick_ms is None)
        return _Turn(now_ms, detections, snapshot, manager_tick)

    def _persist(
        self, detections: list[Detection], now_ms: int, snapshot: bool, manager_tick: bool = True
    ) -> None:
        """The SQL half of a turn (on a worker thread in the hub)."""
        for detection in detections:
            self.manager.handle(detection, now_ms)
        if manager_tick:
            self.manager.tick(now_ms)
        if snapshot:
            self.store.put_snapshot(SNAPSHOT_NAME, self._snapshot_json(), now_ms)

    def _persist_turn(self, turn: _Turn) -> None:
        self._persist(turn.detections, turn.now_ms, turn.snapshot, turn.manager_tick)

    def _done(self, turn: _Turn) -> None:
        if turn.snapshot:
            self._last_snapshot = time.monotonic()
        if turn.detections:
            self.detections += len(turn.detections)
            self._on_events()

    def step(self, limit: int | None = None) -> list[Detection]:
        """One turn of `run`, synchronously and now (by the clock): fire the rule timers
        due, evaluate up to `limit` queued items (all when None) in arrival order, hand
        the detections to the event manager, tick its timers and snapshot the state when
        due. Returns the detections (already persisted)."""
        turn = self._turn(limit)
        if turn.persist:
            self._persist_turn(turn)
        self._done(turn)
        return turn.detections

    async def run(self) -> None:
        """`step` in a loop, woken by `observe` or every `TICK_S`: evaluation on the
        event loop in chunks of `CHUNK`, the SQL half of each turn on a worker thread."""
        self._last_snapshot = time.monotonic()
        while True:
            if not self._queue:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK_S)
            else:
                await asyncio.sleep(0)  # the intake's turn between chunks
            self._wake.clear()
            turn = self._turn(CHUNK)
            if turn.persist:
                await asyncio.to_thread(self._persist_turn, turn)
            self._done(turn)

    async def flush(self) -> None:
        """Evaluate what is queued and snapshot (graceful stop)."""
        now_ms = self._clock_ms()
        detections = self._evaluate_queued(now_ms)
        await asyncio.to_thread(self._persist, detections, now_ms, True)
        if detections:
            self._on_events()
