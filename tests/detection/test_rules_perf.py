"""Rules at hub speed without a change of meaning: the engine's index (a reading visits
only rules that can care about it), its timer heap, and the bounded rules queue that
pauses the intake instead of growing or dropping (a real Intake, spool and SQLite store)."""

from __future__ import annotations

import asyncio
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
from rules.conditions import EVENT_FIELD, Obs
from rules.engine import Engine, EngineState, _Compiled
from rules.schema import load_rules
from rules.site_directory import directory_from_sites
from sensors.base import Reading
from sites.model import load_site_ref
from tests.support.intake import Rig, make_rig, running, wait_for
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
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.spool.close()
    r.dead.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as s:
        s.migrate()
        yield s


def test_a_full_rules_queue_pauses_the_intake_and_loses_nothing(
    rig: Rig, store: EventStore, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(FLOOD)
    service = RulesService(
        Engine(load_rules([rules])),
        store,
        EventManager(store, workers={}),
        max_queue=10,
    )
    intake = rig.intake()
    intake._observe = service.observe
    service.pause_intake = intake.consumer_full

    async def scenario() -> None:
        async with running(intake):
            for pid in range(1, 31):
                intake.on_publish(TOPIC, b'{"temperature": 21.5}', 1, False, pid)
            # Full at 10: reading stops; what was already on its way in is still queued.
            assert rig.reading == [False]
            assert service.queued == 30 and service.queue_full
            assert service.queue_waits == 1
            await wait_for(lambda: len(rig.acks.acked) == 30)  # persisting goes on
            assert rig.reading == [False]  # still full: the intake's own resume waits
            task = asyncio.create_task(service.run())
            try:
                await wait_for(lambda: service.queued == 0 and service.evaluated == 30)
                assert rig.reading == [False, True]  # drained: reading again
                await wait_for(lambda: len(store.list_events(EventFilter())) == 1)
            finally:
                task.cancel()
        assert service.status()["rules_queue_waits"] == 1
        assert not service.status()["rules_queue_full"]

    asyncio.run(scenario())
    (flood,) = store.list_events(EventFilter())
    assert flood.rule_id == "flood"


def test_high_water_resume_waits_for_the_rules_queue(rig: Rig) -> None:
    intake = rig.intake(high_water=4, batch_max=2)

    async def scenario() -> None:
        async with running(intake):
            intake.consumer_full(True)
            for pid in range(1, 5):
                intake.on_publish(TOPIC, b'{"temperature": 21.5}', 1, False, pid)
            await wait_for(lambda: len(rig.acks.acked) == 4)
            assert rig.reading == [False, False]  # spool drained, rules queue still full
            intake.consumer_full(False)
            assert rig.reading[-1] is True

    asyncio.run(scenario())
