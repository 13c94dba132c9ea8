"""Preparing HL7 v2 messages in worker processes, so parsing and mapping use every core.

Parsing, translation, validation and index rows are pure Python: in one process they hold the
interpreter's lock and eight connections go no faster than one. ``Hl7Ingest.prepare`` needs no
writing transaction (``records.staging``), so it runs here, in processes of its own, each with
its own database connection for the snapshot read; the one writer (and the ACK after commit)
stays in the gateway's process.

The event loop that runs the listeners drives the workers itself: it writes a message to an
idle worker's request pipe and reads the prepared message from its result pipe when the loop
sees it readable. No thread of the gateway's process stands between (a process pool's feeder
and result threads, and an ingest thread waiting on each message, took the interpreter's lock
from the writer several times a message). The workers run at a lower priority than the
gateway's process: when the two cores are busy, the writer, which every message waits for, is
not kept waiting behind the preparing of messages that will then queue for it.

A worker that dies is replaced, and the message it held is prepared in the gateway's process
instead: the sender never notices. One that dies within seconds of starting (the database
unreachable, say) is replaced only after a pause, and while no worker is alive messages are
prepared in the gateway's process.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import struct
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler

from adapters.hl7v2.ingest import Hl7Ingest, Origin, Prepared, Settings
from records import db
from records.service import RecordService
from security.access import AccessPolicy

log = logging.getLogger(__name__)

# How much lower the workers' priority is (nice). Measured side by side with 8 connections
# (docs/benchmarks.md): the writer otherwise waited for a core about a third of its time.
WORKER_NICE = 10
_HEAD = struct.Struct("!i")  # multiprocessing's length prefix of a message on a pipe
_READ = 1 << 20
# a worker that lived less than this is replaced only this long after it died
RESTART_PAUSE = 5.0


def _serve(
    requests: Connection,
    results: Connection,
    database_url: str,
    sqlite_synchronous: str,
    settings: Settings,
) -> None:
    """A worker process: prepare each message it is sent, until its request pipe closes."""
    try:
        os.nice(WORKER_NICE)
    except OSError:  # not allowed here: the same work at the same priority
        pass
    engine = db.make_engine(database_url, sqlite_synchronous=sqlite_synchronous)
    ingest = Hl7Ingest(RecordService(engine, AccessPolicy()), settings, hold_reader=True)
    while True:
        try:
            raw, origin = pickle.loads(requests.recv_bytes())
        except EOFError:
            return
        results.send_bytes(_prepared(ingest, raw, origin))


def _prepared(ingest: Hl7Ingest, raw: bytes, origin: Origin) -> bytes:
    """The prepared message as the gateway reads it back; None if preparing it failed
    unexpectedly (a refusal is a prepared message): the gateway then prepares it itself and
    answers the sender as the failure deserves, and this worker goes on with the next."""
    try:
        return bytes(ForkingPickler.dumps(ingest.prepare(raw, origin)))
    except Exception:  # noqa: BLE001 - raised again, and logged, in the gateway's process
        return pickle.dumps(None)


def _loads(message: bytes) -> Prepared | None:
    """A worker's answer; None (prepare it here) if it cannot be read."""
    try:
        prepared: Prepared | None = pickle.loads(message)
    except Exception:  # noqa: BLE001 - the message is prepared again in the gateway's process
        log.exception("an HL7 worker's answer could not be read")
        return None
    return prepared


class WorkerDied(Exception):
    """The worker preparing a message ended before it answered."""


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    requests: Connection  # the gateway writes here, as far as the pipe takes (one message)
    results: Connection  # and reads here, when the event loop says it is readable
    sending: bytearray = field(default_factory=bytearray)  # what the pipe has not taken yet
    received: bytearray = field(default_factory=bytearray)
    waiting: asyncio.Future[Prepared | None] | None = None  # the message it is preparing
    started: float = field(default_factory=time.monotonic)

    def take(self, chunk: bytes) -> list[bytes]:
        """Add bytes read from the result pipe; the whole messages they complete."""
        self.received += chunk
        done = []
        while len(self.received) >= _HEAD.size:
            (size,) = _HEAD.unpack_from(self.received)
            end = _HEAD.size + size
            if len(self.received) < end:
                break
            done.append(bytes(self.received[_HEAD.size : end]))
            del self.received[:end]
        return done


