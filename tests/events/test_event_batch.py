"""Units of work: `EventStore.batch()` and `EventManager.batch()` on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from events.manager import FLOOD_RULE, EventManager
from events.model import Action, AuditRecord, Detection, SecurityEvent, new_event, transition
from events.store import EventFilter, EventStore, StaleEvent

T0 = 1_740_000_000_000
SINKS = ["influx", "mqtt"]
Change = tuple[SecurityEvent, AuditRecord]


class Boom(Exception):
    """The failure a test raises inside a batch."""


def detection(key: str, *, at_ms: int = T0, site: str = "s1", raised: bool = True) -> Detection:
    return Detection(
        rule_id="smoke",
        key=key,
        raised=raised,
        at_ms=at_ms,
        site=site,
        title=f"Smoke {key}",
        message="smoke over threshold",
        incident="fire",
    )


def raised(event_id: str, key: str | None = None, *, at_ms: int = T0) -> Change:
    return new_event(event_id, detection(key or event_id, at_ms=at_ms), at_ms)


@pytest.fixture
def store(event_db_url: str) -> Iterator[EventStore]:
    with EventStore(event_db_url) as s:
        s.migrate()
        yield s


@pytest.fixture
def observer(event_db_url: str, store: EventStore) -> Iterator[EventStore]:
    """Another store on the same database: sees only what was committed."""
    with EventStore(event_db_url) as s:
        yield s


def on_thread(work: Callable[[], Any]) -> Any:
    """Run `work` on another thread and return its result (or raise its error)."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as err:  # handed to the test's thread below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def committed(store: EventStore) -> tuple[int, int, dict[str, int], bytes | None]:
    """Events, audit records of e1 and e2, outbox and the snapshot, as committed."""
    audit = len(store.audit_trail("e1")) + len(store.audit_trail("e2"))
    return store.count_events(), audit, store.outbox_pending(), store.get_snapshot("rules")


# ---------------------------------------------------------------------- store


def test_a_batch_commits_everything_when_it_ends(store: EventStore, observer: EventStore) -> None:
    with store.batch():
        assert store.in_batch
        store.save([raised("e1")], sinks=SINKS)
        event = store.get("e1")
        assert event is not None  # the batch sees its own writes
        store.save([transition(event, Action.ACKNOWLEDGE, actor="op", at_ms=T0 + 1)], sinks=SINKS)
        store.save([raised("e2")], sinks=SINKS)
        store.put_snapshot("rules", b"position 42", T0)
        assert [e.id for e in store.list_events()] == ["e2", "e1"]
        assert committed(observer) == (0, 0, {}, None)  # nothing visible outside yet
    assert not store.in_batch
    assert committed(observer) == (2, 3, {"influx": 3, "mqtt": 3}, b"position 42")


def test_a_batch_that_raises_leaves_nothing(store: EventStore, observer: EventStore) -> None:
    store.put_snapshot("rules", b"position 1", T0)
    with pytest.raises(Boom), store.batch():
        store.save([raised("e1")], sinks=SINKS)
        event = store.get("e1")
        assert event is not None
        store.save([transition(event, Action.ACKNOWLEDGE, actor="op", at_ms=T0 + 1)], sinks=SINKS)
        store.save([raised("e2")], sinks=SINKS)
        store.put_snapshot("rules", b"position 42", T0 + 1)
        raise Boom
    assert not store.in_batch
    for view in (store, observer):
        assert committed(view) == (0, 0, {}, b"position 1")
    # The store is usable after the rollback.
    store.save([raised("e1")])
    assert observer.get("e1") is not None


def test_a_failed_write_in_a_batch_undoes_only_itself(
    store: EventStore, observer: EventStore
) -> None:
    with store.batch():
        store.save([raised("e1")], sinks=SINKS)
        # e3 inserts fine, then the second raise of e1 conflicts: the whole save goes,
        # e3 included, and the batch goes on (on PostgreSQL the failed statement would
        # abort the transaction without the savepoint around the save).
        with pytest.raises(StaleEvent):
            store.save([raised("e3"), raised("e1")], sinks=SINKS)
        assert store.get("e3") is None
        store.save([raised("e2")], sinks=SINKS)
        store.put_snapshot("rules", b"position 42", T0)
    assert {e.id for e in observer.list_events()} == {"e1", "e2"}
    assert observer.audit_trail("e3") == []
    assert committed(observer) == (2, 2, {"influx": 2, "mqtt": 2}, b"position 42")


