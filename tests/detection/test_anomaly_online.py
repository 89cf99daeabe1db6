"""The anomaly consumer with online baselines over a real event store (SQLite and
PostgreSQL): the learned state is committed with the position in one transaction, only
the devices that changed are written, and a restart (clean, or after a batch scored but
never committed, as a SIGKILL leaves it) gives the same events as an uninterrupted run."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from anomaly.baselines import OnlineParams, OnlineScorer
from detection.anomaly_service import STATE_NAME, AnomalyService
from events.manager import EventManager
from events.model import SecurityEvent
from events.store import EventFilter, EventStore
from ingest.spool import Spool
from sensors.base import Reading
from tests.support.anomaly_fixtures import MS_PER_MIN, smoke_reading
from tests.support.log import log_records

T0 = 1_772_409_600_000  # 2026-03-02 00:00 UTC
PARAMS = OnlineParams(warmup_readings=20, warmup_ms=120 * MS_PER_MIN)
DEVICES = ("sm-a", "sm-b", "sm-c")
BATCH = 25


def _stream() -> list[Reading]:
    """Three detectors a minute for 8 h; sm-a overheats at 04:00, sm-b freezes at 05:00
    for 40 min (with a 2 h warm-up the baselines also flag a few of the noise's extremes)."""
    rng = random.Random(11)
    out: list[Reading] = []
    last: dict[str, Reading] = {}
    for minute in range(480):
        for d, device in enumerate(DEVICES):
            ts = T0 + minute * MS_PER_MIN + d
            if device == "sm-b" and 300 <= minute < 340:
                held = last[device]
                reading = dataclasses.replace(held, ts_ns=ts * 1_000_000, seq=minute + 1)
            else:
                temperature = round(21.0 + d + rng.gauss(0, 0.1), 2)
                if device == "sm-a" and minute in (240, 241):
                    temperature = 64.0
                reading = smoke_reading(
                    device, ts, minute + 1, temperature, round(420.0 + rng.gauss(0, 8), 1)
                )
            last[device] = reading
            out.append(reading)
    return out


STREAM = _stream()


def _service(store: EventStore) -> AnomalyService:
    service = AnomalyService(OnlineScorer(PARAMS), EventManager(store, workers={}))
    service.restore()
    return service


def _run(service: AnomalyService, readings: Sequence[Reading]) -> None:
    for i in range(0, len(readings), BATCH):
        service.step(readings[i : i + BATCH])


def _events(store: EventStore) -> list[tuple[object, ...]]:
    def row(e: SecurityEvent) -> tuple[object, ...]:
        return (
            e.id,
            e.rule_id,
            e.key,
            e.raised_ms,
            e.last_ms,
            e.count,
            e.closed,
            e.active,
            e.title,
            e.message,
            sorted(e.values.items()),
        )

    return sorted(row(e) for e in store.list_events(EventFilter(), limit=1000))


@pytest.fixture
def store(event_db_url: str) -> Iterator[EventStore]:
    with EventStore(event_db_url) as store:
        store.migrate()
        yield store


def test_consumer_state_rows(store: EventStore) -> None:
    store.put_consumer_state("c", {"a": b"1", "b": b"\x00\xff"}, 5)
    store.put_consumer_state("c", {"a": b"3"}, 6)  # only the changed row
    store.put_consumer_state("other", {"a": b"x"}, 6)
    store.put_consumer_state("c", {}, 7)
    assert store.get_consumer_state("c") == {"a": b"3", "b": b"\x00\xff"}
    with pytest.raises(RuntimeError), store.batch():  # rolled back with its batch
        store.put_consumer_state("c", {"a": b"lost", "z": b"lost"}, 8)
        raise RuntimeError("crash before the commit")
    assert store.get_consumer_state("c") == {"a": b"3", "b": b"\x00\xff"}
    assert store.delete_consumer_state("c") == 2
    assert store.get_consumer_state("c") == {} and store.get_consumer_state("other") == {"a": b"x"}


def test_state_is_committed_with_the_position(store: EventStore) -> None:
    service = _service(store)
    _run(service, STREAM[:300])
    rows = store.get_consumer_state(STATE_NAME)
    assert {k for k in rows if k.count("/") == 1} == {f"smoke/{d}" for d in DEVICES}
    assert "smoke/sm-a/temperature" in rows  # visited cells, saved once learned
    # Each batch writes the devices it saw (all three here), cells only when they change.
    per_batch = service.counters.state_rows / service.counters.batches
    assert 3 <= per_batch < 3 + 3 * 4
    restored = OnlineScorer(PARAMS)
    restored.load_state(rows)
    assert restored.state_changes() == {}  # nothing changed since it was committed


def test_a_restart_gives_the_same_events(
    store: EventStore, tmp_path_factory: pytest.TempPathFactory
) -> None:
    reference_path = tmp_path_factory.mktemp("reference") / "events.db"
    with EventStore(f"sqlite:///{reference_path}") as reference:
        reference.migrate()
        _run(_service(reference), STREAM)
        expected = _events(reference)
    kinds = [row[9] for row in expected]
    assert any(str(m).startswith("Air temperature 64.00 °C") for m in kinds), kinds
    assert any(str(m).startswith("Readings frozen") for m in kinds), kinds

    cuts = [0, 150, 260, 320, 400, len(STREAM)]  # readings, in multiples of the batch
    cuts = [c - c % BATCH for c in cuts[:-1]] + [len(STREAM)]
    for first, last in itertools.pairwise(cuts):
        service = _service(store)  # a fresh process: state and position from the store
        middle = first + (last - first) // 2
        middle -= middle % BATCH
        _run(service, STREAM[first:middle])
        # A SIGKILL after a batch was scored but before its commit: that learning is
        # lost with the process; the next one scores the batch again from the store.
        service.scorer.score_batch(STREAM[middle : middle + BATCH])
        service = _service(store)
        _run(service, STREAM[middle:last])
    assert _events(store) == expected


@pytest.mark.parametrize("own_lag_bound", [10_000, 100])
def test_scoring_waits_while_the_rules_are_behind(
    store: EventStore, tmp_path: Path, own_lag_bound: int
) -> None:
    """Alarms first: while the rules consumer has more of the log waiting, the anomaly
    consumer does not score (they share the detection worker's CPU), unless it is itself
    `yield_lag_records` behind; once the rules catch up it scores everything, deciding
    what it would have decided without waiting."""
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30, segment_bytes=64 << 10)
    spool.open()
    log_records(spool, STREAM, per_frame=60)
    service = AnomalyService(
        OnlineScorer(PARAMS), EventManager(store, workers={}), yield_lag_records=own_lag_bound
    )
    behind = [True]

    async def scenario() -> tuple[int, float]:
        task = asyncio.create_task(service.run(spool, rules_behind=lambda: behind[0]))
        await asyncio.sleep(0.6)
        while_behind = service.counters.readings, service.counters.yielded_s
        behind[0] = False
        for _ in range(400):
            if service.counters.readings == len(STREAM):
                break
            await asyncio.sleep(0.05)
        await service.stop()
        await task
        return while_behind

    try:
        scored, waited = asyncio.run(scenario())
    finally:
        spool.close()
    if own_lag_bound > len(STREAM):  # within its bound: it waited
        assert scored == 0 and waited >= 0.5
    else:  # too far behind itself to wait: it scored on (and waits again once within)
        assert scored == len(STREAM)
    assert service.counters.readings == len(STREAM)
    with EventStore(f"sqlite:///{tmp_path / 'uninterrupted.db'}") as reference:
        reference.migrate()
        _run(_service(reference), STREAM)
        assert len(_events(reference)) >= 2
        assert _events(store) == _events(reference)
