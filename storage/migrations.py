"""One versioned migration track: a version table, its steps, and how to apply them.

The event store, the registry and the API users share one database but migrate apart,
each on its own track (own version table, own PostgreSQL advisory lock). `steps[i]`
takes a track from version i to i + 1; each step runs in one transaction together with
its version row, so a failing step leaves the previous version intact (SQLite and
PostgreSQL both have transactional DDL; `storage.engine.create_engine` makes pysqlite
honour it). Add steps at the end, never edit an applied one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import ExecutableDDLElement

Step = Callable[[Connection], None] | ExecutableDDLElement
"""One migration: a function of an open connection, or a DDL statement."""

WRITE_OPTION: Final = "gridwatch_write"
"""Connection execution option: the transaction will write (SQLite: BEGIN IMMEDIATE)."""


def version_table(name: str, metadata: sa.MetaData) -> sa.Table:
    """A track's version table: one row per applied step."""
    return sa.Table(
        name,
        metadata,
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("applied_ms", sa.BigInteger, nullable=False),
    )


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a read transaction, for just one operation."""
    with engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction (SQLite takes the write lock up front)."""
    with engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


@dataclass(frozen=True, slots=True)
class MigrationTrack:
    """A track's version table, steps, advisory lock id, and the error for a newer schema."""

    table: sa.Table
    steps: Sequence[Step]
    lock_id: int
    too_new: Callable[[int, int], Exception]
    """Builds the error raised when the database is at (found, known) with found > known."""

    def current_version(self, conn: Connection) -> int:
        """The applied version; 0 for an empty database."""
        if not sa.inspect(conn).has_table(self.table.name):
            return 0
        found = conn.execute(sa.select(sa.func.max(self.table.c.version))).scalar_one()
        return int(found or 0)

    def migrate(self, engine: Engine, steps: Sequence[Step] | None = None) -> int:
        """Apply the missing steps (the track's own unless given), one transaction each;
        return the version reached."""
        steps = self.steps if steps is None else steps
        while True:
            with write_transaction(engine) as conn:
                if conn.dialect.name == "postgresql":
                    # Two hubs starting together must not both run a step.
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(self.lock_id)))
                self.table.create(conn, checkfirst=True)
                version = self.current_version(conn)
                if version > len(steps):
                    raise self.too_new(version, len(steps))
                if version == len(steps):
                    return version
                step = steps[version]
                if isinstance(step, ExecutableDDLElement):
                    conn.execute(step)
                else:
                    step(conn)
                conn.execute(
                    self.table.insert().values(
                        version=version + 1, applied_ms=int(time.time() * 1000)
                    )
                )
