"""Hot writes on the driver's cursor: a Core statement compiled once per dialect.

`Connection.execute` spends more CPU on its own bookkeeping (cache keys, parameter
processing, result setup) than SQLite spends on a small insert: in a replay of a
100,000-message bench through the event store it was about half of every event write.
For the few statements a store runs per event, `DriverStatement` keeps SQLAlchemy for
what it is good at (the table definitions, the dialect's SQL and parameter style) and
runs the compiled text on the DBAPI cursor of the connection's open transaction.

Use it only inside a transaction begun through SQLAlchemy (the statement joins it), for
plain column types (no type needs SQLAlchemy's bind processing: text, integers,
booleans). Driver errors come out as SQLAlchemy's (`IntegrityError`, ...), as from
`Connection.execute`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, StatementError


class DriverStatement:
    """`statement` compiled for each set of parameter names it is executed with."""

    def __init__(self, statement: sa.Insert | sa.Update | sa.Delete | sa.TextClause) -> None:
        self._statement = statement
        self._compiled: dict[tuple[Dialect, tuple[str, ...]], tuple[str, Sequence[str] | None]] = {}

    def _for(self, dialect: Dialect, keys: tuple[str, ...]) -> tuple[str, Sequence[str] | None]:
        found = self._compiled.get((dialect, keys))
        if found is None:
            compiled = self._statement.compile(dialect=dialect, column_keys=list(keys))
            # Positional styles (SQLite's qmark) need the values in the compiled order;
            # named styles (psycopg's pyformat) take the row as it is.
            order = compiled.positiontup
            found = self._compiled[(dialect, keys)] = (compiled.string, order)
        return found

    def execute(self, conn: Connection, row: Mapping[str, Any]) -> int:
        """Run once with `row`; returns the rows affected."""
        sql, order = self._for(conn.dialect, tuple(row))
        params: Any = row if order is None else tuple(row[k] for k in order)
        cursor = _cursor(conn)
        try:
            cursor.execute(sql, params)
            return int(cursor.rowcount)
        except conn.dialect.loaded_dbapi.Error as err:
            raise _wrapped(sql, conn, err) from err
        finally:
            cursor.close()

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run once per row (every row with the same keys as the first)."""
        if not rows:
            return
        sql, order = self._for(conn.dialect, tuple(rows[0]))
        params: Iterable[Any] = (
            rows if order is None else [tuple(row[k] for k in order) for row in rows]
        )
        cursor = _cursor(conn)
        try:
            cursor.executemany(sql, params)
        except conn.dialect.loaded_dbapi.Error as err:
            raise _wrapped(sql, conn, err) from err
        finally:
            cursor.close()


def execute_driver_sql(conn: Connection, sql: str) -> None:
    """Run a parameterless statement (SAVEPOINT, RELEASE) on the driver's cursor."""
    cursor = _cursor(conn)
    try:
        cursor.execute(sql)
    except conn.dialect.loaded_dbapi.Error as err:
        raise _wrapped(sql, conn, err) from err
    finally:
        cursor.close()


def _cursor(conn: Connection) -> Any:
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _wrapped(sql: str, conn: Connection, err: Exception) -> StatementError:
    """SQLAlchemy's exception for a driver error (`IntegrityError` for one, ...)."""
    return DBAPIError.instance(sql, None, err, conn.dialect.loaded_dbapi.Error)
