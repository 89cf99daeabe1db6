"""Durable events: lifecycle rows, audit trail, sink outbox and rule snapshots.

SQLAlchemy Core on SQLite (the embedded default) or PostgreSQL. Synchronous: the hub
calls it from worker threads, so every operation checks a connection out of the
engine's pool for just that operation and nothing is shared between threads, except
inside `batch()`: there every operation of that thread shares the batch's connection
and transaction (a unit of work), and each write is a savepoint in it.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from events.migrations import (
    SchemaTooNew,
    StoreError,
    audit,
    consumer_state,
    events,
    migrate,
    outbox,
    snapshots,
)
from events.model import (
    Action,
    AuditRecord,
    Location,
    Mode,
    OutboxItem,
    SecurityEvent,
    Severity,
    Source,
    State,
)
from storage.driver_sql import DriverStatement, execute_driver_sql
from storage.engine import DatabaseUrlError, create_engine
from storage.migrations import read_transaction, write_transaction

__all__ = [
    "EventFilter",
    "EventStore",
    "SchemaTooNew",
    "StaleEvent",
    "StoreError",
    "UnknownEvent",
]


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events `list_events` and `count_events` mean: every field given must hold
    (None: any). One object so a caller (the event desk API) builds the filter once and
    uses it for a page and for the total."""

    site: str | None = None
    cell: str | None = None
    states: Collection[State] | None = None
    """Any of these derived states (an empty collection matches nothing)."""
    severity: Collection[Severity] | None = None
    rule_id: str | None = None
    since_ms: int | None = None
    """Inclusive lower bound of `raised_ms`."""
    until_ms: int | None = None
    """Exclusive upper bound of `raised_ms`."""
    top_level_only: bool = False
    """Leave out flood-control children."""
    parent_id: str | None = None
    """Only the children of this flood parent."""

    def predicates(self) -> list[sa.ColumnElement[bool]]:
        c = events.c
        where: list[sa.ColumnElement[bool]] = []
        if self.site is not None:
            where.append(c.site == self.site)
        if self.cell is not None:
            where.append(c.cell == self.cell)
        if self.states is not None:
            where.append(sa.or_(sa.false(), *(_state_predicate(s) for s in self.states)))
        if self.severity is not None:
            where.append(c.severity.in_([s.value for s in self.severity]))
        if self.rule_id is not None:
            where.append(c.rule_id == self.rule_id)
        if self.since_ms is not None:
            where.append(c.raised_ms >= self.since_ms)
        if self.until_ms is not None:
            where.append(c.raised_ms < self.until_ms)
        if self.top_level_only:
            where.append(c.parent_id.is_(None))
        if self.parent_id is not None:
            where.append(c.parent_id == self.parent_id)
        return where


_ALL: Final = EventFilter()


class StaleEvent(StoreError):
    """Someone changed the event since it was read: re-read it and decide again."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event {event_id} was changed by someone else; reload it")
        self.event_id = event_id


class UnknownEvent(StoreError):
    """No event has this id."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"no event {event_id}")
        self.event_id = event_id


_PARSED_KEPT: Final = 600
"""Outbox transitions kept parsed: a few dispatcher batches of every sink."""


class _Batch(threading.local):
    """The connection of the batch open on this thread, if any."""

    conn: Connection | None = None


# Statements built once: building one per call (`.values(row)`, a fresh `where`) costs
# SQLAlchemy a new cache key per execution, most of a detection's time in the store.
# The writes every event makes run on the driver's cursor (`storage.driver_sql`).
_INSERT_EVENT: Final = DriverStatement(events.insert())
_INSERT_AUDIT: Final = DriverStatement(audit.insert())
_INSERT_OUTBOX: Final = DriverStatement(outbox.insert())
_UPDATE_EVENT: Final = DriverStatement(
    events.update().where(
        events.c.id == sa.bindparam("b_id"), events.c.version == sa.bindparam("b_version")
    )
)


