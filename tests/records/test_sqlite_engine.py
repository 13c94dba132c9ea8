"""records.db.make_engine on SQLite: what every connection of the embedded database is set to."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from records import db


def test_sqlite_connections_are_set_for_the_ingest_writer(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path}/x.db")
    try:
        with engine.connect() as conn:
            pragma = {
                name: conn.execute(text(f"PRAGMA {name}")).scalar()
                for name in (
                    "journal_mode",
                    "synchronous",
                    "foreign_keys",
                    "temp_store",
                    "wal_autocheckpoint",
                )
            }
    finally:
        engine.dispose()
    # WAL, a commit durable before the answer goes out (FULL = 2), and a savepoint's journal
    # in memory (MEMORY = 2), not a temporary file written page by page; a log checkpointed
    # every 8,000 pages, not 1,000
    assert pragma == {
        "journal_mode": "wal",
        "synchronous": 2,
        "foreign_keys": 1,
        "temp_store": 2,
        "wal_autocheckpoint": 8000,
    }


def test_a_writer_takes_the_write_lock_at_begin_and_a_second_one_is_told_it_is_busy(
    tmp_path: Path,
) -> None:
    """BEGIN IMMEDIATE: a transaction holds SQLite's write lock from its start, and a writer
    that cannot get it within its busy timeout fails as SQLAlchemy reports a driver's error."""
    first, second = (db.make_engine(f"sqlite:///{tmp_path}/x.db") for _ in range(2))
    try:
        with first.begin() as holding:
            holding.execute(text("CREATE TABLE t (x INTEGER)"))
            with second.connect() as conn:
                # straight to the driver: through SQLAlchemy the PRAGMA would begin first
                conn.connection.driver_connection.execute("PRAGMA busy_timeout=50")
                with pytest.raises(OperationalError, match="database is locked"):
                    conn.begin()
        with second.begin() as conn:  # free again
            conn.execute(text("INSERT INTO t VALUES (1)"))
    finally:
        first.dispose()
        second.dispose()
