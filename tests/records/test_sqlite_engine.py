"""records.db.make_engine on SQLite: what every connection of the embedded database is set to."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

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