def _upsert(insert: Any, *key: sa.Column[Any]) -> DriverStatement:
    """`insert` (a dialect's) replacing `data` and `updated_ms` of the row `key` names."""
    return DriverStatement(
        insert.on_conflict_do_update(
            index_elements=list(key),
            set_={"data": insert.excluded.data, "updated_ms": insert.excluded.updated_ms},
        )
    )


# Blobs written on every commit, also on the driver's cursor: the consumers' positions
# and the rules snapshot (`put_snapshot`), the anomaly baselines of the devices that
# changed (`put_consumer_state`). `data` is bytes, which both drivers take as they are.
_DIALECTS: Final = {"postgresql": pg_dialect, "sqlite": sqlite_dialect}
_UPSERT_SNAPSHOT: Final = {
    name: _upsert(dialect.insert(snapshots), snapshots.c.name)
    for name, dialect in _DIALECTS.items()
}
_UPSERT_STATE: Final = {
    name: _upsert(dialect.insert(consumer_state), consumer_state.c.consumer, consumer_state.c.key)
    for name, dialect in _DIALECTS.items()
}
_OPEN_EVENT: Final = (
    events.select()
    .where(
        events.c.rule_id == sa.bindparam("b_rule"),
        events.c.key == sa.bindparam("b_key"),
        sa.not_(events.c.closed),
    )
    .order_by(events.c.raised_ms.desc(), events.c.id.desc())
    .limit(1)
)


Fence = Callable[[Connection], None]
"""Run first in every write transaction; raises to refuse it (a hub that lost its lease)."""


@dataclass(frozen=True, slots=True)
class StoreScope:
    """What one partition's hub sees of a store shared by several (docs/scaling.md): the
    events, outbox and timers of its own sites, and state names of its own, so each
    partition's committed consumers resume independently of the others'."""

    name: str
    sites: frozenset[str]
    fence: Fence | None = None
    foreign: frozenset[str] | None = None
    """Set for the catch-all partition: it sees every site but these (the other
    partitions'), so also the sites no partition knows (`cluster.partitions.CATCH_ALL`)."""

    def state_name(self, name: str) -> str:
        return f"{name}@{self.name}"


