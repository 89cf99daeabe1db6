"""The event store on real databases: SQLite files and a private PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateTable

from events import migrations
from events.model import (
    Action,
    AuditRecord,
    Detection,
    Location,
    SecurityEvent,
    Severity,
    Source,
    State,
    new_event,
    transition,
)
from events.store import (
    EventFilter,
    EventStore,
    SchemaTooNew,
    StaleEvent,
    StoreError,
    StoreScope,
    UnknownEvent,
)
from storage.engine import create_engine
from tests.support.services import create_database, drop_database

T0 = 1_740_000_000_000
CRIT = Severity.CRITICAL
Change = tuple[SecurityEvent, AuditRecord]


def detection(key: str = "k1", *, at_ms: int = T0, **kw: Any) -> Detection:
    fields: dict[str, Any] = {
        "rule_id": "smoke",
        "site": "s1",
        "cell": "c1",
        "device": "sd-1",
        "severity": Severity.HIGH,
        "title": "Smoke",
        "message": "smoke over threshold",
        "incident": "fire",
    }
    return Detection(key=key, raised=True, at_ms=at_ms, **(fields | kw))


def raised(event_id: str, key: str = "k1", *, at_ms: int = T0, **kw: Any) -> Change:
    return new_event(event_id, detection(key, at_ms=at_ms, **kw), at_ms)


def act(event: SecurityEvent, action: Action, **kw: Any) -> Change:
    kw.setdefault("at_ms", event.updated_ms + 1)
    kw.setdefault("actor", "op")
    return transition(event, action, **kw)


@pytest.fixture
def store(event_db_url: str) -> Iterator[EventStore]:
    with EventStore(event_db_url) as s:
        s.migrate()
        yield s


def must(event: SecurityEvent | None) -> SecurityEvent:
    assert event is not None
    return event


def engine_of(url: str) -> sa.Engine:
    return create_engine(url)


# ---------------------------------------------------------------------- migrations


def test_migrate_from_empty_creates_the_schema_once(event_db_url: str) -> None:
    with EventStore(event_db_url) as store:
        assert store.migrate() == len(migrations.MIGRATIONS) == 4
        assert store.migrate() == 4  # idempotent
    engine = engine_of(event_db_url)
    try:
        inspector = sa.inspect(engine)
        assert {
            "schema_version",
            "events",
            "audit",
            "outbox",
            "snapshots",
            "consumer_state",
        } <= set(inspector.get_table_names())
        indexes = {ix["name"] for ix in inspector.get_indexes("events")}
        assert {
            "ix_events_site_closed",
            "ux_events_open_condition",
            "ix_events_raised",
            "ix_events_site_raised",
        } <= indexes
        with engine.connect() as conn:
            rows = conn.execute(sa.select(migrations.schema_version.c.version)).all()
        assert [r.version for r in rows] == [1, 2, 3, 4]
    finally:
        engine.dispose()


def test_later_steps_apply_in_order_one_transaction_each(event_db_url: str) -> None:
    applied: list[int] = []

    def add_column(conn: Connection) -> None:
        applied.append(4)
        conn.execute(sa.text("ALTER TABLE extra ADD COLUMN note TEXT"))

    steps = [
        *migrations.MIGRATIONS,
        CreateTable(
            sa.Table("extra", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True))
        ),
        add_column,
    ]
    engine = engine_of(event_db_url)
    try:
        assert migrations.migrate(engine, migrations.MIGRATIONS) == 4
        assert migrations.migrate(engine, steps) == 6
        assert migrations.migrate(engine, steps) == 6
        assert applied == [4]
        columns = {c["name"] for c in sa.inspect(engine).get_columns("extra")}
        assert columns == {"id", "note"}
    finally:
        engine.dispose()


def test_a_failing_step_leaves_the_previous_version(event_db_url: str) -> None:
    def broken(conn: Connection) -> None:
        conn.execute(sa.text("CREATE TABLE half_done (id INTEGER)"))
        raise RuntimeError("step 2 fails")

    engine = engine_of(event_db_url)
    try:
        with pytest.raises(RuntimeError, match="step 2 fails"):
            migrations.migrate(engine, [*migrations.MIGRATIONS, broken])
        # Transactional DDL on both databases: the half-made table went with the step.
        assert not sa.inspect(engine).has_table("half_done")
        with engine.connect() as conn:
            assert migrations.current_version(conn) == 4
    finally:
        engine.dispose()


def test_a_newer_schema_is_refused(event_db_url: str) -> None:
    with EventStore(event_db_url) as store:
        store.migrate()
    engine = engine_of(event_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(migrations.schema_version.insert().values(version=7, applied_ms=T0))
    finally:
        engine.dispose()
    with EventStore(event_db_url) as store, pytest.raises(SchemaTooNew) as caught:
        store.migrate()
    assert (caught.value.found, caught.value.known) == (7, 4)
    assert "upgrade GridWatch" in str(caught.value)
    assert isinstance(caught.value, StoreError)


def test_newest_raises_per_site_leave_out_what_flood_control_does_not_count(
    event_db_url: str,
) -> None:
    changes = [raised(f"n{i}", f"k{i}", at_ms=T0 + i, site="north") for i in range(5)]
    changes += [raised("s0", "ks", at_ms=T0 + 99, site="south")]
    changes += [raised("f", "kf", at_ms=T0 + 50, site="north", rule_id="flood_control")]
    changes += [raised("h", "kh", at_ms=T0 + 60, site="north", source=Source.HUB)]
    with EventStore(event_db_url) as store:
        store.migrate()
        store.save(changes)
        found = store.newest_raises(
            3, leave_out_rule="flood_control", leave_out_sources={Source.HUB}
        )
        assert found == {"north": [T0 + 2, T0 + 3, T0 + 4], "south": [T0 + 99]}
    with EventStore(event_db_url, StoreScope("p001", frozenset({"south"}))) as south:
        assert south.newest_raises(3, leave_out_rule="x", leave_out_sources=()) == {
            "south": [T0 + 99]
        }


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with EventStore(f"sqlite:///{path}") as store:
        store.migrate()
        store.save([raised("e1")])
        event = must(store.get("e1"))
        # A group under a parent that does not exist: only enforced with foreign_keys=ON.
        with pytest.raises(StoreError, match="refused"):
            store.save([act(event, Action.GROUP, parent_id="nobody")])
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_plain_postgresql_urls_use_psycopg(postgres_url: str) -> None:
    name = f"gw_events_{uuid.uuid4().hex[:12]}"
    url = create_database(postgres_url, name).replace("postgresql+psycopg://", "postgresql://")
    try:
        with EventStore(url) as store:
            assert store.migrate() == len(migrations.MIGRATIONS)
            store.save([raised("e1")])
            assert store.get("e1") is not None
    finally:
        drop_database(postgres_url, name)


def test_unsupported_databases_are_refused() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        EventStore("mysql://localhost/gw")
    for memory in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(StoreError, match="needs a file"):
            EventStore(memory)


# ---------------------------------------------------------------------- events


def test_an_event_round_trips_with_every_field(store: EventStore) -> None:
    event, record = new_event(
        "e1",
        detection(
            values={"ppm": 412.5, "count": 3, "alarm": True, "zone": "B2"},
            devices=("sd-1", "sd-2"),
            location=Location(116.397, 39.909),
            source=Source.ANOMALY,
        ),
        T0,
    )
    store.save([(event, record)])
    assert store.get("e1") == event
    shelved, shelve = act(event, Action.SHELVE, until_ms=T0 + 60_000, note="noisy")
    store.save([(shelved, shelve)])
    assert store.get("e1") == shelved
    assert store.get("nope") is None
    assert store.audit_trail("e1") == [record, shelve]


def test_the_audit_trail_is_in_order_with_states(store: EventStore) -> None:
    changes = [raised("e1")]
    for action, kw in [
        (Action.ACKNOWLEDGE, {}),
        (Action.ASSIGN, {"assignee": "w1"}),
        (Action.RETURN, {}),
        (Action.CLOSE, {"note": "fixed"}),
    ]:
        changes.append(act(changes[-1][0], action, **kw))
    store.save(changes[:2])
    store.save(changes[2:])
    trail = store.audit_trail("e1")
    assert [r.action for r in trail] == [
        Action.RAISE,
        Action.ACKNOWLEDGE,
        Action.ASSIGN,
        Action.RETURN,
        Action.CLOSE,
    ]
    assert [(r.from_state, r.to_state) for r in trail] == [
        (None, State.ACTIVE_UNACKNOWLEDGED),
        (State.ACTIVE_UNACKNOWLEDGED, State.ACTIVE_ACKNOWLEDGED),
        (State.ACTIVE_ACKNOWLEDGED, State.ACTIVE_ACKNOWLEDGED),
        (State.ACTIVE_ACKNOWLEDGED, State.CLEARED),
        (State.CLEARED, State.CLOSED),
    ]
    assert store.audit_trail("nope") == []


def test_open_event_is_the_newest_not_closed(store: EventStore) -> None:
    first, r1 = raised("e1", at_ms=T0)
    gone, ret = act(first, Action.RETURN)
    closed, close = act(gone, Action.CLOSE, note="ok")
    store.save([(first, r1), (gone, ret), (closed, close)])
    assert store.open_event("smoke", "k1") is None
    store.save([raised("e2", at_ms=T0 + 10)])
    store.save([raised("e3", "k2", at_ms=T0 + 20)])
    assert must(store.open_event("smoke", "k1")).id == "e2"
    assert store.open_event("other", "k1") is None


def test_one_open_event_per_condition(store: EventStore) -> None:
    store.save([raised("e1")])
    with pytest.raises(StaleEvent) as caught:
        store.save([raised("e2")])  # a second writer that did not see e1
    assert caught.value.event_id == "e2"
    gone = act(must(store.get("e1")), Action.RETURN)
    store.save([gone, act(gone[0], Action.CLOSE, note="ok")])
    store.save([raised("e3")])  # the condition is free again once closed
    assert must(store.open_event("smoke", "k1")).id == "e3"


def test_a_stale_write_is_refused(store: EventStore) -> None:
    event, record = raised("e1")
    store.save([(event, record)])
    store.save([act(event, Action.ACKNOWLEDGE, actor="alice")])
    with pytest.raises(StaleEvent) as caught:
        store.save([act(event, Action.ASSIGN, actor="bob", assignee="w1")])
    assert caught.value.event_id == "e1"
    with pytest.raises(StaleEvent):
        store.save([(event, record)])  # raised twice
    ghost, _ = raised("ghost")
    with pytest.raises(StaleEvent):
        store.save([act(ghost, Action.ACKNOWLEDGE)])  # never saved
    current = must(store.get("e1"))
    assert (current.version, current.acknowledged, current.assignee) == (2, True, None)
    assert len(store.audit_trail("e1")) == 2


def test_a_failing_save_leaves_nothing(store: EventStore) -> None:
    old, raise_old = raised("old")
    store.save([(old, raise_old)])
    store.save([act(old, Action.ACKNOWLEDGE)])
    new = raised("new", "k2")
    stale = act(old, Action.RETURN)  # from version 1, the store has 2
    with pytest.raises(StaleEvent):
        store.save([new, stale], sinks=["mqtt", "influx"])
    assert store.get("new") is None
    assert store.audit_trail("new") == []
    assert store.outbox_pending() == {}
    assert store.count_events() == 1


def test_concurrent_writers_on_threads(store: EventStore) -> None:
    base, record = raised("shared")
    store.save([(base, record)])
    errors: list[BaseException] = []
    stale = 0
    lock = threading.Lock()

    def work(n: int) -> None:
        nonlocal stale
        try:
            for i in range(10):
                store.save([raised(f"t{n}-{i}", f"k{n}-{i}")], sinks=["mqtt"])
            try:
                store.save([act(base, Action.ASSIGN, assignee=f"w{n}")])
            except StaleEvent:
                with lock:
                    stale += 1
        except BaseException as err:  # the test reports it below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_events() == 61
    assert store.outbox_pending() == {"mqtt": 60}
    assert stale == 5  # exactly one assignment won the optimistic lock
    assert must(store.get("shared")).version == 2


# ---------------------------------------------------------------------- queries


def one_event_per_state(store: EventStore) -> dict[State, str]:
    """Save an event in every state (raised a minute apart); return their ids."""
    plans: dict[State, list[tuple[Action, dict[str, Any]]]] = {
        State.ACTIVE_UNACKNOWLEDGED: [],
        State.ACTIVE_ACKNOWLEDGED: [(Action.ACKNOWLEDGE, {})],
        State.RETURNED_UNACKNOWLEDGED: [(Action.RETURN, {})],
        State.CLEARED: [(Action.RETURN, {}), (Action.ACKNOWLEDGE, {})],
        State.SHELVED: [(Action.SHELVE, {"until_ms": T0 + 10**9})],
        State.SUPPRESSED: [(Action.SUPPRESS, {})],
        State.OUT_OF_SERVICE: [(Action.REMOVE_FROM_SERVICE, {})],
        State.CLOSED: [(Action.RETURN, {}), (Action.CLOSE, {"note": "done"})],
    }
    ids: dict[State, str] = {}
    for i, (state, plan) in enumerate(plans.items()):
        changes = [raised(f"e-{state.value}", state.value, at_ms=T0 + i * 60_000)]
        for action, kw in plan:
            changes.append(act(changes[-1][0], action, **kw))
        assert changes[-1][0].state is state
        store.save(changes)
        ids[state] = changes[-1][0].id
    return ids


def test_each_state_filter_finds_exactly_its_events(store: EventStore) -> None:
    ids = one_event_per_state(store)
    for state, event_id in ids.items():
        found = store.list_events(EventFilter(states=[state]))
        assert [e.id for e in found] == [event_id], state
        assert found[0].state is state
        assert store.count_events(EventFilter(states=[state])) == 1
    several = store.list_events(EventFilter(states={State.CLEARED, State.SHELVED}))
    assert {e.id for e in several} == {ids[State.CLEARED], ids[State.SHELVED]}
    assert store.list_events(EventFilter(states=[])) == []
    assert store.count_events() == len(State)


def test_list_filters_order_and_paging(store: EventStore) -> None:
    store.save([raised("a", "ka", at_ms=T0, site="s1", cell="c1", severity=Severity.LOW)])
    store.save(
        [raised("b", "kb", at_ms=T0 + 1, site="s1", cell="c2", rule_id="door", severity=CRIT)]
    )
    store.save([raised("c", "kc", at_ms=T0 + 2, site="s2", cell=None)])
    store.save([act(must(store.get("a")), Action.GROUP, parent_id="c")])

    def ids(limit: int = 100, offset: int = 0, **kw: Any) -> list[str]:
        where = EventFilter(**kw)
        found = [e.id for e in store.list_events(where, limit=limit, offset=offset)]
        if (limit, offset) == (100, 0):
            assert store.count_events(where) == len(found)
        return found

    assert ids() == ["c", "b", "a"]  # newest raised first
    assert ids(site="s1") == ["b", "a"]
    assert ids(cell="c2") == ["b"]
    assert ids(rule_id="door") == ["b"]
    assert ids(severity=[Severity.LOW]) == ["a"]
    assert ids(severity=[Severity.LOW, Severity.HIGH]) == ["c", "a"]
    assert ids(since_ms=T0 + 1) == ["c", "b"]
    assert ids(until_ms=T0 + 1) == ["a"]
    assert ids(since_ms=T0 + 1, until_ms=T0 + 2) == ["b"]
    assert ids(top_level_only=True) == ["c", "b"]
    assert ids(limit=2) == ["c", "b"]
    assert ids(limit=2, offset=2) == ["a"]
    assert ids(site="s1", states=[State.ACTIVE_UNACKNOWLEDGED], top_level_only=True) == ["b"]
    assert ids(parent_id="c") == ["a"]
    assert ids(parent_id="c", site="s2") == []
    assert [e.id for e in store.children("c")] == ["a"]
    assert store.children("b") == []


def test_expired_shelves(store: EventStore) -> None:
    short = raised("short", "k1")
    long = raised("long", "k2")
    store.save([short, act(short[0], Action.SHELVE, until_ms=T0 + 1_000)])
    store.save([long, act(long[0], Action.SHELVE, until_ms=T0 + 5_000)])
    assert store.shelved_expired(T0 + 999) == []
    assert [e.id for e in store.shelved_expired(T0 + 1_000)] == ["short"]
    assert [e.id for e in store.shelved_expired(T0 + 9_000)] == ["short", "long"]


# ---------------------------------------------------------------------- outbox


def test_outbox_rows_follow_every_transition(store: EventStore) -> None:
    first = raised("e1")
    acked = act(first[0], Action.ACKNOWLEDGE)
    store.save([first, acked], sinks=["influx", "mqtt"])
    store.save([raised("e2", "k2")], sinks=["mqtt"])
    assert store.outbox_pending() == {"influx": 2, "mqtt": 3}
    due = store.outbox_due("mqtt", now_ms=0)
    assert [(i.event.id, i.audit.action) for i in due] == [
        ("e1", Action.RAISE),
        ("e1", Action.ACKNOWLEDGE),
        ("e2", Action.RAISE),
    ]
    assert [i.id for i in due] == sorted(i.id for i in due)
    # Each item carries the event as that transition left it.
    assert due[0].event == first[0]
    assert due[0].audit == first[1]
    assert due[1].event == acked[0]
    assert (due[0].attempts, due[0].next_attempt_ms, due[0].last_error) == (0, 0, "")
    assert [i.id for i in store.outbox_due("mqtt", 0, limit=2)] == [due[0].id, due[1].id]
    assert store.outbox_due("webhook", 0) == []


def test_outbox_retry_done_and_failed(store: EventStore) -> None:
    store.save([raised("e1"), raised("e2", "k2"), raised("e3", "k3")], sinks=["hook"])
    a, b, c = store.outbox_due("hook", T0)
    store.outbox_retry(a.id, error="503", next_attempt_ms=T0 + 1_000)
    store.outbox_retry(a.id, error="timeout", next_attempt_ms=T0 + 2_000)
    assert [i.id for i in store.outbox_due("hook", T0 + 1_999)] == [b.id, c.id]
    retried = store.outbox_due("hook", T0 + 2_000)[0]
    assert (retried.id, retried.attempts, retried.last_error) == (a.id, 2, "timeout")
    assert retried.next_attempt_ms == T0 + 2_000
    store.outbox_retry(b.id, error="400 bad payload", next_attempt_ms=0, failed=True)
    assert [i.id for i in store.outbox_due("hook", T0 + 10**9)] == [a.id, c.id]
    failed = store.outbox_failed()
    assert [(i.id, i.attempts, i.last_error) for i in failed] == [(b.id, 1, "400 bad payload")]
    assert store.outbox_pending() == {"hook": 2}
    store.outbox_done([a.id, c.id])
    store.outbox_done([])
    assert store.outbox_due("hook", 2**62) == []
    assert store.outbox_pending() == {}
    assert len(store.outbox_failed()) == 1
    with pytest.raises(StoreError, match="no outbox item"):
        store.outbox_retry(a.id, error="x", next_attempt_ms=0)


# ---------------------------------------------------------------------- snapshots


def test_snapshots_are_replaced_by_name(store: EventStore) -> None:
    assert store.get_snapshot("rules") is None
    blob = bytes(range(256)) * 1000
    store.put_snapshot("rules", blob, T0)
    assert store.get_snapshot("rules") == blob
    store.put_snapshot("rules", b"v2", T0 + 1)
    store.put_snapshot("anomaly", b"", T0 + 1)
    assert store.get_snapshot("rules") == b"v2"
    assert store.get_snapshot("anomaly") == b""


def test_unknown_event_is_a_store_error() -> None:
    assert issubclass(UnknownEvent, StoreError)
    assert issubclass(StaleEvent, StoreError)
    assert "e9" in str(UnknownEvent("e9"))


def test_a_sinks_queue_is_read_in_order_without_sorting_it(tmp_path: Path) -> None:
    # The dispatcher reads the first items of a sink's queue over and over while it
    # drains: sorting the whole queue for each read made a backlog's drain quadratic.
    path = tmp_path / "events.db"
    with EventStore(f"sqlite:///{path}") as store:
        store.migrate()
        store.save([raised("e1"), raised("e2", "k2")], sinks=["mqtt"])
        seen: list[tuple[str, Any]] = []
        engine = store._engine

        def capture(_c: Any, _cur: Any, statement: str, params: Any, *_: Any) -> None:
            if "FROM outbox" in statement and "ORDER BY" in statement:
                seen.append((statement, params))

        sa.event.listen(engine, "before_cursor_execute", capture)
        assert len(store.outbox_due("mqtt", 2**62, 1)) == 1
        sa.event.remove(engine, "before_cursor_execute", capture)
        ((statement, params),) = seen
    conn = sqlite3.connect(path)
    try:
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", params))
    finally:
        conn.close()
    assert "ix_outbox_sink_queue" in plan and "TEMP B-TREE" not in plan, plan


def test_a_version_2_store_gets_the_queue_and_site_indexes(event_db_url: str) -> None:
    engine = engine_of(event_db_url)
    try:
        assert migrations.migrate(engine, migrations.MIGRATIONS[:2]) == 2
        with engine.begin() as conn:  # the indexes as v1 made them before v3 and v4
            conn.execute(sa.text("DROP INDEX ix_outbox_sink_queue"))
            conn.execute(sa.text("DROP INDEX ix_events_site_raised"))
            conn.execute(
                sa.text("CREATE INDEX ix_outbox_sink_due ON outbox (sink, failed, next_attempt_ms)")
            )
        assert migrations.migrate(engine) == 4
        indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("outbox")}
        assert "ix_outbox_sink_queue" in indexes and "ix_outbox_sink_due" not in indexes
        indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("events")}
        assert "ix_events_site_raised" in indexes
    finally:
        engine.dispose()
