"""records.bulk.bind: rows as the driver's parameters, through the columns' bind processors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import psycopg
from sqlalchemy.engine import Dialect

from records import bulk
from records.schema import resource, resource_version, search_date, search_token

WHEN = datetime(2026, 11, 22, 8, 30, 1, 123000, tzinfo=UTC)


def _each_column(table, dialect: Dialect, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:  # type: ignore[no-untyped-def]
    """What Core would send, column by column (a missing column is NULL)."""
    columns = [c for c in table.c if not (c.primary_key and c.autoincrement is True)]
    out = []
    for row in rows:
        values = []
        for c in columns:
            process = c.type.dialect_impl(dialect).bind_processor(dialect)
            values.append(process(row.get(c.key)) if process else row.get(c.key))
        out.append(tuple(values))
    return out


@pytest.mark.parametrize("dialect", [sqlite.dialect(), psycopg.dialect()], ids=lambda d: d.name)
def test_bind_gives_each_column_through_its_processor(dialect: Dialect) -> None:
    full = {
        "res_type": "Patient",
        "res_id": "p1",
        "version": 2,
        "last_updated": WHEN,
        "deleted": False,
        "patient_id": "p1",
        "org_id": None,
        "content": '{"resourceType":"Patient"}',
        "method": "PUT",
    }
    cases = [
        (resource, [full, {k: v for k, v in full.items() if k not in ("org_id", "deleted")}]),
        (resource_version, [full]),
        (
            search_token,
            [
                {
                    "res_type": "Patient",
                    "res_id": "p1",
                    "param": "identifier",
                    "system": None,
                    "code": "X1",
                },
                {"res_type": "Patient", "res_id": "p1"},
            ],
        ),
        (
            search_date,
            [
                {
                    "res_type": "Patient",
                    "res_id": "p1",
                    "param": "birthdate",
                    "low": WHEN,
                    "high": WHEN,
                }
            ],
        ),
    ]
    for table, rows in cases:
        assert bulk.bind(table, dialect, rows) == _each_column(table, dialect, rows), table.name
    assert bulk.bind(search_token, dialect, []) == []


def test_fetch_all_runs_in_the_connection_s_transaction_and_fails_as_sqlalchemy_does(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    from sqlalchemy.exc import DBAPIError

    from records import db

    engine = db.make_engine(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (a TEXT)")
            conn.exec_driver_sql("INSERT INTO t VALUES ('x'), ('y')")
        with db.reader(engine).connect() as conn:
            assert not conn.in_transaction()
            assert bulk.fetch_all(conn, "SELECT a FROM t WHERE a <> ? ORDER BY a", ("y",)) == [
                ("x",)
            ]
            assert conn.in_transaction()  # begun as SQLAlchemy's autobegin would
            conn.rollback()
            with pytest.raises(DBAPIError) as failed:
                bulk.fetch_all(conn, "SELECT missing FROM t WHERE a = ?", ("41132519520314042X",))
            assert "no such column" in str(failed.value)
            assert "41132519520314042X" not in str(failed.value)  # parameters stay out of logs
    finally:
        engine.dispose()