class EventStore:
    """Events, their audit trail and outbox in one database; call `migrate()` first.
    With a `scope`, one partition's view of a store that several hubs share."""

    def __init__(self, url: str, scope: StoreScope | None = None) -> None:
        try:
            self._engine = create_engine(url)
        except DatabaseUrlError as exc:
            raise StoreError(str(exc)) from exc
        self.scope = scope
        self._batch = _Batch()
        # Transitions parsed from the outbox, by (event id, audit seq): immutable, and
        # each is read once per sink. Shared by the dispatcher's threads.
        self._parsed: dict[tuple[str, int], tuple[SecurityEvent, AuditRecord]] = {}
        self._parsed_lock = threading.Lock()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for everything this thread does with the store in the block:
        committed when the block ends, rolled back if it raises.

        Other threads keep their own transactions (they see the batch once it commits;
        on SQLite their writes wait for it, so keep batches short). Each write inside is
        a savepoint, so a write that fails (e.g. `StaleEvent`, to be retried) undoes only
        itself. A batch opened inside another on the same thread joins it: a savepoint
        too, committed with the outer one.
        """
        outer = self._batch.conn
        if outer is not None:
            with outer.begin_nested():
                yield
            return
        with write_transaction(self._engine) as conn:
            self._fence(conn)
            self._batch.conn = conn
            try:
                yield
            finally:
                self._batch.conn = None

    @property
    def in_batch(self) -> bool:
        """Whether this thread is inside `batch()`."""
        return self._batch.conn is not None

    def migrate(self) -> int:
        """Bring the schema up to date (idempotent); return its version."""
        return migrate(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ events

    def save(
        self, changes: Sequence[tuple[SecurityEvent, AuditRecord]], *, sinks: Sequence[str] = ()
    ) -> None:
        """Write transitions atomically: event rows, their audit records, one outbox row per sink.

        Version 1 inserts; later versions update only if the stored row is the version
        before (optimistic lock), else `StaleEvent`. Nothing is written if anything fails.
        """
        # One write per event (its last version, checked against the version before its
        # first change here), one for all audit records, one for all outbox rows: a
        # detection's transitions (raise, assign, group, suppress, the parent's repeat)
        # cost a few statements, not a few per transition.
        since: dict[str, int] = {}
        final: dict[str, SecurityEvent] = {}
        audit_rows: list[dict[str, Any]] = []
        outbox_rows: list[dict[str, Any]] = []
        for event, record in changes:
            if record.event_id != event.id:
                raise ValueError(f"audit record of {record.event_id} saved with {event.id}")
            since.setdefault(event.id, event.version)
            # In the order of each event's last change: a child is written after the
            # parent it is grouped under.
            final.pop(event.id, None)
            final[event.id] = event
            # The audit sequence is the version the transition produced: unique per
            # event, and it orders the trail without another counter.
            audit_rows.append(_audit_row(record, event.version))
            if sinks:
                payload = json.dumps({"event": _event_doc(event), "audit": _audit_doc(record)})
                outbox_rows += [
                    {
                        "sink": sink,
                        "event_id": event.id,
                        "audit_seq": event.version,
                        "payload": payload,
                        "attempts": 0,
                        # Due at once: sinks poll on their own clock, which need not be
                        # the detections' (simulated) clock.
                        "next_attempt_ms": 0,
                        "last_error": "",
                        "failed": False,
                    }
                    for sink in sinks
                ]
        with self._write() as conn:
            for event_id, event in final.items():
                self._write_event(conn, event, since[event_id])
            if audit_rows:
                try:
                    _INSERT_AUDIT.executemany(conn, audit_rows)
                except IntegrityError as err:
                    raise StaleEvent(changes[0][0].id) from err
            if outbox_rows:
                _INSERT_OUTBOX.executemany(conn, outbox_rows)  # in change order: delivery order

    def _write_event(self, conn: Connection, event: SecurityEvent, since: int) -> None:
        """Write `event` (its latest version) over the stored version `since - 1`
        (inserting when `since` is 1)."""
        row = _event_row(event)
        if since == 1:
            try:
                _INSERT_EVENT.execute(conn, row)
            except IntegrityError as err:
                # Saved already, or another writer opened the same condition first.
                raise StaleEvent(event.id) from err
            return
        try:
            updated = _UPDATE_EVENT.execute(conn, {**row, "b_id": event.id, "b_version": since - 1})
        except IntegrityError as err:  # e.g. grouped under a parent that does not exist
            raise StoreError(f"event {event.id} refused: {err.orig}") from err
        if updated != 1:
            raise StaleEvent(event.id)

    def get(self, event_id: str) -> SecurityEvent | None:
        with self._read() as conn:
            row = conn.execute(events.select().where(events.c.id == event_id)).mappings().first()
        return None if row is None else _event_from_row(row)

    def open_event(self, rule_id: str, key: str) -> SecurityEvent | None:
        """The not-closed event of this condition (what a repeat bumps); at most one."""
        with self._read() as conn:
            row = conn.execute(_OPEN_EVENT, {"b_rule": rule_id, "b_key": key}).mappings().first()
        return None if row is None else _event_from_row(row)

    def audit_trail(self, event_id: str) -> list[AuditRecord]:
        query = audit.select().where(audit.c.event_id == event_id).order_by(audit.c.seq)
        with self._read() as conn:
            return [_audit_from_row(r) for r in conn.execute(query).mappings()]

    def children(self, parent_id: str) -> list[SecurityEvent]:
        query = (
            events.select()
            .where(events.c.parent_id == parent_id)
            .order_by(events.c.raised_ms, events.c.id)
        )
        return self._events(query)

    def list_events(
        self, where: EventFilter | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[SecurityEvent]:
        """Events matching `where` (everything when None), newest raised first."""
        query = (
            events.select()
            .where(*(where or _ALL).predicates(), *self._in_scope())
            .order_by(events.c.raised_ms.desc(), events.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return self._events(query)

    def count_events(self, where: EventFilter | None = None) -> int:
        """How many events `list_events` would page through with the same filter."""
        query = (
            sa.select(sa.func.count())
            .select_from(events)
            .where(*(where or _ALL).predicates(), *self._in_scope())
        )
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    def newest_raises(
        self, per_site: int, *, leave_out_rule: str, leave_out_sources: Collection[Source]
    ) -> dict[str, list[int]]:
        """Per site, the raise times of its `per_site` newest events, oldest first,
        leaving out one rule's events and some sources' (what flood control counts).
        Site by site along `ix_events_site_raised`: a few index lookups per site, however
        many events the store has kept."""
        scope = self._in_scope()
        counted = [
            events.c.rule_id != leave_out_rule,
            events.c.source.not_in(sorted(s.value for s in leave_out_sources)),
            *scope,
        ]
        found: dict[str, list[int]] = {}
        with self._read() as conn:
            site = conn.execute(sa.select(sa.func.min(events.c.site)).where(*scope)).scalar()
            while site is not None:
                newest = (
                    sa.select(events.c.raised_ms)
                    .where(events.c.site == site, *counted)
                    .order_by(events.c.raised_ms.desc())
                    .limit(per_site)
                )
                if times := conn.execute(newest).scalars().all():
                    found[str(site)] = sorted(int(t) for t in times)
                after = sa.select(sa.func.min(events.c.site)).where(events.c.site > site, *scope)
                site = conn.execute(after).scalar()
        return found

    def shelved_expired(self, now_ms: int) -> list[SecurityEvent]:
        """Open shelved events whose shelve ran out by `now_ms`."""
        query = (
            events.select()
            .where(
                sa.not_(events.c.closed),
                events.c.mode == Mode.SHELVED.value,
                events.c.shelved_until_ms <= now_ms,
                *self._in_scope(),
            )
            .order_by(events.c.shelved_until_ms, events.c.id)
        )
        return self._events(query)

    def _events(self, query: sa.Select[Any]) -> list[SecurityEvent]:
        with self._read() as conn:
            return [_event_from_row(r) for r in conn.execute(query).mappings()]

    # ------------------------------------------------------------------ outbox

    def outbox_due(self, sink: str, now_ms: int, limit: int = 100) -> list[OutboxItem]:
        """Deliveries of one sink whose next attempt is due, oldest first."""
        query = (
            outbox.select()
            .where(
                outbox.c.sink == sink,
                outbox.c.failed == sa.false(),  # an equality: `ix_outbox_sink_queue` applies
                outbox.c.next_attempt_ms <= now_ms,
                *self._outbox_in_scope(),
            )
            .order_by(outbox.c.id)
            .limit(limit)
        )
        return self._outbox(query)

    def outbox_done(self, ids: Sequence[int]) -> None:
        """Forget delivered items."""
        if ids:
            with self._write() as conn:
                conn.execute(outbox.delete().where(outbox.c.id.in_(list(ids))))

    def outbox_retry(
        self, item_id: int, *, error: str, next_attempt_ms: int, failed: bool = False
    ) -> None:
        """Record a failed attempt; `failed` parks the item until an operator looks."""
        with self._write() as conn:
            updated = conn.execute(
                outbox.update()
                .where(outbox.c.id == item_id)
                .values(
                    attempts=outbox.c.attempts + 1,
                    last_error=error,
                    next_attempt_ms=next_attempt_ms,
                    failed=failed,
                )
            )
            if updated.rowcount != 1:
                raise StoreError(f"no outbox item {item_id}")

    def outbox_pending(self) -> dict[str, int]:
        """Undelivered, not failed items per sink."""
        query = (
            sa.select(outbox.c.sink, sa.func.count())
            .where(sa.not_(outbox.c.failed), *self._outbox_in_scope())
            .group_by(outbox.c.sink)
        )
        with self._read() as conn:
            return {str(sink): int(n) for sink, n in conn.execute(query)}

    def outbox_failed(self) -> list[OutboxItem]:
        query = outbox.select().where(outbox.c.failed, *self._outbox_in_scope())
        return self._outbox(query.order_by(outbox.c.id))

    def _outbox(self, query: sa.Select[Any]) -> list[OutboxItem]:
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        return [self._outbox_item(r) for r in rows]

    def _outbox_item(self, row: RowMapping) -> OutboxItem:
        """The row as an item; its transition parsed once for all sinks (each sink has a
        row of its own with the same payload, read soon after the first)."""
        key = (str(row["event_id"]), int(row["audit_seq"]))
        with self._parsed_lock:
            parsed = self._parsed.get(key)
        if parsed is None:
            payload = json.loads(row["payload"])
            parsed = _event_from_doc(payload["event"]), _audit_from_row(payload["audit"])
            with self._parsed_lock:
                self._parsed[key] = parsed
                while len(self._parsed) > _PARSED_KEPT:
                    del self._parsed[next(iter(self._parsed))]  # the oldest
        return OutboxItem(
            id=int(row["id"]),
            sink=str(row["sink"]),
            event=parsed[0],
            audit=parsed[1],
            attempts=int(row["attempts"]),
            next_attempt_ms=int(row["next_attempt_ms"]),
            last_error=str(row["last_error"]),
        )

    # ------------------------------------------------------------------ snapshots

    def put_snapshot(self, name: str, data: bytes, at_ms: int) -> None:
        """Store (or replace) a named blob, e.g. the rule engine state."""
        upsert = _UPSERT_SNAPSHOT[self._engine.dialect.name]
        with self._write() as conn:
            upsert.execute(conn, {"name": self._named(name), "data": data, "updated_ms": at_ms})

    def get_snapshot(self, name: str) -> bytes | None:
        query = sa.select(snapshots.c.data).where(snapshots.c.name == self._named(name))
        with self._read() as conn:
            data = conn.execute(query).scalar_one_or_none()
        return None if data is None else bytes(data)

    # ------------------------------------------------------------------ transactions

    def reading(self) -> AbstractContextManager[Connection]:
        """A read-only connection for queries this class has no method for (reports such
        as `events.kpi`): one consistent read over the store's tables."""
        return self._read()

    def _read(self) -> AbstractContextManager[Connection]:
        """The batch's connection on this thread, else a read transaction of its own."""
        conn = self._batch.conn
        return read_transaction(self._engine) if conn is None else nullcontext(conn)

    def _write(self) -> AbstractContextManager[Connection]:
        """A savepoint in this thread's batch, else a write transaction of its own."""
        conn = self._batch.conn
        return self._fenced_write() if conn is None else _savepoint(conn)

    @contextmanager
    def _fenced_write(self) -> Iterator[Connection]:
        with write_transaction(self._engine) as conn:
            self._fence(conn)
            yield conn

    def _fence(self, conn: Connection) -> None:
        if self.scope is not None and self.scope.fence is not None:
            self.scope.fence(conn)

    def _named(self, name: str) -> str:
        """A snapshot's or consumer's stored name: the scope's own."""
        return name if self.scope is None else self.scope.state_name(name)

    def _in_scope(self) -> list[sa.ColumnElement[bool]]:
        """Predicates on `events` that keep to the scope's sites (none without a scope)."""
        scope = self.scope
        if scope is None:
            return []
        if scope.foreign is not None:
            return [events.c.site.not_in(sorted(scope.foreign))] if scope.foreign else []
        return [events.c.site.in_(sorted(scope.sites))]

    def _outbox_in_scope(self) -> list[sa.ColumnElement[bool]]:
        if self.scope is None:
            return []
        mine = sa.select(events.c.id).where(*self._in_scope())
        return [outbox.c.event_id.in_(mine)]

    # ------------------------------------------------------------------ consumer state

    def put_consumer_state(self, consumer: str, rows: Mapping[str, bytes], at_ms: int) -> None:
        """Store (or replace) rows of a consumer's state; rows not named stay as they are.
        Inside `batch()` this commits with the rest of the batch (the consumer's position)."""
        if not rows:
            return
        upsert = _UPSERT_STATE[self._engine.dialect.name]
        name = self._named(consumer)
        params = [
            {"consumer": name, "key": key, "data": data, "updated_ms": at_ms}
            for key, data in rows.items()
        ]
        with self._write() as conn:
            upsert.executemany(conn, params)

    def get_consumer_state(self, consumer: str) -> dict[str, bytes]:
        """Every row of a consumer's state, by key."""
        query = sa.select(consumer_state.c.key, consumer_state.c.data).where(
            consumer_state.c.consumer == self._named(consumer)
        )
        with self._read() as conn:
            return {key: bytes(data) for key, data in conn.execute(query)}

    def delete_consumer_state(self, consumer: str) -> int:
        """Forget a consumer's state (it starts learning afresh); returns the rows removed."""
        statement = sa.delete(consumer_state).where(
            consumer_state.c.consumer == self._named(consumer)
        )
        with self._write() as conn:
            return conn.execute(statement).rowcount


