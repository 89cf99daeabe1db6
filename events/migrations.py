"""The event store's schema and its versioned migration track.

`MIGRATIONS[i]` takes the schema from version i to i + 1; `schema_version` holds one row
per applied step (see `storage.migrations` for how steps are applied).

Add steps at the end, never edit an applied one. The tables below describe the current
schema; the day a later step alters one of them, freeze step 1 by copying its DDL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage.migrations import MigrationTrack, Step, version_table

_MIGRATE_LOCK: Final = 0x67774D4947  # PostgreSQL advisory lock id: one migrator at a time

metadata = sa.MetaData()

# Millisecond timestamps need 64 bits; SQLite's INTEGER is 64-bit anyway, and only an
# `INTEGER PRIMARY KEY` autoincrements there.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

schema_version = version_table("schema_version", metadata)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("rule_id", sa.Text, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("site", sa.Text, nullable=False),
    sa.Column("cell", sa.Text),
    sa.Column("device", sa.Text),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("incident", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("raised_ms", sa.BigInteger, nullable=False),
    sa.Column("last_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Column("count", sa.Integer, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("acknowledged", sa.Boolean, nullable=False),
    sa.Column("mode", sa.Text, nullable=False),
    sa.Column("shelved_until_ms", sa.BigInteger),
    sa.Column("closed", sa.Boolean, nullable=False),
    sa.Column("resolution", sa.Text, nullable=False),
    sa.Column("assignee", sa.Text),
    sa.Column("parent_id", sa.Text, sa.ForeignKey("events.id")),
    sa.Column("values_json", sa.Text, nullable=False),
    sa.Column("devices_json", sa.Text, nullable=False),
    sa.Column("location_json", sa.Text),
    sa.Column("returned_ms", sa.BigInteger),
    sa.Index("ix_events_site_closed", "site", "closed"),
    # The open-event lookup, and the dedup rule itself: at most one open event per
    # condition, so two writers racing to open one cannot both succeed.
    sa.Index(
        "ux_events_open_condition",
        "rule_id",
        "key",
        unique=True,
        sqlite_where=sa.text("closed = 0"),  # as SQLAlchemy renders `not closed` there
        postgresql_where=sa.text("NOT closed"),
    ),
    sa.Index("ix_events_raised", "raised_ms"),
    sa.Index("ix_events_parent", "parent_id"),
    # Each site's newest raises, for the flood windows a restart rebuilds.
    sa.Index("ix_events_site_raised", "site", "raised_ms"),
)

audit = sa.Table(
    "audit",
    metadata,
    sa.Column("event_id", sa.Text, sa.ForeignKey("events.id"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("from_state", sa.Text),
    sa.Column("to_state", sa.Text, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("sink", sa.Text, nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("audit_seq", sa.Integer, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_ms", sa.BigInteger, nullable=False),
    sa.Column("last_error", sa.Text, nullable=False),
    sa.Column("failed", sa.Boolean, nullable=False),
    sa.ForeignKeyConstraint(["event_id", "audit_seq"], ["audit.event_id", "audit.seq"]),
    # A sink's queue in delivery order: the dispatcher reads its first items (`ORDER BY
    # id LIMIT n`) without sorting the whole queue. (v1 to v2 had (sink, failed,
    # next_attempt_ms): each read sorted the queue, so a backlog drained in quadratic
    # time; a read of 100 took 11 ms behind 50,000 queued items.)
    sa.Index("ix_outbox_sink_queue", "sink", "failed", "id"),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)


consumer_state = sa.Table(
    "consumer_state",
    metadata,
    sa.Column("consumer", sa.Text, primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)
"""A log consumer's learned state in rows it names (e.g. the anomaly baselines, one row
per device): written with the consumer's position, only the rows that changed."""


def _v1_tables(conn: Connection) -> None:
    metadata.create_all(conn, tables=[events, audit, outbox, snapshots])


def _v2_consumer_state(conn: Connection) -> None:
    metadata.create_all(conn, tables=[consumer_state])


def _v3_outbox_queue(conn: Connection) -> None:
    conn.execute(sa.text("DROP INDEX IF EXISTS ix_outbox_sink_due"))
    for index in outbox.indexes:  # a database new at v1 has them already
        index.create(conn, checkfirst=True)


def _v4_site_raised(conn: Connection) -> None:
    for index in events.indexes:  # a database new at v1 has them already
        index.create(conn, checkfirst=True)


MIGRATIONS: Final[Sequence[Step]] = (
    _v1_tables,
    _v2_consumer_state,
    _v3_outbox_queue,
    _v4_site_raised,
)


class StoreError(Exception):
    """The event store refused or failed an operation (re-exported by `events.store`)."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer GridWatch than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the event database is at schema version {found}, this GridWatch knows up to "
            f"{known}: upgrade GridWatch (or point it at another database)"
        )
        self.found = found
        self.known = known


TRACK: Final = MigrationTrack(schema_version, MIGRATIONS, _MIGRATE_LOCK, SchemaTooNew)


def current_version(conn: Connection) -> int:
    """The applied version; 0 for an empty database."""
    return TRACK.current_version(conn)


def migrate(engine: Engine, steps: Sequence[Step] = MIGRATIONS) -> int:
    """Apply the missing steps, one transaction each; return the version reached."""
    return TRACK.migrate(engine, steps)
