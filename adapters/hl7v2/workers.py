"""Preparing HL7 v2 messages in worker processes, so parsing and mapping use every core.

Parsing, translation, validation and index rows are pure Python: in one process they hold the
interpreter's lock and eight connections go no faster than one. ``Hl7Ingest.prepare`` needs no
writing transaction (``records.staging``), so it runs here, in processes of its own, each with
its own database connection for the snapshot read; the one writer (and the ACK after commit)
stays in the gateway's process. A worker that dies is replaced and the message it held is
prepared in the gateway's process instead: the sender never notices.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from adapters.hl7v2.ingest import Hl7Ingest, Origin, Prepared, Settings
from records import db
from records.service import RecordService
from security.access import AccessPolicy

log = logging.getLogger(__name__)

_INGEST: Hl7Ingest | None = None  # in a worker process


def _start(database_url: str, sqlite_synchronous: str, settings: Settings) -> None:
    global _INGEST
    engine = db.make_engine(database_url, sqlite_synchronous=sqlite_synchronous)
    _INGEST = Hl7Ingest(RecordService(engine, AccessPolicy()), settings, hold_reader=True)


def _prepare(raw: bytes, origin: Origin) -> Prepared:
    assert _INGEST is not None, "worker started without its initializer"
    return _INGEST.prepare(raw, origin)


def _ready() -> bool:
    return _INGEST is not None


class StagingPool:
    """``Hl7Ingest.stager``: prepare a message in one of ``workers`` processes."""

    def __init__(
        self,
        workers: int,
        database_url: str,
        settings: Settings,
        local: Callable[[bytes, Origin], Prepared],
        *,
        sqlite_synchronous: str = "FULL",
    ) -> None:
        self.workers = workers
        self._args = (database_url, sqlite_synchronous, settings)
        self._local = local
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=self._args,
        )
        for _ in range(self.workers):  # start them now, not on the first message
            pool.submit(_ready)
        return pool

    def __call__(self, raw: bytes, origin: Origin) -> Prepared:
        pool = self._pool
        try:
            return pool.submit(_prepare, raw, origin).result().with_raw(raw)
        except BrokenProcessPool:
            log.error("an HL7 worker process died; starting new ones")
            with self._lock:
                if self._pool is pool:
                    self._pool = self._new_pool()
            return self._local(raw, origin)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
