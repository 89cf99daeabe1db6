"""Rules inside the running hub: a consumer of the log, on event time, exactly once.

The intake writes every decoded reading and rejection (and, when the input is idle, a
clock `Tick`) into the spool, the hub's log (`ingest.spool`, `ingest.records`). This
service reads the log from its own position (`run`), evaluates on event time
(`consume`), and commits (`commit`) the events the detections cause, the engine state
and the position after the records it evaluated in ONE event-store transaction. After
a crash it restores the committed state and position and reads on from there: every
acknowledged reading is evaluated once, and what was evaluated but not committed is
evaluated again from the same state, with the same outcome (event ids are derived
from rule, key and time, so even a replayed raise writes the same event).

Event time: "now" for the rules is the watermark, the newest event time the log has
shown (a reading's timestamp, a tick's time; `EngineState.clock_ms`). Timers (held
open, silence, windows) fire when the watermark passes them, so a backlog, a restart
or a replay decides exactly what live input would have, and the offline harness
(`evaluation.rules_eval`) feeds the same records to the same `consume`. A rejection
carries no event time: it is evaluated at the watermark. The wall clock enters only
through ticks the hub logs when its whole input is idle (see `hub.runtime`).

Commits happen when a chunk of records caused detections (so events are written
within one turn), when a reload or directory change must be saved, and every
`snapshot_interval_s` otherwise (so a restart re-reads at most that much of the log).

Rejections become pseudo-readings keyed by the device their topic names, so rules can
count malformed traffic per device; but those names are the sender's to choose. Only a
device the rules' directory knows (on its own site), or an `unknown_device` rejection
under a known site (its `unregistered_device` alarm), keeps a key of its own. Every
other rejection is tallied by `UnknownSources`: per known site (devices it does not
know) or for the hub (`HUB_SCOPE`: sites it does not know), names and counts in a
bounded table (part of the committed state), and reaches the rules as a `rejected`
reading of that scope carrying the tally, so a storm of made-up names opens at most one
event per known site plus one for the hub (rule `unknown_sources` of the default pack).

The hub's own health reaches operators here too: `hub_condition` raises or clears an
event per site (its disk refuses writes: nothing is acknowledged), and a `SessionLost`
record in the log (the broker lost what it queued for the hub) raises a one-shot
event, and marks each sequence-gap detection that spans it (`cause`), so operators are
not sent to chase "messages lost" devices that lost nothing themselves.

`reload_rules` (SIGHUP in `gridwatch run`; the hub API calls it too) re-reads the rule
files and swaps the engine without a restart: conditions of unchanged rules carry on,
those of changed or removed rules start afresh, and their open events return to normal
(nothing would clear them otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from events.manager import EventManager
from events.model import Detection, Severity, Source
from events.store import EventStore
from ingest.decode import Rejected, RejectReason
from ingest.records import Record, SessionLost
from ingest.spool import ConsumerLag, Cursor, LogReader
from ingest.stats import LatencyHistogram
from rules.directory import Directory
from rules.engine import (
    HUB_SCOPE,
    Engine,
    EngineState,
    rejected_reading,
    unknown_sources_reading,
)
from rules.schema import RuleError, load_rules
from sensors.base import FieldValue, Reading

log = logging.getLogger(__name__)

SNAPSHOT_NAME: Final = "rules-engine"
TICK_S: Final = 1.0
"""The loop looks for a due commit (interval, reload) at least this often."""
LATE_BEHIND_SHOWN: Final = 5
"""What moved event time before late readings, the top few (`status`)."""
CHUNK: Final = 2_000
"""Records evaluated per turn of `run` before the event loop goes to other tasks."""
STORAGE_FAILING_RULE: Final = "hub_storage_failing"
"""The hub's event while the spool's disk refuses writes (`hub_condition`)."""
SESSION_LOST_RULE: Final = "hub_session_lost"
"""The hub's one-shot event when the broker lost its session (`SessionLost`)."""
SESSION_LOST_CAUSE: Final = "broker_session_lost"
"""`cause` of a sequence-gap detection that spans a session loss."""
HUB_HEALTH_RULES: Final = frozenset({STORAGE_FAILING_RULE, SESSION_LOST_RULE})
"""Events about the hub itself, not decided from the log's readings."""


