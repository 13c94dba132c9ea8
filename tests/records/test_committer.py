"""The group committer: who writes a unit, and which units share a transaction."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text

from records import committer as committer_module
from records.committer import GroupCommitter
from records.db import make_engine, writer_turns
from records.staging import Staged


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v TEXT)")
    yield engine
    engine.dispose()


@pytest.fixture
def committer(engine: Engine) -> Iterator[GroupCommitter]:
    committer = GroupCommitter(engine, name="test-writer")
    yield committer
    committer.close()


def rows(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT v FROM t ORDER BY v"))]


def count_queued(committer: GroupCommitter) -> threading.Semaphore:
    """Released once for each job put in the committer's queue from now on."""
    queued = threading.Semaphore(0)
    put = committer._put

    def counted(job):  # type: ignore[no-untyped-def]
        put(job)
        queued.release()

    committer._put = counted  # type: ignore[method-assign]
    return queued


def insert(value: str) -> object:
    def work(conn: Connection) -> str:
        conn.exec_driver_sql("INSERT INTO t (v) VALUES (?)", (value,))
        return threading.current_thread().name

    return work


def test_with_the_writer_idle_the_caller_writes_its_own_unit(committer, engine) -> None:
    assert committer.submit(insert("a")) == threading.current_thread().name
    assert rows(engine) == ["a"]
    assert (committer.batches, committer.units) == (1, 1)


def test_units_sent_while_another_is_written_wait_and_are_committed_together(
    committer, engine
) -> None:
    writing, release = threading.Event(), threading.Event()

    def slow(conn: Connection) -> str:
        conn.exec_driver_sql("INSERT INTO t (v) VALUES ('first')")
        writing.set()
        assert release.wait(30)
        return threading.current_thread().name

    queued = count_queued(committer)
    first = threading.Thread(target=committer.submit, args=(slow,), name="first-caller")
    first.start()
    assert writing.wait(30)
    writers: dict[str, str] = {}
    others = [
        threading.Thread(target=lambda v=v: writers.update({v: committer.submit(insert(v))}))
        for v in ("b", "c")
    ]
    for thread in others:
        thread.start()
    assert queued.acquire(timeout=30) and queued.acquire(timeout=30)  # both wait their turn
    release.set()
    for thread in [first, *others]:
        thread.join(30)
    assert rows(engine) == ["b", "c", "first"]
    assert set(writers.values()) == {"test-writer"}  # not their callers' threads
    assert (committer.batches, committer.units) == (2, 3)  # the first alone, then b and c


def test_a_unit_that_fails_in_its_callers_thread_leaves_nothing_and_the_next_goes_on(
    committer, engine
) -> None:
    def failing(conn: Connection) -> None:
        conn.exec_driver_sql("INSERT INTO t (v) VALUES ('half')")
        raise ValueError("the unit's own failure")

    with pytest.raises(ValueError, match="own failure"):
        committer.submit(failing)
    assert committer.submit(insert("next")) == threading.current_thread().name
    assert rows(engine) == ["next"]


def test_batches_run_on_the_writers_own_connection_and_a_failure_costs_only_that_one(
    committer, engine
) -> None:
    def connection_of(value: str) -> object:
        def work(conn: Connection) -> object:
            conn.exec_driver_sql("INSERT INTO t (v) VALUES (?)", (value,))
            return conn.connection.dbapi_connection

        return work

    def failing(conn: Connection) -> None:
        raise ValueError("the unit's own failure")

    first, second = committer.submit(connection_of("a")), committer.submit(connection_of("b"))
    assert first is second  # kept from batch to batch, not taken from the pool each time
    with pytest.raises(ValueError):
        committer.submit(failing)
    with engine.connect() as conn:  # the failed one went back to the pool, whole
        assert conn.connection.dbapi_connection is first
        assert not conn.in_transaction()
    assert committer.submit(connection_of("c")) is not None
    assert rows(engine) == ["a", "b", "c"]


def test_staged_units_that_arrive_while_a_staged_batch_is_written_join_it(committer) -> None:
    """A batch of staged units takes in, before its commit, the staged units that arrived
    while it was written (``_late``): one commit for the three."""
    queued = count_queued(committer)

    def others_arrived() -> None:  # the first unit's object made durable, meanwhile
        assert queued.acquire(timeout=30) and queued.acquire(timeout=30)

    results: dict[str, str] = {}

    def send(name: str, ready: object = None) -> None:
        unit = Staged(name, fallback=lambda conn: "fallback", ready=ready)
        results[name] = committer.submit(unit)

    first = threading.Thread(target=send, args=("first", others_arrived))
    first.start()
    others = [threading.Thread(target=send, args=(name,)) for name in ("second", "third")]
    for thread in others:
        thread.start()
    for thread in [first, *others]:
        thread.join(30)
    assert results == {"first": "first", "second": "second", "third": "third"}
    assert (committer.batches, committer.units) == (1, 3)


@pytest.mark.parametrize("held_for, checkouts", [(60.0, 1), (0.0, 3)], ids=["busy", "idle"])
def test_the_writers_connection_goes_back_to_the_pool_when_idle(
    committer, engine, monkeypatch: pytest.MonkeyPatch, held_for: float, checkouts: int
) -> None:
    """Kept while batches follow each other; after ``HELD_FOR`` without one, taken from the
    pool again (whose pre-ping finds a PostgreSQL connection the server dropped meanwhile)."""
    monkeypatch.setattr(committer_module, "HELD_FOR", held_for)
    taken: list[object] = []
    event.listen(engine, "checkout", lambda *args: taken.append(args[0]))
    for value in ("a", "b", "c"):
        committer.submit(insert(value))
    assert len(taken) == checkouts
    assert rows(engine) == ["a", "b", "c"]


def test_a_shared_committer_on_a_sqlite_file_waits_for_another_process_writers_turn(
    engine,
) -> None:
    """Another process's writer holds the turn (a child process holding the lock file): the
    unit waits for it, though SQLite itself is not locked, and is written once it is given
    back."""
    committer = GroupCommitter(engine, name="shared-writer", shared=True)
    lock = Path(f"{engine.url.database}-writers")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_TURN, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == b"holding\n"
    done = threading.Event()
    writer = threading.Thread(target=lambda: (committer.submit(insert("a")), done.set()))
    writer.start()
    assert not done.wait(0.5), "the unit was written while another process held the turn"
    assert rows(engine) == []
    holder.stdin.close()  # the holder gives the turn back and exits
    assert holder.wait(10) == 0
    assert done.wait(10)
    writer.join()
    assert rows(engine) == ["a"]
    committer.close()


HOLD_TURN = """
import sys
from pathlib import Path
from records.db import WriterTurns
turns = WriterTurns(Path(sys.argv[1]))
with turns.turn():
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_writers_turns_are_for_sqlite_files_only(engine) -> None:
    turns = writer_turns(engine)
    assert turns is not None and turns.path == Path(f"{engine.url.database}-writers")
    turns.close()
    assert writer_turns(make_engine("sqlite:///:memory:")) is None
    assert writer_turns(create_engine("postgresql+psycopg://u@127.0.0.1:1/x")) is None
