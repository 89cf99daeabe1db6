"""One SQLAlchemy engine per database URL, shared by the event store, the registry and
the users: psycopg 3 for PostgreSQL; for SQLite, WAL, foreign keys, a busy timeout and
transactions that behave as PostgreSQL's (DDL included, writers lock up front)."""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from storage.migrations import WRITE_OPTION

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000


class DatabaseUrlError(ValueError):
    """A database URL no store can use (unknown driver, SQLite without a file)."""


def create_engine(url: str) -> Engine:
    """An engine for the stores (events, registry, users): psycopg for PostgreSQL; for
    SQLite, WAL, foreign keys, a busy timeout and real transactions (DDL included)."""
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if parsed.drivername in {"postgresql", "postgres"}:
        # SQLAlchemy's default PostgreSQL driver is psycopg2; we ship psycopg 3.
        parsed = parsed.set(drivername="postgresql+psycopg")
        backend = "postgresql"
    if backend == "postgresql":
        return sa.create_engine(parsed, pool_pre_ping=True)
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    raise DatabaseUrlError(f"unsupported database {parsed.drivername!r}: use sqlite or postgresql")


def _sqlite_engine(url: sa.URL) -> Engine:
    if url.database in {None, "", ":memory:"} or url.query.get("mode") == "memory":
        # Each pooled connection would get its own empty database.
        raise DatabaseUrlError("the SQLite store needs a file: sqlite:///path/to/events.db")
    # The pool hands each operation its own connection, possibly on another thread.
    engine = sa.create_engine(url, connect_args={"check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling commits before DDL and starts deferred
        # transactions; we issue BEGIN ourselves (below) so both behave as on PostgreSQL.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the write lock up front: upgrading a read lock later can fail
        # with SQLITE_BUSY at once, whatever the busy timeout.
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
