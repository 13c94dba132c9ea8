"""How the storage lane writes an arriving instance (``dicom.lane._Request``): the first and last
chunks through the page cache, the whole chunks between past it (O_DIRECT) where the file
system allows, and the same bytes and digest whichever way they went."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest

from dicom import checksum, lane
from dicom.lane import CHUNK, _Request

pytestmark = pytest.mark.skipif(not lane.O_DIRECT, reason="no O_DIRECT on this system")


def chunks(count: int, tail: int) -> list[bytes]:
    """``count`` whole chunks of distinct bytes, then a tail of ``tail`` bytes."""
    out = [bytes([n % 251]) * CHUNK for n in range(count)]
    return out + [bytes(range(256)) * (tail // 256) + b"\x01" * (tail % 256)]


def aligned(data: bytes) -> memoryview:
    """``data`` in page-aligned memory, as the lane's buffers are."""
    buffer = mmap.mmap(-1, max(len(data), 1))
    buffer[: len(data)] = data
    return memoryview(buffer)[: len(data)]


@pytest.fixture
def request_in() -> Iterator[Callable[[Path], _Request]]:
    made: list[_Request] = []

    def make(folder: Path) -> _Request:
        path = folder / f"receiving-{len(made)}.dcm"
        file = open(path, "wb", buffering=0)  # noqa: SIM115 - the request closes it
        request = _Request(1, 1, "1.2", "1.2.3", path, file, checksum.hasher())
        made.append(request)
        return request

    yield make
    for request in made:
        request.close()


def write_all(request: _Request, parts: list[bytes]) -> list[bool]:
    """Write ``parts`` as the lane does (``more`` but for the last); whether each went past the
    page cache."""
    went = []
    for n, part in enumerate(parts):
        request.write(aligned(part), more=n < len(parts) - 1)
        went.append(request.direct)
    request.close()
    return went


def test_the_chunks_between_the_first_and_the_last_go_past_the_page_cache(
    request_in: Callable[[Path], _Request], tmp_path: Path
) -> None:
    parts = chunks(4, 12_345)
    request = request_in(tmp_path)
    went = write_all(request, parts)
    if request.refused:
        pytest.skip("this file system refuses O_DIRECT")
    assert went == [False, True, True, True, False]
    data = b"".join(parts)
    assert request.path.read_bytes() == data
    assert (request.size, request.digest.hexdigest()) == (
        len(data),
        blake3.blake3(data).hexdigest(),
    )
    assert request.failure is None


def test_a_file_system_that_refuses_o_direct_gets_the_page_cache(
    request_in: Callable[[Path], _Request],
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    folder = shm / f"yilian-test-{os.getpid()}"
    folder.mkdir()
    try:
        parts = chunks(3, 100)
        request = request_in(folder)
        went = write_all(request, parts)
        data = b"".join(parts)
        assert request.path.read_bytes() == data
        assert request.digest.hexdigest() == blake3.blake3(data).hexdigest()
        assert request.refused == (not any(went))  # tmpfs took it (Linux 6.6 and later) or not
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def test_a_write_refused_past_the_page_cache_is_written_through_it(
    request_in: Callable[[Path], _Request], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the file system takes the O_DIRECT flag but then refuses the write (EINVAL), the
    chunk goes through the page cache and so does the rest."""
    real = os.pwrite
    refused = []

    def pwrite(fd: int, data: object, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & lane.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd, data, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "pwrite", pwrite)
    parts = chunks(4, 5000)
    request = request_in(tmp_path)
    went = write_all(request, parts)
    data = b"".join(parts)
    assert refused == [CHUNK]  # tried once
    assert went == [False] * 5 and request.refused and request.failure is None
    assert request.path.read_bytes() == data
    assert request.digest.hexdigest() == blake3.blake3(data).hexdigest()
