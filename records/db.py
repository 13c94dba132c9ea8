"""Engines for the two supported databases and the schema migrations.

SQLite (the embedded default) runs in WAL mode; every transaction that may write starts with
``BEGIN IMMEDIATE`` so that two writers queue on the busy timeout instead of failing when a
read transaction tries to upgrade. PostgreSQL is used as it is.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True
        )
        _configure_sqlite(engine, sqlite_synchronous)
        return engine
    # hide_parameters: error messages must never carry patient data into logs.
    # prepare_threshold=None: no server-side prepared statements. A plan psycopg prepares while
    # the tables are still empty (a fresh county database) keeps scanning search_token
    # sequentially long after they have grown: measured here, ingest fell from 62 to 29
    # messages/s over 3,000 messages until ANALYZE. Planning each time costs far less.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        hide_parameters=True,
        connect_args={"prepare_threshold": None},
    )


WAL_CHECKPOINT_PAGES = 8000


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # a SAVEPOINT's journal (the group commit runs every unit in one) in memory, not in a
        # temporary file: it held as many bytes as the log itself, a write call per page
        cursor.execute("PRAGMA temp_store=MEMORY")
        # checkpoint the log every 8,000 pages (32 MB), not SQLite's 1,000: the ingest writes
        # the same index pages again and again, and a checkpoint copies each page once however
        # often the log holds it (the writer's CPU a message measured 10% lower; 4,000 and
        # 16,000 were no better)
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # a reader (see ``reader``) must not queue behind the writer for the write lock
        if conn.get_execution_options().get("yilian_readonly"):
            # straight to the driver: a deferred BEGIN takes no lock, and
            # SQLAlchemy's execution path costs more than it does (one per ingest snapshot)
            conn.connection.driver_connection.execute("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


class WriterTurns:
    """The turns of several processes' group committers on one SQLite file (a DICOM process
    beside the gateway's, ``gateway.dicom_processes``): a lock on a file beside the database,
    taken before ``BEGIN IMMEDIATE`` and given back after the commit. Without it a writer that
    finds the database locked waits in SQLite's busy handler, which sleeps 1, 2, 5, 10 ms
    between looks: two processes filing small DICOM instances went no faster than one. The lock
    (``flock``, one per open file, so two committers of one process take turns too) wakes the
    next writer when it is given back, and goes with its process if that process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextmanager
    def turn(self) -> Iterator[None]:
        if _flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB) != 0:  # another's turn: wait
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            _flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def _flock(fd: int, operation: int) -> int:
    """``flock`` that does not block, called without letting go of the interpreter's lock
    (``fcntl.flock`` lets go of it around every call, and waits to get it back: HL7 over eight
    connections read 345 and 303/s with a DICOM process beside the gateway's, 368 and 355/s
    without, rounds alternated; with this, 272 and 275/s against 252 and 205/s in a slower
    hour). 0, or -1 when another holds the lock."""
    return int(_LIBC.flock(fd, operation))


_LIBC = ctypes.PyDLL(None)  # PyDLL: the interpreter's lock is held during the call


def writer_turns(engine: Engine) -> WriterTurns | None:
    """The writers' turns of a SQLite database file (``WriterTurns``); None for PostgreSQL,
    whose writers wait on each other's row locks, and for a database in memory."""
    if sqlite_in_memory(engine.url) or engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database.startswith("file:"):  # a URI: no plain path to lock beside
        return None
    return WriterTurns(Path(f"{database}-writers"))


def sqlite_in_memory(url: str | URL) -> bool:
    """A SQLite database in memory: each process (and connection pool) has one of its own."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database
    return not database or ":memory:" in database or "mode=memory" in str(parsed)


def lock_keys(conn: Connection, keys: Iterable[str]) -> None:
    """Take turns with other writers deciding about the same keys ("is this resident identity
    number free?"): on PostgreSQL, transaction-scoped advisory locks, taken in one order so two
    writers never wait on each other crosswise. SQLite needs none: its writers take turns
    already (BEGIN IMMEDIATE)."""
    if conn.dialect.name != "postgresql":
        return
    ids = sorted({_lock_id(key) for key in keys})
    if ids:
        conn.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT unnest(%s::bigint[]) AS k ORDER BY 1) s",
            (ids,),
        )


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


def reader(engine: Engine) -> Engine:
    """The same engine for transactions that only read (SQLite: a deferred BEGIN)."""
    return engine.execution_options(yilian_readonly=True)


def _alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    command.upgrade(_alembic_config(engine), "head")


def schema_is_current(engine: Engine) -> bool:
    script = ScriptDirectory.from_config(_alembic_config(engine))
    with reader(engine).connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    return set(current) == set(script.get_heads())