def test_another_threads_transactions_are_not_part_of_the_batch(
    store: EventStore, observer: EventStore
) -> None:
    started = threading.Event()
    errors: list[BaseException] = []

    def other_writer() -> None:
        started.set()
        try:  # on SQLite this waits for the batch's write lock: after the batch
            store.save([raised("other")], sinks=SINKS)
        except BaseException as err:  # reported below
            errors.append(err)

    writer = threading.Thread(target=other_writer)
    with pytest.raises(Boom), store.batch():
        store.save([raised("e1")], sinks=SINKS)
        # The same store on another thread: its own transaction, not the batch's.
        assert on_thread(lambda: store.in_batch) is False
        assert on_thread(lambda: store.get("e1")) is None
        writer.start()
        assert started.wait(5)
        time.sleep(0.2)  # let the writer reach the database
        raise Boom
    writer.join()
    assert errors == []
    assert [e.id for e in observer.list_events()] == ["other"]
    assert observer.outbox_pending() == {"influx": 1, "mqtt": 1}


def test_a_nested_batch_joins_the_outer_one(store: EventStore, observer: EventStore) -> None:
    with store.batch():
        store.save([raised("e1")])
        with store.batch():
            store.save([raised("e2")])
        assert observer.count_events() == 0  # the inner batch did not commit alone
        # An inner batch that raises takes back its own part only.
        with pytest.raises(Boom), store.batch():
            store.save([raised("e3")])
            raise Boom
        assert store.get("e3") is None
        assert store.in_batch
    assert {e.id for e in observer.list_events()} == {"e1", "e2"}
    # When the outer one raises, the inner one's work goes too.
    with pytest.raises(Boom), store.batch():
        with store.batch():
            store.save([raised("e4")])
        raise Boom
    assert observer.get("e4") is None


def test_outbox_updates_run_in_the_batch(store: EventStore, observer: EventStore) -> None:
    store.save([raised("e1"), raised("e2")], sinks=["hook"])
    first, second = store.outbox_due("hook", T0)
    with pytest.raises(Boom), store.batch():
        store.outbox_done([first.id])
        store.outbox_retry(second.id, error="503", next_attempt_ms=T0 + 1)
        assert [i.id for i in store.outbox_due("hook", T0)] == []
        raise Boom
    assert [(i.id, i.attempts) for i in observer.outbox_due("hook", T0)] == [
        (first.id, 0),
        (second.id, 0),
    ]


# ---------------------------------------------------------------------- manager


def manager(store: EventStore, **kw: Any) -> EventManager:
    kw = {"flood_limit": 3, "flood_window_ms": 60_000} | kw
    return EventManager(store, workers={}, sinks=SINKS, **kw)


def test_a_manager_batch_commits_events_with_the_snapshot(
    store: EventStore, observer: EventStore
) -> None:
    events = manager(store)
    with events.batch():
        events.handle(detection("k1"), T0)
        events.handle(detection("k2", at_ms=T0 + 1), T0 + 1)
        events.handle(detection("k1", at_ms=T0 + 2, raised=False), T0 + 2)
        store.put_snapshot("rules", b"position 3", T0 + 2)
        assert observer.count_events() == 0
    assert observer.count_events() == 2
    assert observer.get_snapshot("rules") == b"position 3"
    assert observer.outbox_pending() == {"influx": 3, "mqtt": 3}


