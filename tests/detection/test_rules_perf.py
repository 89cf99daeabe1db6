"""Rules at hub speed without a change of meaning: the engine's index (a reading visits
only rules that can care about it), its timer heap, and a slow rules consumer that never
blocks the intake before the log is full and loses nothing (a real Intake, spool, spool
writer and SQLite store)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from detection.rules_service import RulesService
from evaluation.bench_costs import bench_messages, bench_readings
from evaluation.ingest_bench import _templates
from events.manager import EventManager
from events.model import Detection
from events.store import EventFilter, EventStore
from ingest.intake import Intake
from ingest.spool import Cursor
from ingest.writer import SpoolWriter
from rules.conditions import EVENT_FIELD, Obs
from rules.engine import Engine, EngineState, _Compiled
from rules.schema import load_rules
from rules.site_directory import directory_from_sites
from sensors.base import Reading
from sites.model import load_site_ref
from tests.support.intake import make_rig, running, wait_for
from tests.support.rules import event, reading

TOPIC = "gw/v1/s1/smoke/sd-1/telemetry"
FLOOD = """\
rules:
  - id: flood
    title: Flood
    severity: low
    condition: {type: count, when: {channel: telemetry}, at_least: 25, within: 1h}
    message: "{count} readings"
"""


class FullScan(Engine):
    """The engine as it was before the index: every rule in scope sees every reading
    (the index also stands for the scope's `kinds` test)."""

    def candidates(self, reading: Reading, event: object) -> tuple[_Compiled, ...]:
        return tuple(c for c in self.rules if c.in_scope(Obs(reading, 0, None)) or c.scoped)


def _site_engine(cls: type[Engine] = Engine) -> Engine:
    return cls(load_rules(), directory_from_sites([load_site_ref("yingyang")]))


@pytest.fixture(scope="module")
def stream() -> list[Reading]:
    """The benchmark's readings (4,000), device time spread 1 ms apart so timers fire."""
    readings = bench_readings(bench_messages(_templates(4_000, 200, seed=2)))
    t0 = readings[0].ts_ns
    return [replace(r, ts_ns=t0 + i * 1_000_000) for i, r in enumerate(readings)]


def _run(engine: Engine, readings: Sequence[Reading]) -> tuple[list[Detection], EngineState]:
    state = EngineState()
    out: list[Detection] = []
    for r in readings:
        out += engine.evaluate(r, state, r.ts_ns // 1_000_000)
    out += engine.tick(state, readings[-1].ts_ns // 1_000_000 + 3_600_000)
    return out, state


def test_indexed_dispatch_gives_the_same_events_as_a_full_scan(stream: list[Reading]) -> None:
    indexed, state = _run(_site_engine(), stream)
    full, full_state = _run(_site_engine(FullScan), stream)
    assert len(indexed) > 50  # the stream does raise and clear events
    assert {d.rule_id for d in indexed} >= {"door_held_open", "tailgating"}
    assert indexed == full
    assert state.slots == full_state.slots


def test_a_reading_visits_only_rules_that_can_care(stream: list[Reading]) -> None:
    engine = _site_engine()
    state = EngineState()
    skipped = 0
    for r in stream[:1500]:
        obs = Obs(r, r.ts_ns // 1_000_000, engine.directory.device(r.device))
        visited = engine.candidates(r, obs.get(EVENT_FIELD))
        for c in engine.rules:
            if c in visited:
                continue
            skipped += 1
            clears = c.clear_when is not None and c.clears(obs)
            assert not c.in_scope(obs) or not (clears or c.logic.relevant(obs)), c.rule.id
        engine.evaluate(r, state, r.ts_ns // 1_000_000)
    assert skipped > 1500 * 10  # most of the 25 rules are never visited
    door_opened = event("access", "a1", 0, "door_opened")
    ids = [c.rule.id for c in engine.candidates(door_opened, "door_opened")]
    assert "door_held_open" in ids and "tailgating" in ids
    assert not {"door_forced", "confirmed_fire", "repeated_denials", "low_battery"} & set(ids)
    smoke = reading("smoke", "s1", 0, {"temperature": 20.0})
    ids = [c.rule.id for c in engine.candidates(smoke, None)]
    assert "stuck_sensor" in ids and "door_held_open" not in ids


def test_unnamed_kinds_and_events_share_one_index_entry() -> None:
    engine = _site_engine()
    for i in range(50):  # a flood of made-up names must not grow the index
        engine.candidates(event(f"kind{i}", "x", 0, f"ev{i}"), f"ev{i}")
    assert len(engine._candidates) == 1


def test_timer_heap_stays_bounded_by_the_slots(stream: list[Reading]) -> None:
    engine = _site_engine()
    state = EngineState()
    for r in stream:
        engine.evaluate(r, state, r.ts_ns // 1_000_000)
        assert len(state.timers) <= 2 * len(state.slots) + 1024
    due = sorted((s["due"], sid) for sid, s in state.slots.items() if s.get("due") is not None)
    live = sorted(t for t in state.timers if state.slots.get(t[1], {}).get("due") == t[0])
    assert sorted(set(live)) == due  # every pending timer is in the heap


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as s:
        s.migrate()
        yield s


class StoringInflux:
    """InfluxDB that stores every write at once."""

    def __init__(self) -> None:
        self.lines = 0

    async def write(self, payload: bytes) -> None:
        self.lines += payload.count(b"\n")

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class SlowRules:
    """A rules consumer over the rig's log whose commits wait for `gate` (a slow event
    store: commits run on a worker thread, so the event loop goes on)."""

    def __init__(
        self,
        store: EventStore,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        snapshot_interval_s: float = 10.0,
    ) -> None:
        rules = tmp_path / "rules.yaml"
        rules.write_text(FLOOD)
        self.service = RulesService(
            Engine(load_rules([rules])),
            store,
            EventManager(store, workers={}),
            chunk=50,
            snapshot_interval_s=snapshot_interval_s,
        )
        self.gate = threading.Event()
        self.waiting = threading.Event()
        commit = self.service.commit

        def slow_commit(
            detections: Sequence[Detection], position: Cursor | None, *, state: bool = False
        ) -> None:
            self.waiting.set()
            assert self.gate.wait(10)
            commit(detections, position, state=state)

        monkeypatch.setattr(self.service, "commit", slow_commit)


async def publish(intake: Intake, first: int, last: int) -> None:
    for pid in range(first, last + 1):
        intake.on_publish(TOPIC, b'{"temperature": 21.5}', 1, False, pid)
        if pid % 20 == 0:
            await asyncio.sleep(0.001)  # batches fill while earlier ones are persisted


def test_a_slow_rules_consumer_never_blocks_the_intake_and_loses_nothing(
    tmp_path: Path, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules read the log at their own pace: while their commits hang, the intake
    persists and acks everything and InfluxDB gets it; the log keeps what the rules have
    not committed, and they evaluate all of it, once, when they catch up."""
    rig = make_rig(tmp_path, max_bytes=64 << 20)
    slow = SlowRules(store, tmp_path, monkeypatch)
    service = slow.service
    intake = rig.intake(on_persisted=service.wake, batch_max=20)
    sink = StoringInflux()
    writer = SpoolWriter(
        rig.spool, sink, rig.dead, rig.stats, flush_interval_s=0.01, idle_s=0.01,
        on_commit=intake.space_freed,
    )  # fmt: skip

    async def scenario() -> None:
        async with running(intake):
            tasks = [asyncio.create_task(writer.run()), asyncio.create_task(service.run(rig.spool))]
            try:
                await publish(intake, 1, 300)
                # The writer commits its cursor just after the write returns.
                await wait_for(
                    lambda: (
                        len(rig.acks.acked) == 300
                        and sink.lines == 300
                        and rig.spool.pending_bytes == 0
                    )
                )
                await wait_for(slow.waiting.is_set)
                assert service.committed is None  # the rules hang in their first commit
                assert rig.reading == [] and rig.stats.backpressure_waits == 0
                # InfluxDB has it all; the log keeps it for the rules.
                assert rig.spool.pending_bytes == 0 and rig.spool.retained_bytes > 0
                assert rig.spool.records_after(rig.spool.start_of_log()) == 300
                slow.gate.set()
                end = rig.spool.end_of_log()
                await wait_for(lambda: service.committed == end)
                assert service.evaluated == 300
                await service.stop(5)  # commits the engine state: the log may drop it all
                assert rig.spool.retained_bytes == 0
            finally:
                slow.gate.set()
                await service.stop(5)
                writer_task, rules_task = tasks
                writer_task.cancel()
                await asyncio.gather(writer_task, return_exceptions=True)
                await asyncio.wait_for(rules_task, 5)  # stopped, not failed

    try:
        asyncio.run(scenario())
    finally:
        rig.spool.close()
        rig.dead.close()
    (flood,) = store.list_events(EventFilter())
    assert flood.rule_id == "flood"


def test_a_log_full_of_what_the_rules_hold_stops_acking_until_they_catch_up(
    tmp_path: Path, store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a full log stops the intake (acks withheld: the broker keeps the rest); once
    the rules commit and release it, the intake acks again, and nothing is lost."""
    rig = make_rig(tmp_path, max_bytes=32 << 10)
    # The engine state with every commit, so each one releases the log at once.
    slow = SlowRules(store, tmp_path, monkeypatch, snapshot_interval_s=0.0)
    service = slow.service
    intake = rig.intake(on_persisted=service.wake, batch_max=20)
    sink = StoringInflux()
    writer = SpoolWriter(
        rig.spool, sink, rig.dead, rig.stats, flush_interval_s=0.01, idle_s=0.01,
        on_commit=intake.space_freed,
    )  # fmt: skip

    async def scenario() -> None:
        async with running(intake):
            tasks = [asyncio.create_task(writer.run()), asyncio.create_task(service.run(rig.spool))]
            try:
                published = 0
                while not rig.stats.backpressure_waits:
                    assert published < 5_000, "the log never filled"
                    await publish(intake, published + 1, published + 20)
                    published += 20
                    await asyncio.sleep(0.005)
                await wait_for(lambda: sink.lines == rig.spool.synced_lines)
                acked = len(rig.acks.acked)
                assert acked < published  # the rest waits (at the broker, unacked)
                # Full of what the rules hold, not of what InfluxDB lacks.
                assert rig.spool.pending_bytes == 0 and rig.spool.full
                slow.gate.set()
                await wait_for(lambda: len(rig.acks.acked) == published, 3)
                await wait_for(lambda: service.evaluated == published)
            finally:
                slow.gate.set()
                await service.stop(5)
                writer_task, rules_task = tasks
                writer_task.cancel()
                await asyncio.gather(writer_task, return_exceptions=True)
                await asyncio.wait_for(rules_task, 5)  # stopped, not failed

    try:
        asyncio.run(scenario())
    finally:
        rig.spool.close()
        rig.dead.close()