def as_reading(item: Reading | Rejected, at_ns: int | None = None) -> Reading | None:
    """What rules see of a decoded message: the reading, or for a rejection a pseudo-
    reading of its device (None when the topic is no device topic)."""
    if isinstance(item, Reading):
        return item
    route = item.route
    if route is None:
        return None
    return rejected_reading(
        route.site,
        route.kind,
        route.device,
        item.reason.value,
        item.received_ns if at_ns is None else at_ns,
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

    def reading(
        self, item: Rejected, directory: Directory, at_ns: int | None = None
    ) -> Reading | None:
        """The pseudo-reading of a rejection (None: no device topic)."""
        route = item.route
        if route is None:
            return None
        info = directory.device(route.device)
        known_site = route.site in directory.sites
        if (info is not None and info.site == route.site) or (
            known_site and item.reason is RejectReason.UNKNOWN_DEVICE
        ):
            return as_reading(item, at_ns)
        scope = route.site if known_site else HUB_SCOPE
        name = route.device if known_site else f"{route.site}/{route.device}"
        at_ns = item.received_ns if at_ns is None else at_ns
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
    NAME: Final = "rules"
    """The consumer's name in the log (`Spool.hold`)."""

    def __init__(
        self,
        engine: Engine,
        store: EventStore,
        manager: EventManager,
        *,
        rule_paths: Sequence[Path] = (),
        snapshot_interval_s: float = 10.0,
        on_events: Callable[[], None] = lambda: None,
        chunk: int = CHUNK,
    ) -> None:
        self.engine = engine
        self.rule_paths = tuple(rule_paths)
        """Where `reload_rules` reads rules from (empty: the built-in pack)."""
        self.store = store
        self.manager = manager
        self._snapshot_interval_s = snapshot_interval_s
        self._on_events = on_events
        self._chunk = chunk
        self._last_commit = self._last_state = time.monotonic()
        self._wake = asyncio.Event()
        self.state = EngineState()
        self.position: Cursor | None = None
        """The log position after the last record evaluated (committed or not)."""
        self.committed: Cursor | None = None
        """The position of the last commit: every detection before it is in the store."""
        self.state_position: Cursor | None = None
        """The position of the last committed engine state (where a restart re-reads
        from, deciding again up to `committed` without writing: see `restore`)."""
        self._replay_until: Cursor | None = None
        self.detections = 0
        self.evaluated = 0
        self.behind = False
        """The last read of the log filled a whole chunk: more is waiting (the anomaly
        consumer yields the CPU meanwhile: `AnomalyService.run`)."""
        self.reloads = 0
        self.commits = 0
        self.record_errors = 0
        """Records whose evaluation raised (skipped, logged)."""
        # Evaluation runs on the event loop, a reload may come from an API worker
        # thread: the engine and its state change hands under this lock only.
        self._lock = threading.Lock()
        self._owed: list[Detection] = []
        """Clears a reload owes, committed with the next turn."""
        self._health: list[Detection] = []
        """The hub's own conditions (`hub_condition`), kept until a commit has them."""
        self.session_lost_ms = 0
        """When the broker last lost the hub's session (from the log; 0: never)."""
        self._dirty = False
        self.unknown = UnknownSources()
        """Rejections under names the directory does not know, tallied per scope."""
        self.latency = LatencyHistogram()
        """Wall clock at commit minus event time, per raise (publish→event, live)."""
        self._lag = ConsumerLag()
        self.clockless = True
        """No reading with a device timestamp seen yet: until one is, readings stamped
        on arrival carry event time (a deployment whose devices have no clocks)."""
        self.clocks = SiteClocks()
        """Event time per site, which dates what carries none (see `SiteClocks`)."""
        self._stopping = False
        self._running = False
        self._stopped = asyncio.Event()
        self._restored = False
        """`restore` ran and nothing was evaluated since: the next run starts from it."""

    # ------------------------------------------------------------------ state

    def restore(self) -> None:
        """Load the committed state and positions (a corrupt or foreign snapshot is
        logged and ignored: the rules then start afresh from the log's start).

        The engine state (about 1 kB per device) is committed every
        `snapshot_interval_s`, events and the position after them with every turn that
        has any. A restart therefore resumes the state at `state_position` and decides
        again up to `committed` without writing: the engine is deterministic in the log,
        so it reaches the state it had, and the events it decides are already stored."""
        data = self.store.get_snapshot(SNAPSHOT_NAME)
        state, unknown, position, clockless = EngineState(), UnknownSources(), None, True
        session_lost_ms, clocks = 0, SiteClocks()
        if data is not None:
            try:
                state, unknown, position, clockless, session_lost_ms, clocks = _from_snapshot(data)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring rules snapshot: %s", exc)
            else:
                log.info(
                    "rules: resumed %d condition slots at log position %s (event time %d)",
                    len(state.slots),
                    position,
                    state.clock_ms,
                )
        committed = _position_of(self.store.get_snapshot(POSITION_NAME))
        if committed is None or (position is not None and committed < position):
            committed = position
        with self._lock:
            self.state, self.unknown, self.clockless = state, unknown, clockless
            self.session_lost_ms, self.clocks = session_lost_ms, clocks
            self.position = self.state_position = position
            self.committed = committed
            self._replay_until = committed if committed != position else None
            self._owed, self._dirty = [], False
            self._restored = True

    def _snapshot(self, position: Cursor | None) -> bytes:
        with self._lock:
            self._dirty = False
            return _to_snapshot(
                self.state,
                self.unknown,
                position,
                self.clockless,
                self.session_lost_ms,
                self.clocks,
            )

    @property
    def watermark_ms(self) -> int:
        """Event time: the newest the log has shown."""
        return self.state.clock_ms

    # ------------------------------------------------------------------ evaluation

    def consume(self, records: Sequence[Record]) -> list[Detection]:
        """Evaluate records in log order on event time; pure CPU, no I/O. Returns the
        detections (with what a reload owed), to be `commit`ted."""
        with self._lock:
            self._restored = False  # the state moves on from what the store holds
            out, self._owed = [*self._owed, *self._health], []
            engine, state, clocks = self.engine, self.state, self.clocks
            for record in records:
                # A record the rules cannot evaluate is skipped and counted, never
                # retried: evaluation is deterministic, so after a restart the same
                # record would fail again, the log would fill and ingestion would stop.
                try:
                    if isinstance(record, Reading):
                        stamped = record
                        if record.ts_from_device:
                            self.clockless = False
                            clocks.saw(record.site, record.ts_ns // 1_000_000)
                        elif not self.clockless and state.clock_ms:
                            # Stamped on arrival, which says when it was read from the broker,
                            # not when it happened (a backlog's would all be "now"): it
                            # happened where it is in the log, at its site's event time.
                            stamped = _at(record, clocks.date(record.site, state.clock_ms))
                        ts_ms = stamped.ts_ns // 1_000_000
                        now = ts_ms if ts_ms > state.clock_ms else state.clock_ms
                        found = engine.evaluate(stamped, state, now)
                        if found and self.session_lost_ms:
                            found = [self._gap_cause(d) for d in found]
                        out += found
                    elif isinstance(record, Rejected):
                        # At event time, not arrival: the same wherever the log is replayed.
                        site = record.route.site if record.route is not None else None
                        at_ms = clocks.date(site, state.clock_ms)
                        at_ns = at_ms * 1_000_000 if at_ms else record.received_ns
                        reading = self.unknown.reading(record, engine.directory, at_ns)
                        if reading is not None:
                            out += engine.evaluate(reading, state, state.clock_ms)
                    elif isinstance(record, SessionLost):
                        out += self._session_lost(record)
                    else:
                        clocks.ticked(record.at_ms)
                        out += engine.tick(state, record.at_ms)
                except Exception as exc:  # noqa: BLE001 (the record boundary)
                    self._record_failed(record, exc)
            self.evaluated += len(records)
        return out

    def _session_lost(self, record: SessionLost) -> list[Detection]:
        """Under the lock: remember the loss (for `_gap_cause`) and say so on every site
        (raised and returned at once: nothing clears it later; operators acknowledge)."""
        self.session_lost_ms = record.at_ms
        message = (
            f"The broker lost hub {record.hub}'s session: messages it had queued for the "
            "hub are lost; sequence-gap alarms that follow may come from this"
        )
        raised = self._hub_detections(
            SESSION_LOST_RULE,
            True,
            record.at_ms,
            hub=record.hub,
            severity=Severity.MEDIUM,
            title="Broker lost the hub's session",
            message=message,
            values={"hub": record.hub},
        )
        return [*raised, *(dataclasses.replace(d, raised=False) for d in raised)]

    def _gap_cause(self, detection: Detection) -> Detection:
        """A sequence gap whose previous reading predates the broker's loss of our
        session: those messages may have been lost with the session, not by the device."""
        previous = detection.values.get("previous_ms")
        if (
            not detection.raised
            or not isinstance(previous, int)
            or previous > self.session_lost_ms
            or "missing" not in detection.values
        ):
            return detection
        return dataclasses.replace(
            detection,
            values={**detection.values, "cause": SESSION_LOST_CAUSE},
            message=f"{detection.message} (the broker lost the hub's session meanwhile: "
            "the messages may have been lost there)",
        )

    def _hub_detections(
        self,
        rule_id: str,
        raised: bool,
        at_ms: int,
        *,
        hub: str,
        severity: Severity,
        title: str,
        message: str,
        values: dict[str, FieldValue],
    ) -> list[Detection]:
        """One detection per site the rules know (each one's sensing is affected), or
        one for the hub scope when none is known."""
        sites = sorted(self.engine.directory.sites) or [HUB_SCOPE]
        return [
            Detection(
                rule_id,
                hub,
                raised,
                at_ms,
                site,
                severity=severity,
                title=title,
                message=message,
                incident=rule_id,
                source=Source.HUB,
                values=values,
            )
            for site in sites
        ]

    def hub_condition(
        self,
        rule_id: str,
        raised: bool,
        *,
        hub: str,
        severity: Severity,
        title: str,
        message: str,
        values: dict[str, FieldValue],
    ) -> None:
        """A condition of the hub itself (e.g. its disk refuses writes) raised or
        cleared now (wall clock): not from the log, so it is committed with the next
        turn, and kept until a commit has it. Safe from any thread."""
        at_ms = time.time_ns() // 1_000_000
        with self._lock:
            self._health += self._hub_detections(
                rule_id,
                raised,
                at_ms,
                hub=hub,
                severity=severity,
                title=title,
                message=message,
                values=values,
            )
        self._wake.set()

    def _record_failed(self, record: Record, exc: Exception) -> None:
        """Count a record evaluation raised on; log the first ones with the traceback."""
        self.record_errors += 1
        if self.record_errors <= 3 or self.record_errors % 1000 == 0:
            log.error(
                "rules: evaluating %s raised %s (%d so far); skipped",
                _describe(record),
                type(exc).__name__,
                self.record_errors,
                exc_info=exc if self.record_errors <= 3 else None,
            )

    def commit(
        self, detections: Sequence[Detection], position: Cursor | None, *, state: bool = False
    ) -> None:
        """One transaction: the events `detections` cause, the event manager's timers at
        the watermark, `position` (everything before it is decided), and the engine state
        when `state`, a reload or the interval asks for it (blocking: a worker thread in
        the hub). On failure nothing is written; the caller restarts from the store."""
        now_ms = self.watermark_ms
        now = time.monotonic()
        with_state = state or self._dirty or now - self._last_state >= self._snapshot_interval_s
        with self.manager.batch():
            for detection in detections:
                self.manager.handle(detection, now_ms)
            self.manager.tick(now_ms)
            if with_state:
                self.store.put_snapshot(SNAPSHOT_NAME, self._snapshot(position), now_ms)
            self.store.put_snapshot(POSITION_NAME, _position_json(position), now_ms)
        self.committed = position
        if self._health:
            with self._lock:  # committed now; those raised meanwhile wait for the next
                self._health = [h for h in self._health if all(h is not d for d in detections)]
        if with_state:
            self.state_position = position
            self._last_state = now
        self.commits += 1
        self._last_commit = now
        wall_ms = time.time_ns() // 1_000_000
        for detection in detections:
            if detection.raised:
                self.latency.add(max(0, wall_ms - detection.at_ms))

    def _due(self, detections: Sequence[Detection]) -> bool:
        return (
            bool(detections)
            or self._dirty
            or time.monotonic() - self._last_commit >= self._snapshot_interval_s
        )

    def step(self, records: Sequence[Record], *, force: bool = False) -> list[Detection]:
        """One turn, synchronously (the offline harness): evaluate `records`, and commit
        when the hub's loop would (detections, a pending change, the interval) or when
        `force`d. Returns the detections (committed)."""
        detections = self.consume(records)
        if force or self._due(detections):
            self.commit(detections, self.position)
            self._done(detections)
        return detections

    def _done(self, detections: Sequence[Detection]) -> None:
        if detections:
            self.detections += len(detections)
            self._on_events()

    # ------------------------------------------------------------------ the hub's loop

    def wake(self) -> None:
        """New records are in the log (the intake calls this after each fsync)."""
        self._wake.set()

    async def run(self, spool: LogReader) -> None:
        """Consume the log from the committed position until `stop`, committing as
        `step` does; each (re)start resumes from the store, so a failed commit is
        retried from a consistent state."""
        self._running = True
        try:
            await self._follow(spool)
        finally:
            self._running = False
            self.behind = False  # failed or stopped: nothing to yield to until it runs

    async def _follow(self, spool: LogReader) -> None:
        # Built and restored just now (`hub.wiring.build_events`): the store holds
        # nothing newer. Any later run (a restart after a failure) reads it again.
        if not self._restored:
            await asyncio.to_thread(self.restore)
        self._restored = False
        await asyncio.to_thread(self.manager.reload)
        position = spool.hold(self.NAME, self.position)
        self.position = position
        self._lag.start(spool, position)
        self.behind = True
        position, replayed = await self._replay(spool, position)
        if replayed:  # save the state reached, so another restart need not re-decide it
            await asyncio.to_thread(self.commit, (), position, state=True)
            spool.release(self.NAME, position)
        self._last_commit = time.monotonic()
        while True:
            batch = spool.read_records(position, self._chunk)
            self.behind = batch is not None and len(batch.records) >= self._chunk
            if batch is None:
                if self._stopping:
                    await asyncio.to_thread(self.commit, self.consume(()), position, state=True)
                    spool.release(self.NAME, position)
                    self._stopped.set()
                    return
                idle_due = self._due(()) and position != self.committed
                # A full disk waits for what only a restart would re-read: save the state.
                pressed = spool.needs_space and position != self.state_position
                if self._dirty or self._owed or self._health or idle_due or pressed:
                    await self._commit(spool, self.consume(()), position)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), TICK_S)
                continue
            detections = self.consume(batch.records)
            position = self.position = batch.end
            self._lag.consumed += len(batch.records)
            if self._due(detections):
                await self._commit(spool, detections, position)
            else:
                await asyncio.sleep(0)  # the intake's turn between chunks

    async def _replay(self, spool: LogReader, position: Cursor) -> tuple[Cursor, int]:
        """Decide again, without writing, from the state's position to the committed one
        (`restore`); returns where new decisions start and how many records it took."""
        until, self._replay_until = self._replay_until, None
        replayed = 0
        while until is not None and position < until:
            batch = spool.read_records(position, self._chunk, stop=until)
            if batch is None:
                log.warning("rules: the log ends at %s, before the committed %s", position, until)
                break
            self.consume(batch.records)  # these detections are in the store already
            position = self.position = batch.end
            self._lag.consumed += len(batch.records)
            replayed += len(batch.records)
            await asyncio.sleep(0)  # the intake's turn between chunks
        if replayed:
            log.info("rules: re-decided %d records up to the committed position", replayed)
        return position, replayed

    async def _commit(
        self, spool: LogReader, detections: list[Detection], position: Cursor
    ) -> None:
        # A full log (or disk) may be full of what only a restart would re-read: save
        # the state now so the release below frees it.
        state = spool.full or spool.needs_space
        await asyncio.to_thread(self.commit, detections, position, state=state)
        if self.state_position is not None:
            spool.release(self.NAME, self.state_position)  # a restart re-reads from there
        self._done(detections)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop: evaluate what the log holds, commit, and return (the run loop
        ends). Waits at most `timeout_s` (a loop that is not running commits nothing)."""
        self._stopping = True
        self._wake.set()
        if not self._running:
            return  # failed and waiting to restart, or never started: nothing to finish
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), timeout_s)

    def status(self) -> dict[str, int | float | bool | dict[str, int] | None]:
        """For `gridwatch status` and `hub_stats` (which leaves the dict out)."""
        p50, p99 = self.latency.percentiles(0.5, 0.99)
        lag_records = self._lag.records()
        behind = sorted(self.engine.late_behind.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "rules_evaluated": self.evaluated,
            "rules_detections": self.detections,
            "rules_commits": self.commits,
            "rules_record_errors": self.record_errors,
            "rules_late_readings": self.engine.late_readings,
            "rules_late_behind": dict(behind[:LATE_BEHIND_SHOWN]),
            "rules_lag_records": lag_records,
            "rules_lag_s": self._lag.seconds(self.watermark_ms) if lag_records else 0.0,
            "rules_watermark_ms": self.watermark_ms,
            "rules_event_latency_p50_ms": p50,
            "rules_event_latency_p99_ms": p99,
        }

    # ------------------------------------------------------------------ changes

    def reload_rules(self) -> ReloadResult:
        """Re-read `rule_paths` and run the new rules from now on, keeping the state of
        unchanged rules. Raises `RuleError` (naming file and line) when a file is
        invalid or unreadable; the running rules then stay as they were."""
        rules = load_rules(self.rule_paths)
        with self._lock:
            new = self.engine.rebuilt(rules, self.engine.directory)
            before = len(self.state.slots)
            owed = new.retire(self.state, self.engine, self.state.clock_ms)
            kept = len(self.state.slots)
            self.engine = new
            self._owed += owed
            self._dirty = True  # commit the pruned state soon
            self.reloads += 1
        self._wake.set()
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
            self.engine = self.engine.rebuilt([c.rule for c in self.engine.rules], directory)
        self.manager.workers = directory.workers()

    def reload_on_signal(self) -> None:
        """SIGHUP: reload, and on a bad file say why and keep running the old rules."""
        try:
            self.reload_rules()
        except RuleError as exc:
            log.error("rules not reloaded, the running rules stay: %s", exc)


def committed_watermark_ms(store: EventStore) -> int:
    """The event time of the rules' last committed state (0: none yet, or unreadable):
    what a hub about to start has decided up to, read without starting the rules."""
    data = store.get_snapshot(SNAPSHOT_NAME)
    if data is None:
        return 0
    try:
        state = _from_snapshot(data)[0]
    except (ValueError, KeyError, TypeError):
        return 0
    return state.clock_ms


SNAPSHOT_FORMAT: Final = 2
POSITION_NAME: Final = "rules-position"
"""The snapshot row holding the committed position (see `RulesService.restore`)."""


def _position_json(position: Cursor | None) -> bytes:
    raw = None if position is None else [position.segment, position.offset]
    return json.dumps({"position": raw}).encode()


def _position_of(data: bytes | None) -> Cursor | None:
    if data is None:
        return None
    try:
        raw = json.loads(data)["position"]
        return None if raw is None else Cursor(int(raw[0]), int(raw[1]))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("ignoring the rules' committed position: %s", exc)
        return None


def _to_snapshot(
    state: EngineState,
    unknown: UnknownSources,
    position: Cursor | None,
    clockless: bool,
    session_lost_ms: int,
    clocks: SiteClocks,
) -> bytes:
    engine = state.to_body()
    slots: dict[str, object] = engine.pop("slots")
    body = {
        "format": SNAPSHOT_FORMAT,
        "clockless": clockless,
        "session_lost_ms": session_lost_ms,
        "site_clocks": {"sites": clocks.sites, "tick_ms": clocks.tick_ms},
        "position": None if position is None else [position.segment, position.offset],
        "unknown": {
            scope: [t.counts, t.others, t.total, t.last_ns] for scope, t in unknown.tallies.items()
        },
    }
    # Under the service's lock (the event loop waits for it). At 10,000 devices the state
    # is ~9 MB of JSON: encoded in slices of slots and compressed as it goes, the commit
    # holds about 1 MB, where one `json.dumps(...).encode()` held three copies of 9 MB
    # (the encoder's chunks, the text, the bytes) at the detection worker's peak.
    # {"engine":{<engine's scalars>,"slots":{<slices>}},<the rest of the body>}
    packer = zlib.compressobj(1)
    out = [packer.compress(f'{{"engine":{{{_dumps(engine)[1:-1]},"slots":{{'.encode())]
    ids = sorted(slots)
    for at in range(0, len(ids), _SNAPSHOT_SLICE):
        part = _dumps({sid: slots[sid] for sid in ids[at : at + _SNAPSHOT_SLICE]})[1:-1]
        out.append(packer.compress(("," if at else "").encode() + part.encode()))
    out += [packer.compress(f"}}}},{_dumps(body)[1:]}".encode()), packer.flush()]
    return b"".join(out)


_SNAPSHOT_SLICE: Final = 2_000
"""Slots encoded at a time."""


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def snapshot_body(data: bytes) -> dict[str, Any]:
    """A rules snapshot's JSON: zlib-compressed, or plain as written before."""
    decoded: dict[str, Any] = json.loads(data if data[:1] == b"{" else zlib.decompress(data))
    return decoded