def test_a_stale_event_retry_in_a_batch_keeps_the_rest(
    store: EventStore, observer: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = manager(store)
    lost: list[str] = []
    with events.batch():
        first = events.handle(detection("k1"), T0)
        events.handle(detection("k2"), T0)
        store.put_snapshot("rules", b"position 1", T0)
        # As if another writer had opened k1 behind the manager's copy of the open events.
        condition = (first[0].rule_id, first[0].key)
        del events._open.by_condition[condition]
        del events._open.by_id[first[0].id]
        lost.append("k1")
        # Opening k1 again conflicts with the open event (StaleEvent); the retry reads
        # again and repeats it instead, inside the same transaction.
        again = events.handle(detection("k1", at_ms=T0 + 5), T0 + 5)
        store.put_snapshot("rules", b"position 2", T0 + 5)
    assert lost == ["k1"]
    assert [(e.id, e.count) for e in again] == [(first[0].id, 2)]
    assert observer.count_events() == 2
    assert [r.action for r in observer.audit_trail(first[0].id)] == [Action.RAISE, Action.REPEAT]
    assert observer.get_snapshot("rules") == b"position 2"


def test_a_failed_manager_batch_rolls_back_and_rebuilds_the_flood_window(
    store: EventStore, observer: EventStore
) -> None:
    events = manager(store)
    with pytest.raises(Boom), events.batch():
        for i in range(3):
            events.handle(detection(f"k{i}", at_ms=T0 + i), T0 + i)
        raise Boom
    assert observer.count_events() == 0
    # Had the window kept the three rolled-back raises, this one would open a flood.
    events.handle(detection("k9", at_ms=T0 + 10), T0 + 10)
    assert observer.count_events(EventFilter(rule_id=FLOOD_RULE)) == 0
    assert observer.count_events() == 1


def test_reload_rebuilds_the_flood_window_after_a_store_batch_rolled_back(
    store: EventStore, observer: EventStore
) -> None:
    events = manager(store)
    with pytest.raises(Boom), store.batch():
        for i in range(3):
            events.handle(detection(f"k{i}", at_ms=T0 + i), T0 + i)
        raise Boom
    events.reload()
    events.handle(detection("k9", at_ms=T0 + 10), T0 + 10)
    assert observer.count_events(EventFilter(rule_id=FLOOD_RULE)) == 0
    # And it counts what the store has: raises saved by another manager (a restart).
    other = manager(store)
    for i in range(2):
        other.handle(detection(f"o{i}", at_ms=T0 + 20 + i), T0 + 20 + i)
    events.reload()
    events.handle(detection("k10", at_ms=T0 + 30), T0 + 30)
    parent = observer.open_event(FLOOD_RULE, "s1")
    assert parent is not None
    assert len(observer.children(parent.id)) == 4


def test_other_threads_wait_for_a_manager_batch_instead_of_deadlocking(
    store: EventStore, observer: EventStore
) -> None:
    """An API thread acting on an event the batch changed waits for the manager's lock,
    not for the batch's row lock (which the batch would never release while it waited
    for the manager's lock)."""
    events = manager(store)
    (event,) = events.handle(detection("k1"), T0)
    started = threading.Event()
    acted: list[SecurityEvent] = []
    errors: list[BaseException] = []

    def operator() -> None:
        started.set()
        try:
            acted.append(events.act(event.id, Action.ACKNOWLEDGE, actor="op", at_ms=T0 + 9))
        except BaseException as err:  # reported below
            errors.append(err)

    def consumer() -> None:
        try:
            with events.batch():
                events.handle(detection("k1", at_ms=T0 + 1), T0 + 1)  # holds the row
                acting.start()
                assert started.wait(5)
                time.sleep(0.2)
                events.handle(detection("k1", at_ms=T0 + 2), T0 + 2)
        except BaseException as err:  # reported below
            errors.append(err)

    acting = threading.Thread(target=operator, daemon=True)
    batching = threading.Thread(target=consumer, daemon=True)
    batching.start()
    batching.join(30)
    acting.join(30)
    assert not batching.is_alive() and not acting.is_alive(), "deadlocked"
    assert errors == []
    assert [(e.count, e.acknowledged) for e in acted] == [(3, True)]
    trail = [r.action for r in observer.audit_trail(event.id)]
    assert trail == [Action.RAISE, Action.REPEAT, Action.REPEAT, Action.ACKNOWLEDGE]
