"""Where DICOM objects live: a small interface, files under the data folder for now.

Objects are kept exactly as received (the bytes of the dataset with its File Meta Information),
never decoded and encoded again. ``put`` makes an object durable before it returns (written to a
temporary file, fsynced, renamed, the folder fsynced): the C-STORE success status may go out only
after it. Keys are relative paths; an object store (S3 and the like) can take the same keys later.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1024 * 1024


class ObjectStore(Protocol):
    def put_file(self, key: str, source: Path) -> None:
        """Move (or copy) the file ``source`` to ``key``, durably."""

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

    def path(self, key: str) -> Path:
        relative = Path(key)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ValueError(f"object key outside the store: {key!r}")
        return self.root / relative

    def scratch(self) -> Path:
        return self._scratch

    def put_file(self, key: str, source: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        _fsync_path(source)
        try:
            os.replace(source, target)
        except OSError:  # another file system: copy, then make the copy durable
            tmp = target.with_name(target.name + ".part")
            shutil.copyfile(source, tmp)
            _fsync_path(tmp)
            os.replace(tmp, target)
            source.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
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