@contextmanager
def _savepoint(conn: Connection) -> Iterator[Connection]:
    """Released when the block ends; rolled back to if it raises (and the error goes on).

    SQLite: the engine issues BEGIN itself (pysqlite left out of transaction handling),
    which is what makes SAVEPOINT work there (SQLAlchemy's documented recipe).

    Plain SQL on the driver's cursor rather than `begin_nested`: one of these wraps every
    write of a batch, and SQLAlchemy's nested-transaction bookkeeping cost more than the
    writes (a third of a raise's CPU). Savepoints nest by name, so one inside another (or inside a
    `begin_nested`) still unwinds to its own.
    """
    execute_driver_sql(conn, _SAVEPOINT)
    try:
        yield conn
    except BaseException:
        execute_driver_sql(conn, _ROLLBACK_TO)
        execute_driver_sql(conn, _RELEASE)
        raise
    execute_driver_sql(conn, _RELEASE)


_SAVEPOINT: Final = "SAVEPOINT gw_write"
_ROLLBACK_TO: Final = "ROLLBACK TO SAVEPOINT gw_write"
_RELEASE: Final = "RELEASE SAVEPOINT gw_write"


# ---------------------------------------------------------------------- rows


def _state_predicate(state: State) -> sa.ColumnElement[bool]:
    """`state_of` as SQL: the same precedence (closed, then mode, then active/ack)."""
    c = events.c
    if state is State.CLOSED:
        return c.closed.is_(True)
    open_ = sa.not_(c.closed)
    modes = {
        State.SHELVED: Mode.SHELVED,
        State.SUPPRESSED: Mode.SUPPRESSED,
        State.OUT_OF_SERVICE: Mode.OUT_OF_SERVICE,
    }
    if state in modes:
        return sa.and_(open_, c.mode == modes[state].value)
    active, acknowledged = {
        State.ACTIVE_UNACKNOWLEDGED: (True, False),
        State.ACTIVE_ACKNOWLEDGED: (True, True),
        State.RETURNED_UNACKNOWLEDGED: (False, False),
        State.CLEARED: (False, True),
    }[state]
    return sa.and_(
        open_,
        c.mode == Mode.NORMAL.value,
        c.active.is_(active),
        c.acknowledged.is_(acknowledged),
    )