def _from_snapshot(
    data: bytes,
) -> tuple[EngineState, UnknownSources, Cursor | None, bool, int, SiteClocks]:
    body = snapshot_body(data)
    if body.get("format") != SNAPSHOT_FORMAT:  # an engine state of before the log
        return EngineState.from_body(body), UnknownSources(), None, True, 0, SiteClocks()
    state = EngineState.from_body(body["engine"])
    unknown = UnknownSources()
    for scope, (counts, others, total, last_ns) in body["unknown"].items():
        unknown.tallies[scope] = _Tally(dict(counts), int(others), int(total), int(last_ns))
    raw = body["position"]
    position = None if raw is None else Cursor(int(raw[0]), int(raw[1]))
    clockless = bool(body.get("clockless", True))
    raw_clocks = body.get("site_clocks") or {}
    clocks = SiteClocks(
        {str(k): int(v) for k, v in (raw_clocks.get("sites") or {}).items()},
        int(raw_clocks.get("tick_ms", 0)),
    )
    return state, unknown, position, clockless, int(body.get("session_lost_ms", 0)), clocks


def _describe(record: Record) -> str:
    if isinstance(record, Reading):
        return f"reading of {record.site}/{record.device}/{record.channel} at {record.ts_ns}"
    if isinstance(record, Rejected):
        return f"rejection ({record.reason.value}) on {record.topic[:200]!r}"
    if isinstance(record, SessionLost):
        return f"session loss of {record.hub} at {record.at_ms}"
    return f"tick at {record.at_ms}"


@dataclass(slots=True)
class SiteClocks:
    """Event time per site: what dates a record that carries none.

    A rejection, or a status without a device time, happened where it is in the log. It
    is dated by its own site's newest reading (or a newer tick: ticks move every site),
    not by the newest reading of any site: then the date does not depend on how sites
    are interleaved in the log, and a hub that reads only some sites (a cluster
    partition, docs/scaling.md) dates it as a hub reading them all does. Before its site
    has shown a reading, the watermark dates it."""

    sites: dict[str, int] = field(default_factory=dict)
    tick_ms: int = 0

    def saw(self, site: str, ts_ms: int) -> None:
        if ts_ms > self.sites.get(site, 0):
            self.sites[site] = ts_ms

    def ticked(self, at_ms: int) -> None:
        self.tick_ms = max(self.tick_ms, at_ms)

    def date(self, site: str | None, watermark_ms: int) -> int:
        own = self.sites.get(site, 0) if site is not None else 0
        if not own:
            return watermark_ms
        return max(own, self.tick_ms)


def _at(reading: Reading, at_ms: int) -> Reading:
    """The reading as if it had been stamped at `at_ms`."""
    return dataclasses.replace(reading, ts_ns=at_ms * 1_000_000)
