"""Group commit: many units of work in one database transaction.

Ingest listeners hand their writes to one writer thread. Under load the writer takes every unit
waiting (up to ``max_batch``), runs each inside a SAVEPOINT, and commits once; when nothing is
being written or waiting, a thread that submits writes its own unit (still one writer at a
time: they take turns on ``_writing``), and a batch of one unit needs no SAVEPOINT. Each caller
gets its own result (or its own exception) only after the commit. A unit that fails rolls back
to its savepoint and does not disturb the others; a failed commit fails every unit of the
batch, and their callers answer nothing (the senders retry). One fsync then covers many
messages: on this machine's disk a commit costs milliseconds, the writes of a message a
fraction of that. Whoever writes uses the writer's own connection (``_transaction``).

A unit is either a function of the connection or a ``staging.Staged`` unit prepared before:
consecutive staged units are checked and written together (see ``records.staging``). A batch of
staged units only (a DICOM instance of a known study, an HL7 message) needs no savepoint: when
writing them fails, each goes its one-at-a-time way in a transaction of its own. Before it
commits, it takes in the staged units that arrived while it was written (``_late``): four
associations sending at once then share one commit. What staged units write is told to
``observe`` (``RecordService.written``) in their transaction, as the records boundary tells its
observers of what it writes itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine

from records import db, staging
from records.staging import Staged
from records.store import Stored

log = logging.getLogger(__name__)
T = TypeVar("T")
# times a batch of staged units takes in those that arrived while it was written (``_late``):
# four DICOM associations made batches of 1.6 units, 60% of them of one
LATE_ROUNDS = 2
HELD_FOR = 1.0  # seconds the writers' connection is kept without a batch (``_transaction``)


@dataclass
class _Job:
    work: Callable[[Connection], Any] | Staged[Any]
    future: Future[Any]


class GroupCommitter:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 64,
        name: str = "group-commit",
        observe: Callable[[Connection, Sequence[Stored]], None] | None = None,
        shared: bool = False,
    ) -> None:
        """``shared``: other processes' committers write the same database (on a SQLite file
        they take turns, ``db.WriterTurns``)."""
        self.engine = engine
        self.max_batch = max_batch
        self.observe = observe
        self._jobs: deque[_Job | None] = deque()  # waiting for a batch (None: close)
        self._arrived = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False
        self._lock = threading.Lock()
        self._writing = threading.Lock()  # held by whichever thread writes a batch
        self._conn: Connection | None = None  # the writers' connection (``_transaction``)
        self._used = 0.0  # when it last ended a transaction (time.monotonic)
        self._turns = db.writer_turns(engine) if shared else None
        self.batches = 0
        self.units = 0

    def submit(self, work: Callable[[Connection], T] | Staged[T]) -> T:
        """Run ``work(conn)`` (or write a staged unit) in the next batch; return its result
        once committed. When nothing is being written or waiting, the calling thread writes its
        unit itself: handing it to the writer thread and back cost two wake-ups and two turns
        of the interpreter's lock, a quarter of a millisecond, on every DICOM instance of an
        association sending one at a time."""
        if self._writing.acquire(blocking=False):
            try:
                if not self._jobs:
                    job = _Job(work, Future())
                    self._commit([job])
                    result: T = job.future.result()
                    return result
            finally:
                self._writing.release()
        return self.enqueue(work).result()

    def enqueue(self, work: Callable[[Connection], T] | Staged[T]) -> Future[T]:
        """``submit`` without waiting: the future is done once the batch is committed (an
        event loop awaits it instead of a thread blocking on it)."""
        self._ensure_started()
        future: Future[T] = Future()
        self._put(_Job(work, future))
        return future

    def _put(self, job: _Job | None) -> None:
        with self._arrived:
            self._jobs.append(job)
            self._arrived.notify()

    def close(self) -> None:
        if self._started:
            self._put(None)
            self._thread.join(30)
        with self._writing:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._turns is not None:
                self._turns.close()
                self._turns = None

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A transaction on the writers' own connection, kept from batch to batch (whoever
        writes holds ``_writing``): taking one from the pool and giving it back cost more
        than SQLite's statements, and a connection of its own keeps SQLite's page cache warm.
        After a failure, or ``HELD_FOR`` seconds without a batch, the next batch takes one from
        the pool again (which checks that a PostgreSQL connection is still alive). On a SQLite
        file the transaction waits for its turn among other processes' writers first."""
        turn = self._turns.turn() if self._turns is not None else nullcontext()
        with turn, self._connected() as conn:
            yield conn

    @contextmanager
    def _connected(self) -> Iterator[Connection]:
        conn = self._conn
        if conn is not None and time.monotonic() - self._used > HELD_FOR:
            self._conn = None
            conn.close()
            conn = None
        if conn is None:
            conn = self._conn = self.engine.connect()
        try:
            with conn.begin():
                yield conn
        except BaseException:
            self._conn = None
            conn.close()
            raise
        finally:
            self._used = time.monotonic()

    def _ensure_started(self) -> None:
        if not self._started:
            with self._lock:
                if not self._started:
                    self._thread.start()
                    self._started = True

    def _run(self) -> None:
        while True:
            with self._arrived:
                while not self._jobs:
                    self._arrived.wait()
            with self._writing:  # a caller writing its own unit first: what waits meanwhile
                batch, stop = self._take()  # joins this batch (or that one's, ``_late``)
                if batch:
                    self._commit(batch)
            if stop:
                return

    def _take(self) -> tuple[list[_Job], bool]:
        """The jobs waiting, up to ``max_batch``, and whether ``close`` was asked."""
        batch: list[_Job] = []
        with self._arrived:
            while self._jobs and len(batch) < self.max_batch:
                job = self._jobs.popleft()
                if job is None:
                    return batch, True
                batch.append(job)
        return batch, False

    def _late(self, limit: int) -> list[tuple[Staged[Any], Future[Any]]]:
        """The staged units at the head of the queue, up to ``limit``: they arrived while a
        batch of staged units was being written, and join it before its commit."""
        late: list[tuple[Staged[Any], Future[Any]]] = []
        with self._arrived:
            while self._jobs and len(late) < limit:
                job = self._jobs[0]
                if job is None or not isinstance(job.work, Staged):
                    break
                self._jobs.popleft()
                late.append((job.work, job.future))
        return late

    def _commit(self, batch: list[_Job]) -> None:
        staged = [(job.work, job.future) for job in batch if isinstance(job.work, Staged)]
        if len(staged) == len(batch):
            self._commit_staged(staged)
            return
        if len(batch) == 1 and not isinstance(batch[0].work, Staged):
            self._commit_alone(batch[0].work, batch[0].future)
            return
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self._transaction() as conn:
                group: list[Staged[Any]] = []
                for job in batch:
                    if isinstance(job.work, Staged):
                        group.append(job.work)
                        continue
                    outcomes += self._write_group(conn, group)
                    group = []
                    outcomes.append(_one(conn, job.work))
                outcomes += self._write_group(conn, group)
        except BaseException as exc:  # noqa: BLE001 - the commit failed: every unit failed
            log.error("group commit of %d units failed: %s", len(batch), type(exc).__name__)
            for job in batch:
                _settle(job.future, False, exc)
            return
        self.batches += 1
        self.units += len(batch)
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            _settle(job.future, ok, value)

    def _commit_alone(self, work: Callable[[Connection], Any], future: Future[Any]) -> None:
        """A batch of one unit, without a savepoint (two statements less): when the unit fails,
        the whole transaction is rolled back instead."""
        failed = False
        try:
            with self._transaction() as conn:
                try:
                    result = work(conn)
                except BaseException:
                    failed = True
                    raise
        except BaseException as exc:  # noqa: BLE001 - the unit's failure, or the commit's
            if not failed:
                log.error("group commit of 1 unit failed: %s", type(exc).__name__)
            _settle(future, False, exc)
            return
        self.batches += 1
        self.units += 1
        _settle(future, True, result)

    def _commit_staged(self, jobs: list[tuple[Staged[Any], Future[Any]]]) -> None:
        """A batch of staged units only (the usual one), without savepoints: the leading units
        that hold are written together, the stale one after them is put aside and the rest
        checked again; then those that arrived meanwhile (``_late``, ``LATE_ROUNDS`` times).
        After the commit a stale unit raises ``StaleSnapshot`` to its caller (``retry``: it
        may be prepared again) or runs its fallback in a transaction of its own. When writing
        fails, every unit goes that one-at-a-time way instead."""
        written: list[tuple[Staged[Any], Future[Any]]] = []
        stale: list[tuple[Staged[Any], Future[Any]]] = []
        late_rounds = 0
        try:
            with self._transaction() as conn:
                rest = jobs
                while rest:
                    units = [unit for unit, _ in rest]
                    holds = staging.holding(conn, units)
                    if holds:
                        staging.write(conn, units[:holds])
                        if self.observe is not None:
                            self.observe(conn, [s for u in units[:holds] for s in u.rows.written])
                        written += rest[:holds]
                    stale += rest[holds : holds + 1]
                    rest = rest[holds + 1 :]
                    if not rest and late_rounds < LATE_ROUNDS:
                        rest = self._late(self.max_batch - len(jobs))
                        jobs = jobs + rest
                        late_rounds += 1
        except Exception as exc:  # noqa: BLE001 - each unit goes the one-at-a-time way
            log.warning(
                "writing %d staged units failed (%s): one at a time", len(jobs), type(exc).__name__
            )
            for unit, future in jobs:
                self._commit_alone(_fallback(unit), future)
            return
        if written:
            self.batches += 1
            self.units += len(written)
        for unit, future in written:
            _settle(future, True, unit.result)
        for unit, future in stale:
            if unit.retry:
                _settle(future, False, staging.StaleSnapshot())
            else:
                self._commit_alone(_fallback(unit), future)

    def _write_group(self, conn: Connection, group: list[Staged[Any]]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        while group:
            holds = staging.holding(conn, group)
            if holds:
                outcomes += _together(conn, group[:holds], self.observe)
            if holds < len(group):
                stale = group[holds]
                if stale.retry:
                    outcomes.append((False, staging.StaleSnapshot()))
                else:
                    outcomes.append(_one(conn, _fallback(stale)))
            group = group[holds + 1 :]
        return outcomes


def _settle(future: Future[Any], ok: bool, value: Any) -> None:
    """Tell a unit's caller. One who gave up waiting (an event loop cancels the future it
    awaits when its connection goes) is not told: the unit is committed all the same, its
    sender's retry is answered as a repeat, and the writer goes on with the next batch."""
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _one(conn: Connection, work: Callable[[Connection], Any]) -> tuple[bool, Any]:
    savepoint = conn.begin_nested()
    try:
        result = work(conn)
    except BaseException as exc:  # noqa: BLE001 - handed to its caller
        savepoint.rollback()
        return False, exc
    savepoint.commit()
    return True, result


def _fallback(unit: Staged[Any]) -> Callable[[Connection], Any]:
    assert unit.fallback is not None, "a staged unit is submitted with its fallback"
    return unit.fallback


def _together(
    conn: Connection,
    units: list[Staged[Any]],
    observe: Callable[[Connection, Sequence[Stored]], None] | None,
) -> list[tuple[bool, Any]]:
    savepoint = conn.begin_nested()
    try:
        staging.write(conn, units)
        if observe is not None:
            observe(conn, [stored for unit in units for stored in unit.rows.written])
    except Exception as exc:  # noqa: BLE001 - each unit then goes its own way
        savepoint.rollback()
        log.warning(
            "writing %d staged units together failed (%s): one by one",
            len(units),
            type(exc).__name__,
        )
        return [_one(conn, _fallback(unit)) for unit in units]
    savepoint.commit()
    return [(True, unit.result) for unit in units]
