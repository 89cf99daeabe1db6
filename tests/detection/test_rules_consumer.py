"""The rules consumer is exactly-once over the hub's log: a real `Spool` holding a
scenario's records (readings, rejections, ticks), a `RulesService` reading it, a real
SQLite `EventStore`. Whatever happens between a consume and its commit (a crash, a
commit that fails, a replay of what was committed already), the events in the store end
up as an uninterrupted run leaves them: ids, rules, keys, raise and clear times, counts,
audit trails, and the outbox (no delivery queued twice)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detection.rules_service import POSITION_NAME, SNAPSHOT_NAME, RulesService
from events.manager import EventManager
from events.model import AuditRecord, Detection, SecurityEvent
from events.store import EventStore
from ingest.decode import Decoder
from ingest.records import Record
from ingest.spool import Cursor, Spool
from rules.directory import Directory
from rules.engine import Engine
from rules.schema import load_rules
from rules.site_directory import directory_from_sites
from sensors.base import DecodeContext, keyed_hash
from sensors.registry import KINDS
from simulators.scenarios import run_scenarios
from sites.model import load_site_ref
from tests.support.intake import wait_for
from tests.support.log import harness_records, log_records

START = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)
"""23:00 at the site: closed hours, which the forced-door scenario needs."""
SCENARIOS = (
    "door_forced",
    "door_held_open",
    "repeated_denials",
    "malformed_payloads",
    "device_offline",
    "device_tamper",
    "incident_storm",
    "fire",
)
SINKS = ("mqtt",)
CHUNK = 300


@pytest.fixture(scope="module")
def directory() -> Directory:
    return directory_from_sites([load_site_ref("yingyang")])


@pytest.fixture(scope="module")
def records() -> list[Record]:
    """An hour of the site with incidents, flood control included, as the log holds it."""
    messages, _ = run_scenarios(
        load_site_ref("yingyang"), SCENARIOS, start=START, duration_s=3_600, seed=5
    )
    decoder = Decoder(KINDS, DecodeContext(hash_identifier=lambda v: keyed_hash(b"k", v)))
    return list(harness_records(messages, decoder))


def open_spool(directory: Path) -> Spool:
    spool = Spool(directory, max_bytes=1 << 30, segment_bytes=64 << 10)
    spool.open()
    return spool


@pytest.fixture
def spool_dir(tmp_path: Path, records: list[Record]) -> Path:
    """The scenario in a spool of several segments, closed (each test opens it)."""
    directory = tmp_path / "spool"
    spool = open_spool(directory)
    try:
        log_records(spool, records, per_frame=50)
        assert len(list(directory.glob("*.seg"))) > 3
    finally:
        spool.close()
    return directory


@pytest.fixture
def spool(spool_dir: Path) -> Iterator[Spool]:
    s = open_spool(spool_dir)
    yield s
    s.close()


def new_service(store: EventStore, directory: Directory, chunk: int = CHUNK) -> RulesService:
    manager = EventManager(store, workers=directory.workers(), sinks=SINKS)
    return RulesService(Engine(load_rules(), directory), store, manager, chunk=chunk)


@dataclass(frozen=True)
class Dump:
    """Everything the consumer writes to the store, ids included."""

    events: list[SecurityEvent]
    trails: dict[str, list[AuditRecord]]
    outbox: list[tuple[str, str, AuditRecord]]
    state: bytes | None
    """The engine state snapshot (written on its own cadence)."""
    committed: bytes | None
    """The committed position (written with every commit)."""

    @property
    def decided(self) -> tuple[object, ...]:
        """What the events say, whenever the engine state was snapshotted."""
        return (self.events, self.trails, self.outbox)


def dump(store: EventStore) -> Dump:
    events = sorted(store.list_events(limit=1_000_000), key=lambda e: e.id)
    outbox = sorted(
        ((item.sink, item.event.id, item.audit) for item in store.outbox_due("mqtt", 2**62, 10**6)),
        key=lambda row: (row[1], row[2].at_ms, row[2].action.value, row[2].note),
    )
    return Dump(
        events,
        {e.id: store.audit_trail(e.id) for e in events},
        outbox,
        store.get_snapshot(SNAPSHOT_NAME),
        store.get_snapshot(POSITION_NAME),
    )


def consume_to_end(
    service: RulesService,
    spool: Spool,
    position: Cursor,
    *,
    chunk: int = CHUNK,
    commit_every: int = 3,
    state: bool = False,
    on_chunk: Callable[[int, list[Detection], Cursor], bool] | None = None,
) -> Cursor:
    """Consume the log from `position` as the hub's loop does (commit a chunk that caused
    detections at once, otherwise every `commit_every` chunks; the engine state with
    each commit when `state`, else on the service's own cadence) and commit at the end.
    `on_chunk(n, detections, end)` sees each chunk before its commit; False stops there,
    without committing (a crash); the position reached is returned either way."""
    n = 0
    owed: list[Detection] = []
    while (batch := spool.read_records(position, chunk)) is not None:
        detections = service.consume(batch.records)
        position = batch.end
        n += 1
        if on_chunk is not None and not on_chunk(n, detections, position):
            return position
        owed += detections
        if owed or n % commit_every == 0:
            service.commit(owed, position, state=state)
            owed = []
    service.commit(owed, position, state=True)
    return position


async def run_to_end(service: RulesService, spool: Spool) -> None:
    """The hub's loop (`run`: restore, re-decide up to the committed position, go on)
    until it has read the whole log, then a graceful `stop`."""
    task = asyncio.create_task(service.run(spool))
    end = spool.end_of_log()
    await wait_for(lambda: service.position == end or task.done(), 60)
    await service.stop(10)
    await task


def uninterrupted(tmp_path: Path, spool: Spool, directory: Directory) -> tuple[Dump, list[int]]:
    """The reference run, and the chunks (1-based) that caused detections."""
    with EventStore(f"sqlite:///{tmp_path / 'reference.db'}") as store:
        store.migrate()
        busy: list[int] = []

        def note(n: int, detections: list[Detection], _end: Cursor) -> bool:
            if detections:
                busy.append(n)
            return True

        consume_to_end(new_service(store, directory), spool, spool.start_of_log(), on_chunk=note)
        return dump(store), busy


def test_the_reference_run_covers_what_the_tests_need(
    tmp_path: Path, spool: Spool, directory: Directory
) -> None:
    reference, busy = uninterrupted(tmp_path, spool, directory)
    rules = {e.rule_id for e in reference.events}
    assert {"door_forced", "door_held_open", "repeated_denials", "flood_control"} <= rules
    assert any(e.returned_ms is not None for e in reference.events)  # clears
    assert any(e.count > 1 for e in reference.events)  # repeats
    assert any(e.parent_id is not None for e in reference.events)  # grouped by a flood
    assert len(busy) > 5 and reference.outbox


@pytest.mark.parametrize("state", [True, False], ids=["state-at-commit", "state-at-start"])
@pytest.mark.parametrize("where", [0.0, 0.5, 1.0], ids=["first", "middle", "last"])
def test_a_crash_between_consume_and_commit_changes_nothing(
    tmp_path: Path, spool_dir: Path, directory: Directory, where: float, state: bool
) -> None:
    """The consumer dies (no stop, no commit) after it evaluated chunks that caused
    detections; a new one (`run`, in chunks of another size, over the reopened log, so
    from disk) restores the committed state and position and goes on: the store ends as
    if it had never died. The engine state it restores is the committed position's
    (`state-at-commit`) or, never snapshotted, none (`state-at-start`: it re-decides
    the log up to the committed position without writing)."""
    spool = open_spool(spool_dir)
    try:
        reference, busy = uninterrupted(tmp_path, spool, directory)
    finally:
        spool.close()
    crash_at = busy[round(where * (len(busy) - 1))]
    url = f"sqlite:///{tmp_path / 'events.db'}"

    spool = open_spool(spool_dir)
    store = EventStore(url)
    store.migrate()
    first = new_service(store, directory)
    lost: list[Detection] = []

    def crash(n: int, detections: list[Detection], _end: Cursor) -> bool:
        if n >= crash_at:
            lost.extend(detections)
        return n < crash_at + 1  # a chunk with detections, one more, then gone

    reached = consume_to_end(first, spool, spool.start_of_log(), state=state, on_chunk=crash)
    committed = first.committed
    assert lost and committed is not None and committed < reached  # work was lost
    assert (first.state_position == committed) is state
    del first
    store.close()
    spool.close()

    spool = open_spool(spool_dir)  # a restarted hub: records from disk
    try:
        with EventStore(url) as store:
            assert dump(store).committed is not None
            second = new_service(store, directory, chunk=170)
            asyncio.run(run_to_end(second, spool))
            assert second.committed == spool.end_of_log()
            assert dump(store).decided == reference.decided
    finally:
        spool.close()


class Refused(Exception):
    """The database refused the commit."""


def test_a_failed_commit_leaves_the_store_unchanged_and_the_retry_is_exact(
    tmp_path: Path, spool: Spool, directory: Directory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit whose snapshot write fails writes none of its events either; the
    consumer restarts from the store (the hub's supervisor runs `run` again on the same
    service) and ends where an uninterrupted run ends."""
    reference, busy = uninterrupted(tmp_path, spool, directory)
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        service = new_service(store, directory)
        fail_at = busy[len(busy) // 2]
        before: list[Dump] = []

        def fail(n: int, detections: list[Detection], _end: Cursor) -> bool:
            if n == fail_at:
                before.append(dump(store))

                def refuse(name: str, data: bytes, at_ms: int) -> None:
                    raise Refused("disk I/O error")

                monkeypatch.setattr(store, "put_snapshot", refuse)
            return True

        with pytest.raises(Refused):
            consume_to_end(service, spool, spool.start_of_log(), on_chunk=fail)
        monkeypatch.undo()
        assert dump(store) == before[0]  # nothing of the failed commit
        assert before[0].committed is not None

        asyncio.run(run_to_end(service, spool))
        assert dump(store).decided == reference.decided


def test_a_replayed_chunk_writes_nothing_new(
    tmp_path: Path, spool: Spool, directory: Directory
) -> None:
    """Every chunk that caused detections, consumed and committed a second time from the
    state it was first consumed from, leaves the store (the engine state and the
    committed position included) as it was."""
    reference, busy = uninterrupted(tmp_path, spool, directory)
    replayed = 0
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        store.migrate()
        service = new_service(store, directory)
        position = spool.start_of_log()
        n = 0
        while (batch := spool.read_records(position, CHUNK)) is not None:
            n += 1
            before = store.get_snapshot(SNAPSHOT_NAME)
            service.commit(service.consume(batch.records), batch.end, state=True)
            if n in busy and before is not None:
                after = dump(store)
                again = new_service(store, directory)
                store.put_snapshot(SNAPSHOT_NAME, before, 0)  # the state it started from
                again.restore()
                assert again.position == position and again.committed == batch.end
                again.commit(again.consume(batch.records), batch.end, state=True)
                assert dump(store) == after, f"chunk {n}"
                replayed += 1
            position = batch.end
        assert replayed >= len(busy) - 1
        assert dump(store).decided == reference.decided


def stopped_halfway(
    tmp_path: Path, spool_dir: Path, records: list[Record], directory: Directory
) -> tuple[Dump, Spool, str]:
    """The reference run; then a log of half the records consumed by the hub's loop up
    to a graceful stop, and the other half written after it. Returns the reference, that
    log (open: the caller closes it) and the store's URL."""
    spool = open_spool(spool_dir)
    try:
        reference, _ = uninterrupted(tmp_path, spool, directory)
    finally:
        spool.close()
    spool = open_spool(tmp_path / "half")
    url = f"sqlite:///{tmp_path / 'events.db'}"
    log_records(spool, records[: len(records) // 2], per_frame=50)
    with EventStore(url) as store:
        store.migrate()
        asyncio.run(run_to_end(new_service(store, directory), spool))
    log_records(spool, records[len(records) // 2 :], per_frame=50)
    return reference, spool, url


def test_run_resumes_where_a_graceful_stop_committed(
    tmp_path: Path, spool_dir: Path, records: list[Record], directory: Directory
) -> None:
    """The hub's own loop (`run`, `stop`): half the log, a stop, the other half written
    meanwhile, a new consumer on the same store: the events of one uninterrupted run."""
    reference, spool, url = stopped_halfway(tmp_path, spool_dir, records, directory)
    try:
        with EventStore(url) as store:
            service = new_service(store, directory)
            asyncio.run(run_to_end(service, spool))
            assert service.committed == spool.end_of_log()
            assert dump(store).decided == reference.decided
    finally:
        spool.close()


def test_a_restored_consumer_reads_the_store_once_and_a_restart_reads_it_again(
    tmp_path: Path, spool_dir: Path, records: list[Record], directory: Directory
) -> None:
    """The hub builds the consumer and restores it before its first run (the log is held
    from that position): the run starts from that state, not from a second read of a
    snapshot that can be megabytes. A run after a failure restores from the store."""
    reference, spool, url = stopped_halfway(tmp_path, spool_dir, records, directory)
    try:
        with EventStore(url) as store:
            service = new_service(store, directory)
            service.restore()  # as `hub.wiring.build_events` does
            reads: list[int] = []
            restore = service.restore

            def counted() -> None:
                reads.append(1)
                restore()

            service.restore = counted  # type: ignore[method-assign]
            asyncio.run(run_to_end(service, spool))
            assert reads == []
            assert dump(store).decided == reference.decided
            # A failed run's successor starts from the store, not from memory.
            service.consume(records[:10])  # state the store does not have
            asyncio.run(run_to_end(service, spool))
            assert reads == [1]
            assert dump(store).decided == reference.decided
    finally:
        spool.close()