class StagingPool:
    """``Hl7Ingest.stager``: prepare a message in one of ``workers`` processes, driven by the
    event loop that awaits ``prepare`` (the loop of the listeners; one loop at a time)."""

    def __init__(
        self,
        workers: int,
        database_url: str,
        settings: Settings,
        *,
        sqlite_synchronous: str = "FULL",
    ) -> None:
        self._args = (database_url, sqlite_synchronous, settings)
        self._context = multiprocessing.get_context("spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.size = workers
        # started now, not on the first message (a worker takes about a second to start)
        self.workers = [self._start() for _ in range(workers)]
        self._idle = list(self.workers)
        self._queue: deque[tuple[bytes, asyncio.Future[Prepared | None]]] = deque()

    def _start(self) -> _Worker:
        requests_in, requests = self._context.Pipe(duplex=False)
        results, results_out = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_serve,
            args=(requests_in, results_out, *self._args),
            name="hl7-worker",
            daemon=True,
        )
        process.start()
        requests_in.close()
        results_out.close()
        # neither end ever blocks the loop: a message larger than the pipe, or a worker still
        # starting, is written on as the pipe takes it
        os.set_blocking(requests.fileno(), False)
        os.set_blocking(results.fileno(), False)
        worker = _Worker(process, requests, results)
        if self._loop is not None:
            self._loop.add_reader(results.fileno(), self._readable, worker)
        return worker

    async def prepare(self, raw: bytes, origin: Origin) -> Prepared | None:
        """The message prepared by a worker; None when its worker died meanwhile."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._attach(loop)
        if not self.workers:  # all died young; replacements are on their way
            return None
        future: asyncio.Future[Prepared | None] = loop.create_future()
        self._queue.append((pickle.dumps((raw, origin)), future))
        self._dispatch()
        try:
            prepared = await future
        except WorkerDied:
            return None
        return None if prepared is None else prepared.with_raw(raw)

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve ``loop`` from now on. Another loop may only have been here if it is closed
        (a test's): its messages in hand are lost with it, so their workers are replaced."""
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError("the HL7 worker pool serves one event loop at a time")
        self._loop = loop
        self._queue.clear()
        for n, worker in enumerate(self.workers):
            if worker.waiting is not None or worker.received:
                self._stop(worker)
                self.workers[n] = worker = self._start()  # registered by _start
            else:
                loop.add_reader(worker.results.fileno(), self._readable, worker)
        while len(self.workers) < self.size:  # replacements the old loop was to start
            self.workers.append(self._start())
        self._idle = list(self.workers)

    def _dispatch(self) -> None:
        while self._idle and self._queue:
            worker = self._idle.pop()
            payload, future = self._queue.popleft()
            if future.cancelled():  # its connection went away while it queued
                self._idle.append(worker)
                continue
            worker.waiting = future
            worker.sending += _HEAD.pack(len(payload)) + payload  # as ``send_bytes`` frames it
            self._send(worker)

    def _send(self, worker: _Worker) -> None:
        """Write what the request pipe takes now; the loop calls again when it takes more."""
        assert self._loop is not None
        fd = worker.requests.fileno()
        try:
            while worker.sending:
                del worker.sending[: os.write(fd, worker.sending)]
        except BlockingIOError:
            pass
        except OSError:  # the worker is gone; its result pipe tells the loop so
            worker.sending.clear()
        if worker.sending:
            self._loop.add_writer(fd, self._send, worker)
        else:
            self._loop.remove_writer(fd)

    def _readable(self, worker: _Worker) -> None:
        chunks, ended = [], False
        while True:
            try:
                chunk = os.read(worker.results.fileno(), _READ)
            except BlockingIOError:
                break
            if not chunk:
                ended = True
                break
            chunks.append(chunk)
        for message in worker.take(b"".join(chunks)):  # a last answer before the end counts
            future, worker.waiting = worker.waiting, None
            if future is not None and not future.cancelled():
                future.set_result(_loads(message))
            self._idle.append(worker)
        if ended:
            self._died(worker)
        self._dispatch()

    def _died(self, worker: _Worker) -> None:
        young = time.monotonic() - worker.started < RESTART_PAUSE
        if worker.waiting is not None and not worker.waiting.done():
            worker.waiting.set_exception(WorkerDied())
        self._stop(worker)
        log.error(
            "an HL7 worker process died (exit code %s); starting another%s",
            worker.process.exitcode,
            f" in {RESTART_PAUSE:g} s" if young else "",
        )
        self.workers.remove(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        if not self.workers:  # nobody left to take the queued messages: prepared here
            self._give_back(future for _, future in self._queue)
            self._queue.clear()
        assert self._loop is not None
        self._loop.call_later(RESTART_PAUSE if young else 0, self._replace)

    @staticmethod
    def _give_back(futures: Iterable[asyncio.Future[Prepared | None] | None]) -> None:
        """Messages no worker will prepare: their callers prepare them instead."""
        for future in futures:
            if future is not None and not future.done():
                future.set_exception(WorkerDied())

    def _replace(self) -> None:
        if self._closed:
            return
        try:
            worker = self._start()
        except OSError as exc:  # no process or pipe to be had now (limits): later
            log.error("an HL7 worker process could not be started: %s", exc)
            assert self._loop is not None
            self._loop.call_later(RESTART_PAUSE, self._replace)
            return
        self.workers.append(worker)
        self._idle.append(worker)
        self._dispatch()

    def _stop(self, worker: _Worker) -> None:
        if self._loop is not None and not self._loop.is_closed():
            if not worker.results.closed:
                self._loop.remove_reader(worker.results.fileno())
            if not worker.requests.closed:
                self._loop.remove_writer(worker.requests.fileno())
        worker.requests.close()  # the worker's request pipe ends: it returns
        worker.results.close()
        worker.process.join(5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(5)

    def close(self) -> None:
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._give_back(w.waiting for w in self.workers)
            self._give_back(future for _, future in self._queue)
            self._queue.clear()
        for worker in self.workers:
            worker.requests.close()  # every worker ends at once, then each is waited for
        for worker in self.workers:
            self._stop(worker)
        self.workers = []
        self._idle = []
