"""Many-row INSERTs (and the identifier look-up) straight through the DB-API cursor, for the
ingest hot path.

SQLAlchemy Core spends tens of microseconds a row preparing parameters (measured here: about 40%
of the ingest writer's time). This builds each INSERT's head once per dialect and converts values
with the columns' own SQLAlchemy bind processors, so what reaches the database is what Core would
send; the rows go in as one multi-row VALUES statement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError


@dataclass(frozen=True)
class _Prepared:
    keys: tuple[str, ...]  # the columns, in the order of ``head`` and of bound rows
    processors: tuple[Callable[[Any], Any] | None, ...]
    head: str  # "INSERT INTO t (a, b) VALUES "
    values: Callable[[dict[str, Any]], tuple[Any, ...]]  # a row's values by ``keys``
    converted: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, its processor)


_MAX_PARAMETERS = 30000  # per statement (PostgreSQL allows 65535)


_PREPARED: dict[tuple[str, str], _Prepared] = {}


def _prepare(table: Table, dialect: Dialect) -> _Prepared:
    key = (table.name, dialect.name)
    found = _PREPARED.get(key)
    if found is None:
        columns = [c for c in table.c if not (c.primary_key and c.autoincrement is True)]
        quote = dialect.identifier_preparer
        names = ", ".join(quote.quote(c.key) for c in columns)
        keys = tuple(c.key for c in columns)
        processors = tuple(c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns)
        one = keys[0]
        found = _Prepared(
            keys=keys,
            processors=processors,
            head=f"INSERT INTO {quote.format_table(table)} ({names}) VALUES ",
            values=itemgetter(*keys) if len(keys) > 1 else lambda row: (row[one],),
            converted=tuple((i, p) for i, p in enumerate(processors) if p is not None),
        )
        _PREPARED[key] = found
    return found


def mark(conn: Connection) -> str:
    """The DB-API parameter placeholder of the connection's driver."""
    return "%s" if conn.dialect.paramstyle in ("format", "pyformat") else "?"


def insert_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT ``rows`` (dicts keyed by column) with one statement."""
    insert_bound(conn, table, bind(table, conn.dialect, rows))


def bind(table: Table, dialect: Dialect, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """``rows`` as the driver's parameters, through the columns' bind processors: work a
    process that does not write can do for the one that does (``insert_bound``)."""
    if not rows:
        return []
    prepared = _prepare(table, dialect)
    values, converted, keys = prepared.values, prepared.converted, prepared.keys
    out = []
    for row in rows:
        try:
            bound = values(row)
        except KeyError:  # a column the row leaves out is NULL
            bound = tuple([row.get(k) for k in keys])
        if converted:  # most index tables have no column to convert
            changed = list(bound)
            for i, process in converted:
                changed[i] = process(changed[i])
            bound = tuple(changed)
        out.append(bound)
    return out


def insert_bound(conn: Connection, table: Table, rows: list[tuple[Any, ...]]) -> None:
    """INSERT rows made by ``bind`` for this connection's dialect: one statement with a
    multi-row VALUES list (one round trip on PostgreSQL; on SQLite one step, where
    executemany releases and retakes the interpreter's lock for every row)."""
    if not rows:
        return
    prepared = _prepare(table, conn.dialect)
    width = len(prepared.keys)
    group = "(" + ", ".join([mark(conn)] * width) + ")"
    step = max(1, _MAX_PARAMETERS // width)
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        flat = tuple(value for row in chunk for value in row)
        conn.exec_driver_sql(prepared.head + ", ".join([group] * len(chunk)), flat)


def fetch_all(conn: Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    """The rows of one SELECT in the driver's own paramstyle, through the DB-API cursor of
    ``conn``: SQLAlchemy's execution path costs several times what SQLite takes for the
    ingest's identifier look-up. It runs in ``conn``'s transaction (begun here when none is,
    as SQLAlchemy's autobegin would), and a driver error is raised as SQLAlchemy raises it
    (``DBAPIError``, parameters hidden, the connection invalidated when it was lost)."""
    rows, _ = _run(conn, sql, params, fetch=True)
    return rows


def execute(conn: Connection, sql: str, params: tuple[Any, ...]) -> int:
    """One statement that returns no rows (an UPDATE), as ``fetch_all`` runs its SELECT; the
    number of rows it changed."""
    return _run(conn, sql, params, fetch=False)[1]


def _run(
    conn: Connection, sql: str, params: tuple[Any, ...], *, fetch: bool
) -> tuple[list[Any], int]:
    """(the rows, when ``fetch``; the rows the statement changed)."""
    if not conn.in_transaction():
        conn.begin()
    cursor = conn.connection.cursor()
    try:
        cursor.execute(sql, params)
        return (list(cursor.fetchall()) if fetch else []), cursor.rowcount
    except conn.dialect.loaded_dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql,
            params,
            exc,
            conn.dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=lost,
            dialect=conn.dialect,
        ) from exc
    finally:
        cursor.close()
