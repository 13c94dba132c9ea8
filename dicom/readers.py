"""Reading arriving objects' headers in processes of their own, so filing uses both cores.

Filing a small instance holds the interpreter's lock about two milliseconds, and reading its
header and hashing its bytes was the largest single share of that (a CT carries some 250
elements to walk past). Four associations at once then went no faster than the lock allowed,
with the second core half idle. ``Readers`` keeps worker processes (one is enough for four
associations on two cores; each holds about 70 MB) that each take the path of an object that
has arrived whole, read it, hash it (``dicom.checksum``) and read its header
(``dicom.header.quick``), and answer the header with the object's size and digest; the thread
filing the object waits for the answer without holding the lock, and everything that decides
(the checks, the unit, the status) stays in the gateway's process.

A worker answers None for what it does not read (an unusual header, a file it cannot open),
and an object over ``ingest.IN_MEMORY`` is not sent to one: the gateway's process reads that
one itself, as it always did, and every ECG too (its waveform is mapped from pydicom's
dataset). A worker that dies is replaced and the object is read in the gateway's process: the
sender never notices.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import queue
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from dicom import checksum, header
from dicom.header import Header

log = logging.getLogger(__name__)

Read = tuple[Header, tuple[int, str] | None]  # the header, (size, digest) unless not asked
WAIT = 5.0  # seconds a thread waits for an idle worker before it reads the object itself


def read_whole(path: Path, limit: int, *, hashed: bool = True) -> Read | None:
    """The header, size and content digest (``hashed``; else None in its place) of the object at
    ``path`` when it is at most ``limit`` bytes and its header plain (``header.quick``); else
    None."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        return None
    found = header.quick(data)
    if found is None:
        return None
    return found, (len(data), checksum.of_bytes(data)) if hashed else None


def _serve(conn: Connection, limit: int) -> None:
    """A worker: answer each path it is sent, until its pipe closes."""
    while True:
        try:
            request = conn.recv_bytes().decode()  # "h" or "-" (hashed or not), then the path
        except (EOFError, OSError):
            return
        try:
            answer = read_whole(Path(request[1:]), limit, hashed=request[0] == "h")
        except Exception:  # noqa: BLE001 - the gateway's process reads it and says why
            answer = None
        conn.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection


class Readers:
    """``count`` worker processes reading headers (``read``), for any thread."""

    def __init__(self, count: int, limit: int) -> None:
        self.limit = limit
        self._context = multiprocessing.get_context("spawn")
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._closed = False
        for _ in range(count):
            self._idle.put(self._start())

    def _start(self) -> _Worker:
        ours, theirs = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_serve, args=(theirs, self.limit), name="dicom-reader", daemon=True
        )
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        with self._lock:
            self._workers.append(worker)
        return worker

    def read(self, path: Path, *, hashed: bool = True) -> Read | None:
        """What a worker read of the object at ``path`` (None: read it here); ``hashed``:
        with its size and digest (the storage lane has them already)."""
        try:
            if self._closed or path.stat().st_size > self.limit:
                return None
        except OSError:  # the gateway's own reading says what is wrong
            return None
        try:
            worker = self._idle.get(timeout=WAIT)
        except queue.Empty:  # every worker busy or being replaced that long: read it here
            return None
        try:
            worker.conn.send_bytes((("h" if hashed else "-") + str(path)).encode())
            answer: Read | None = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            log.error("a DICOM reader process ended (%s): starting another", type(exc).__name__)
            self._retire(worker)
            if not self._closed:
                self._idle.put(self._start())
            return None
        self._idle.put(worker)
        return answer

    def _retire(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
        worker.conn.close()
        worker.process.join(1)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(5)

    def close(self) -> None:
        """Stop the workers (after the listeners have stopped)."""
        self._closed = True
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            self._retire(worker)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._workers if w.process.pid is not None]
