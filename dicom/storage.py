"""Where DICOM objects live: a small interface, files under the data folder for now.

Objects are kept exactly as received (the bytes of the dataset with its File Meta Information),
never decoded and encoded again. ``put`` makes an object durable before it returns (written to a
temporary file, renamed, fsynced, its folder fsynced, and any folder it made): the C-STORE success
status may go out only after it. Until it returns, a crash can leave a partial file under the key;
what says an object is there is its index row, committed after. Keys are relative paths; an object
store (S3 and the like) can take the same keys later.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024
SPARES = 32  # empty files kept ready in the scratch folder (``SpareFiles``)

log = logging.getLogger(__name__)


class ObjectStore(Protocol):
    def put_file(self, key: str, source: Path, *, eager: bool = False) -> None:
        """Move (or copy) the file ``source`` to ``key``, durably by the time it returns.
        ``eager``: sooner, for more CPU (a caller with nothing else in flight)."""

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def open(self, key: str) -> BinaryIO: ...

    def path(self, key: str) -> Path:
        """A local file holding the object (for readers that need one)."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def scratch(self) -> Path:
        """A folder for objects being received, on the same file system as the store."""


class FileStore:
    """Objects as files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._scratch = root / ".incoming"
        self._scratch.mkdir(exist_ok=True)
        # the folders' fsyncs of ``put_file(eager=True)`` (its thread starts on first use)
        self._folder_syncs = ThreadPoolExecutor(1, thread_name_prefix="folder-sync")

    def path(self, key: str) -> Path:
        relative = Path(key)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"object key outside the store: {key!r}")
        return self.root / relative

    def scratch(self) -> Path:
        return self._scratch

    def put_file(self, key: str, source: Path, *, eager: bool = False) -> None:
        """The file is renamed first and fsynced after, then its folder: on ext4 the file's
        fsync commits the journal with the new name in it (fsynced before the rename, each
        object cost two journal commits). ``eager``: the folder's fsync runs on another thread
        meanwhile, the two flushes of the disk waited for at once: small instances over one
        association +16 to 19% side by side; with every filing eager, four associations went
        5% slower (the thread's turns of the interpreter's lock), so ingest asks for it only
        when no other filing is in flight."""
        target = self.path(key)
        _make_folders(target.parent)
        try:
            os.replace(source, target)
        except OSError:  # another file system: a whole copy under the key, then
            tmp = target.with_name(target.name + ".part")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
            source.unlink(missing_ok=True)
        folder = self._folder_syncs.submit(_fsync_dir, target.parent) if eager else None
        _fsync_path(target)
        if folder is None:
            _fsync_dir(target.parent)
        else:
            folder.result()

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        _make_folders(target.parent)
        tmp = self._scratch / f"{os.getpid()}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        with self.open(key) as f:
            yield from iter(lambda: f.read(CHUNK), b"")


class SpareFiles:
    """Empty files made ahead of need in a folder, for objects about to arrive.

    Making a new file is the dearest step of receiving a small object on some file systems: on
    the ext4 disk of the machine the benchmarks ran on, 0.7 ms of kernel time a file, where
    opening an existing one takes 8 us and a folder 50 us. A modality sending over one
    association waits for each answer, so that cost was on every instance's path. A thread
    keeps ``keep`` empty files ready; ``take`` hands one over (or makes one at once when none is
    ready) and the thread makes the next while the object arrives. Spares left by a stop are
    empty files under the receiving prefix, removed or reused at the next start."""

    def __init__(self, folder: Path, prefix: str, new_name: Callable[[], str], keep: int = SPARES):
        self.folder = folder
        self.prefix = prefix
        self.keep = keep
        self._new_name = new_name
        self._ready: deque[Path] = deque()
        self._wanted = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def take(self) -> Path:
        """An empty file of the folder, the caller's from now on."""
        self._ensure_started()
        try:
            path = self._ready.popleft()
        except IndexError:
            path = self._make()
        self._wanted.set()
        return path

    def stop(self) -> None:
        """No more spares; those ready are removed."""
        self._stopped = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(10)
        while self._ready:
            self._ready.popleft().unlink(missing_ok=True)

    def _ensure_started(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="spare-files", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            self._wanted.wait()
            self._wanted.clear()
            while len(self._ready) < self.keep and not self._stopped:
                try:
                    self._ready.append(self._make())
                except OSError as exc:  # a full disk, say: each take makes its own (and fails)
                    log.warning("making spare files failed: %s", exc)
                    break

    def _make(self) -> Path:
        path = self.folder / f"{self.prefix}{self._new_name()}.dcm"
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        return path


def _make_folders(folder: Path) -> None:
    """``folder`` and any missing parent, each new one durable in its parent."""
    if folder.is_dir():
        return
    _make_folders(folder.parent)
    with suppress(FileExistsError):  # made by another thread meanwhile: durable here too
        folder.mkdir()
    _fsync_dir(folder.parent)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