def _event_doc(event: SecurityEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict (the outbox payload's `event`)."""
    return {
        "id": event.id,
        "version": event.version,
        "rule_id": event.rule_id,
        "key": event.key,
        "site": event.site,
        "cell": event.cell,
        "device": event.device,
        "severity": event.severity.value,
        "title": event.title,
        "message": event.message,
        "incident": event.incident,
        "source": event.source.value,
        "raised_ms": event.raised_ms,
        "last_ms": event.last_ms,
        "updated_ms": event.updated_ms,
        "count": event.count,
        "active": event.active,
        "acknowledged": event.acknowledged,
        "mode": event.mode.value,
        "shelved_until_ms": event.shelved_until_ms,
        "closed": event.closed,
        "resolution": event.resolution,
        "assignee": event.assignee,
        "parent_id": event.parent_id,
        "values": dict(event.values),
        "devices": list(event.devices),
        "location": (
            None
            if event.location is None
            else {"lon": event.location.lon, "lat": event.location.lat}
        ),
        "returned_ms": event.returned_ms,
    }


def _event_from_doc(doc: Mapping[str, Any]) -> SecurityEvent:
    loc = doc["location"]
    return SecurityEvent(
        id=str(doc["id"]),
        version=int(doc["version"]),
        rule_id=str(doc["rule_id"]),
        key=str(doc["key"]),
        site=str(doc["site"]),
        cell=_opt_str(doc["cell"]),
        device=_opt_str(doc["device"]),
        severity=Severity(doc["severity"]),
        title=str(doc["title"]),
        message=str(doc["message"]),
        incident=str(doc["incident"]),
        source=Source(doc["source"]),
        raised_ms=int(doc["raised_ms"]),
        last_ms=int(doc["last_ms"]),
        updated_ms=int(doc["updated_ms"]),
        count=int(doc["count"]),
        active=bool(doc["active"]),
        acknowledged=bool(doc["acknowledged"]),
        mode=Mode(doc["mode"]),
        shelved_until_ms=_opt_int(doc["shelved_until_ms"]),
        closed=bool(doc["closed"]),
        resolution=str(doc["resolution"]),
        assignee=_opt_str(doc["assignee"]),
        parent_id=_opt_str(doc["parent_id"]),
        values=dict(doc["values"]),
        # Interned: a flood parent names every device of its storm, and an outbox batch
        # holds many versions of it; one copy of each name, not one per version.
        devices=tuple(map(sys.intern, doc["devices"])),
        location=None if loc is None else Location(float(loc["lon"]), float(loc["lat"])),
        returned_ms=_opt_int(doc["returned_ms"]),
    )


def _event_row(event: SecurityEvent) -> dict[str, Any]:
    row = _event_doc(event)
    row["values_json"] = json.dumps(row.pop("values"), sort_keys=True)
    row["devices_json"] = json.dumps(row.pop("devices"))
    location = row.pop("location")
    row["location_json"] = None if location is None else json.dumps(location)
    return row


def _event_from_row(row: RowMapping) -> SecurityEvent:
    doc = dict(row)
    doc["values"] = json.loads(doc.pop("values_json"))
    doc["devices"] = json.loads(doc.pop("devices_json"))
    location = doc.pop("location_json")
    doc["location"] = None if location is None else json.loads(location)
    return _event_from_doc(doc)


def _audit_doc(record: AuditRecord) -> dict[str, Any]:
    return {
        "event_id": record.event_id,
        "at_ms": record.at_ms,
        "actor": record.actor,
        "action": record.action.value,
        "from_state": None if record.from_state is None else record.from_state.value,
        "to_state": record.to_state.value,
        "note": record.note,
    }


def _audit_row(record: AuditRecord, seq: int) -> dict[str, Any]:
    return _audit_doc(record) | {"seq": seq}


def _audit_from_row(doc: Mapping[Any, Any]) -> AuditRecord:
    return AuditRecord(
        event_id=str(doc["event_id"]),
        at_ms=int(doc["at_ms"]),
        actor=str(doc["actor"]),
        action=Action(doc["action"]),
        from_state=None if doc["from_state"] is None else State(doc["from_state"]),
        to_state=State(doc["to_state"]),
        note=str(doc["note"]),
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
