"""A lock per key, held by one thread at a time of this process and of every other process
filing into the same store.

Filing an object places its file under its key before its index row commits, and refuses a
second object of the same SOP Instance UID with other content only once it reads the first
one's row: two filings of one UID at once would both place their file, and the one refused
would take the stored object's file with it. ``KeyedLocks`` makes them take turns. Within a
process a ``threading.Lock`` per key does; with a lock file, a byte of that file per key,
locked as an open file description lock (``F_OFD_SETLKW``: owned by the open file, not by the
process, so two threads of one process holding different keys that fall on the same byte
exclude each other instead of releasing each other's lock), covers the DICOM processes serving
one listening socket (``gateway.dicom_processes``) and a ``yilian dicom quarantine retry`` run
beside the gateway. The kernel lets a lock go with the process that held it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_FLOCK = struct.Struct("hhqqi4x")  # Linux's struct flock: type, whence, start, length, pid


class KeyedLocks:
    """A lock per key, kept for as long as someone holds or waits for it; ``path``: the lock
    file shared with other processes (None: this process only)."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[threading.Lock, list[int]]] = {}
        self._path = path
        self._files: list[int] = []  # open descriptions of the lock file not in use

    def busy(self) -> int:
        """How many keys are held or waited for in this process."""
        return len(self._held)

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock:
            lock, users = self._held.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock, self._across(key):
                yield
        finally:
            with self._lock:
                users[0] -= 1
                if not users[0]:
                    del self._held[key]

    @contextmanager
    def _across(self, key: str) -> Iterator[None]:
        """The key's byte of the lock file, locked for as long as the caller holds the key."""
        fd = self._file()
        if fd is None:
            yield
            return
        byte = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=7).digest(), "big")
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0))
        except OSError as exc:  # a file system without such locks: this process's turns only
            self._give_up(fd, exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, byte, 1, 0))
            with self._lock:
                self._files.append(fd)

    def _file(self) -> int | None:
        """An open description of the lock file of its own (None: no lock file)."""
        with self._lock:
            if self._path is None:
                return None
            if self._files:
                return self._files.pop()
        try:
            return os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._give_up(None, exc)
            return None

    def _give_up(self, fd: int | None, exc: OSError) -> None:
        log.warning(
            "filing locks across processes are off (%s): run one DICOM process on this store",
            exc.strerror or exc,
        )
        if fd is not None:
            os.close(fd)
        with self._lock:
            self._path = None

    def close(self) -> None:
        with self._lock:
            files, self._files = self._files, []
        for fd in files:
            os.close(fd)
