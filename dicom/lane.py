"""The storage lane: C-STORE and C-ECHO on a storage association, answered on the connection's
own thread, without pynetdicom's DIMSE machinery.

A modality or an ECG cart opens an association with storage contexts only (and Verification),
sends C-STORE after C-STORE, and releases. pynetdicom handles each request through a state
machine turn per PDU, a primitive and a PDU object each, a queue to the association's thread,
the command set decoded into a pydicom Dataset, an event, and the same again for the answer:
more CPU than the rest of a small instance's filing. On such an association, once it is
established, the lane reads each PDU itself (``dicom.reactor`` hands it the connection's
turns):

- a P-DATA-TF PDU's command fragments are gathered and read by hand (``dicom.commands``); a
  C-STORE request opens the instance's file in the store's scratch folder, with the file meta
  information pynetdicom writes, and its dataset fragments are written to it a megabyte at a
  time as they arrive, never held in memory whatever the PDU length (the megabytes between the
  first and the last past the page cache, on a chunk-writer thread while the connection fills
  the other buffer: ``_Request.write``, ``StorageLane._flush``), and hashed
  (``dicom.checksum``) as they are written, while they are still in the processor's cache:
  filing never reads the file back; the last fragment hands the file, its size and digest to
  the server's ``store`` (the call pynetdicom's C-STORE event makes, less the digest) and the
  answer goes back with its status and error comment; a C-ECHO is answered at once;
- every other PDU (release, abort) goes to pynetdicom as it would have, so the association ends
  exactly as before (events, logs, timers);
- a transfer that breaks off leaves its partial file for the server to quarantine
  (``take_partial``), as pynetdicom's does;
- an instance whose file cannot be made or written (a full disk) is still read to its end, its
  bytes dropped and its file removed, and answered 0xA700 (out of resources) with the system's
  reason: the sender keeps it and sends it again later, and the association goes on (the next
  instance may fit, and the operator has a log line);
- anything a storage association may not carry (a command of another service, a dataset with no
  request, an unknown presentation context, a malformed command set) aborts the association
  (pynetdicom's Evt19: an A-ABORT goes to the peer), with a log line naming what was wrong.

An association with any other context (a workstation's query/retrieve, C-GET's storage
sub-operations) stays wholly with pynetdicom, and so does one whose PDUs someone listens to
(``EVT_PDU_RECV``, ``EVT_DATA_RECV``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from dicom import checksum, commands
from dicom.commands import CommandError

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
UNHANDLED = 0xC211  # pynetdicom's status for a handler that raised: the sender may retry
OUT_OF_RESOURCES = 0xA700  # the file could not be written (a full disk): the sender may retry
MAX_COMMAND = 64 * 1024  # bytes of one command set: a few hundred are usual
MAX_OTHER_PDU = 1024 * 1024  # bytes of a PDU other than P-DATA-TF (release, abort: 10)
# bytes of a dataset gathered from the connection before they are written and hashed: each
# write and each hash lets go of the GIL, and taking it back can wait for another thread's
# turn, so fewer, larger ones (64 fragments of 128 KB made the large instances 6% slower)
CHUNK = 1024 * 1024
O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0: not on this system
# threads writing chunks of large instances (each lane has one chunk at a time); an executor
# starts its threads on its first submit, so a gateway receiving no large instance has none
WRITERS = ThreadPoolExecutor(8, thread_name_prefix="dicom-chunk-writer")

# (calling association, file, SOP Class UID, (size, content digest) of the file) -> (status, error
# comment)
Store = Callable[[Any, Path, str, tuple[int, str]], tuple[int, str | None]]


class _Closed(Exception):
    """The connection ended (or timed out) in the middle of a PDU."""


class _Invalid(Exception):
    """Something a storage association may not carry."""


@dataclass
class _Request:
    context_id: int
    message_id: int
    sop_class: str
    sop_instance: str
    path: Path | None  # None: no file could be made for it (``failure``)
    file: IO[bytes] | None  # unbuffered: every write is the lane's own chunk
    digest: Any  # the content digest (``dicom.checksum``) of what was written so far
    size: int = 0
    failure: OSError | None = None  # why its file could not be written: the rest is dropped
    direct: bool = False  # writing past the page cache now
    refused: bool = False  # the file system does not write past it

    def write(self, data: bytes | memoryview, *, more: bool = False) -> None:
        """Write ``data`` (a chunk: the whole buffer when ``more`` of the instance follows) to
        the file. The first chunk and the last go through the page cache (filing reads the
        header back from the first); the whole chunks between, at offsets that are multiples
        of ``CHUNK``, go straight to the disk from the lane's buffer (``_direct``)."""
        if self.failure is not None or self.file is None:
            return
        try:
            if self.size:  # not the first chunk
                self._direct(more)
            try:
                _write_all(self.file, data, self.size)
            except OSError as exc:
                if not self.direct or exc.errno != errno.EINVAL:
                    raise
                self._direct(False)  # refused after all: through the page cache
                self.refused = True
                _write_all(self.file, data, self.size)
        except OSError as exc:
            self.fail(exc)
            return
        self.digest.update(data)  # while the bytes are in the cache, without the GIL
        if more and not self.direct:
            _start_writeback(self.file, self.size, len(data))
        self.size += len(data)

    def _direct(self, on: bool) -> None:
        """Write past the page cache (O_DIRECT) or through it from now on. A large instance
        written through it cost a copy into the cache and the kernel's writeback later, 2 ms
        of CPU for 8 MB (0.4 ms past it), and is made durable before filing anyway. Where the
        file system refuses it (tmpfs), through the cache with ``_start_writeback``."""
        if not O_DIRECT or self.file is None or self.refused or self.direct == on:
            return
        fd = self.file.fileno()
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | O_DIRECT if on else flags & ~O_DIRECT)
        except OSError:
            if not on:  # the last chunk could not be written: the instance fails
                raise
            self.refused = True
            return
        self.direct = on

    def fail(self, exc: OSError) -> None:
        self.failure = exc
        log.error(
            "an arriving DICOM instance cannot be written (%s): the rest of it is read and "
            "dropped, and the sender told to send it again later",
            exc.strerror or type(exc).__name__,
        )

    def close(self) -> None:
        """Close the file (closing can fail too)."""
        if self.file is None or self.file.closed:
            return
        try:
            self.file.close()
        except OSError as exc:
            if self.failure is None:
                self.fail(exc)

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            with suppress(OSError):
                self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Partial:
    """What arrived of an instance whose transfer broke off."""

    path: Path
    sop_instance: str
    sop_class: str


class StorageLane:
    def __init__(
        self, contexts: dict[int, tuple[str, str]], store: Store, new_file: Callable[[], Path]
    ) -> None:
        """``contexts``: the accepted presentation contexts, ID -> (abstract syntax, transfer
        syntax); ``new_file``: an empty file for an arriving instance, the lane's to fill
        (``storage.SpareFiles.take``)."""
        self.contexts = contexts
        self.store = store
        self.new_file = new_file
        self._command = bytearray()
        self._request: _Request | None = None
        # two page-aligned buffers (as writing past the page cache needs): the connection
        # fills one while the other is written (``_flush``)
        self._views = [memoryview(mmap.mmap(-1, CHUNK)) for _ in range(2)]
        self._view = self._views[0]
        self._filled = 0  # bytes of the buffer holding the arriving dataset's next bytes
        self._writing: Future[None] | None = None  # the other buffer's chunk, being written

    # -- the connection's turn ---------------------------------------------------------------

    def read(self, provider: Any) -> None:
        """Read and act on one PDU of ``provider`` (pynetdicom's DUL service provider), whose
        socket has data."""
        try:
            self._read(provider)
        except _Closed:
            provider.event_queue.put("Evt17")  # transport connection closed
        except (_Invalid, CommandError) as exc:
            log.warning(
                "DICOM association from %s aborted: %s",
                str(provider.assoc.requestor.ae_title).strip(),
                exc,
            )
            provider.event_queue.put("Evt19")  # invalid PDU: pynetdicom sends A-ABORT

    def take_partial(self) -> Partial | None:
        """The instance whose transfer broke off, its file closed (None: nothing was
        arriving). The caller keeps the file."""
        request, self._request = self._request, None
        if request is None:
            return None
        self._flush(request)
        if request.failure is not None or request.path is None:
            request.discard()  # what could not be written is not worth keeping
            return None
        request.close()
        return Partial(request.path, request.sop_instance, request.sop_class)

    def _read(self, provider: Any) -> None:
        sock = provider.socket.socket
        pdu_type, _, length = struct.unpack(">BBL", _exact(sock, 6))
        if pdu_type != commands.P_DATA_TF:
            self._hand_over(provider, pdu_type, length)
            return
        remaining = length
        while remaining:
            if remaining < 6:
                raise _Invalid("a P-DATA-TF PDU ends inside a PDV item header")
            item_length, context_id, control = struct.unpack(">IBB", _exact(sock, 6))
            if item_length < 2 or item_length + 4 > remaining:
                raise _Invalid("a PDV item's length does not fit its P-DATA-TF PDU")
            if context_id not in self.contexts:
                raise _Invalid(f"presentation context {context_id} was not accepted")
            remaining -= item_length + 4
            size = item_length - 2
            if control & commands.COMMAND:
                self._gather(sock, size, context_id, control, provider)
            else:
                self._write(sock, size, context_id, control, provider)

    def _gather(self, sock: Any, size: int, context_id: int, control: int, provider: Any) -> None:
        if self._request is not None:
            raise _Invalid("a command arrived while a dataset was still arriving")
        if len(self._command) + size > MAX_COMMAND:
            raise _Invalid(f"a command set of more than {MAX_COMMAND} bytes")
        self._command += _exact(sock, size)
        if control & commands.LAST:
            elements = commands.parse(bytes(self._command))
            self._command.clear()
            self._begin(elements, context_id, provider)

    def _begin(self, elements: dict[int, bytes], context_id: int, provider: Any) -> None:
        field = commands.read_us(elements, commands.COMMAND_FIELD)
        message_id = commands.read_us(elements, commands.MESSAGE_ID)
        abstract, transfer = self.contexts[context_id]
        if field == commands.C_ECHO_RQ:
            _send(provider, context_id, commands.c_echo_rsp(abstract, message_id))
            return
        if field != commands.C_STORE_RQ:
            raise _Invalid(f"command 0x{field:04X} is not served on a storage association")
        if commands.read_us(elements, commands.DATASET_TYPE) == commands.NO_DATASET:
            raise _Invalid("a C-STORE request without a dataset")
        sop_class = commands.read_uid(elements, commands.AFFECTED_SOP_CLASS)
        sop_instance = commands.read_uid(elements, commands.AFFECTED_SOP_INSTANCE)
        request = _Request(
            context_id, message_id, sop_class, sop_instance, None, None, checksum.hasher()
        )
        self._request = request
        try:  # the file is closed when the instance is complete, or by take_partial
            request.path = self.new_file()
            request.file = open(request.path, "wb", buffering=0)  # noqa: SIM115
        except OSError as exc:
            request.fail(exc)
        # the file meta information opens the first chunk, so every chunk starts at a
        # multiple of CHUNK in the file
        meta = file_meta(sop_class, sop_instance, transfer)
        self._view[: len(meta)] = meta
        self._filled = len(meta)

    def _write(self, sock: Any, size: int, context_id: int, control: int, provider: Any) -> None:
        request = self._request
        if request is None:
            raise _Invalid("a dataset fragment with no C-STORE request before it")
        if context_id != request.context_id:
            raise _Invalid("a dataset fragment on another presentation context than its request")
        timer = provider._idle_timer
        while size:
            got = _recv_into(sock, self._view[self._filled :], min(size, CHUNK - self._filled))
            self._filled += got
            if self._filled == CHUNK:
                self._flush(request, more=True)
            timer.restart()  # a long PDU arriving is not silence
            size -= got
        if control & commands.LAST:
            self._flush(request)
            self._request = None
            request.close()
            self._answer(request, provider)

    def _flush(self, request: _Request, *, more: bool = False) -> None:
        """Write the buffer's bytes. A whole chunk with ``more`` to follow is written (and
        hashed) on a ``WRITERS`` thread while the connection fills the other buffer: written
        past the page cache, a chunk waits for the disk, 1.5 ms for a megabyte when four
        associations write at once. The last is written here once the one before is done."""
        data = self._view[: self._filled]
        self._filled = 0
        self._written()
        if not more:
            request.write(data)
            return
        self._writing = WRITERS.submit(request.write, data, more=True)
        self._view = self._views[self._views[0] is self._view]

    def _written(self) -> None:
        """Wait for the chunk being written (a write that fails marks its request failed)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def _answer(self, request: _Request, provider: Any) -> None:
        if request.failure is not None or request.path is None:
            request.discard()
            why = request.failure.strerror if request.failure else None
            status: int = OUT_OF_RESOURCES
            comment: str | None = f"cannot be written now: {why or 'a disk error'}"[:64]
        else:
            status, comment = self._file(request, request.path, provider)
        rsp = commands.c_store_rsp(
            request.sop_class, request.sop_instance, request.message_id, status, comment
        )
        _send(provider, request.context_id, rsp)

    def _file(self, request: _Request, path: Path, provider: Any) -> tuple[int, str | None]:
        """The server's answer to an instance that arrived whole into ``path``."""
        # the association's thread watches the network timeout while this one files: the time
        # spent filing is ours, not the sender's silence (pynetdicom's own C-STORE handler runs
        # on that thread, which then does not look), so the timer is held still meanwhile
        timer = provider._idle_timer
        timer.restart()
        timer.stop()
        try:
            measured = (request.size, request.digest.hexdigest())
            return self.store(provider.assoc, path, request.sop_class, measured)
        except Exception:  # noqa: BLE001 - as pynetdicom answers a handler that raised
            log.exception("storing a SOP instance failed")
            return UNHANDLED, None
        finally:
            timer.restart()

    def _hand_over(self, provider: Any, pdu_type: int, length: int) -> None:
        """A PDU that is not P-DATA-TF goes to pynetdicom, as its ``_read_pdu_data`` would."""
        if pdu_type not in (0x01, 0x02, 0x03, 0x05, 0x06, 0x07) or length > MAX_OTHER_PDU:
            raise _Invalid(f"a PDU of type 0x{pdu_type:02X} and {length} bytes")
        data = bytearray(struct.pack(">BBL", pdu_type, 0, length))
        data += _exact(provider.socket.socket, length)
        try:
            pdu, event = provider._decode_pdu(data)
        except Exception as exc:  # noqa: BLE001 - pynetdicom's answer: an invalid PDU
            raise _Invalid(f"a PDU of type 0x{pdu_type:02X} that cannot be decoded") from exc
        provider.event_queue.put(event)
        provider._recv_pdu.put(pdu)


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """The preamble, prefix and File Meta Information (PS3.10 7.1) pynetdicom writes before a
    received dataset (``create_file_meta`` and pydicom's ``write_file_meta_info``)."""

    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        if vr == b"OB":
            return struct.pack("<HH2sHI", 0x0002, tag, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 0x0002, tag, vr, len(value)) + value

    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    body = b"".join(
        (
            element(0x0001, b"OB", b"\x00\x01"),
            element(0x0002, b"UI", commands.uid(sop_class)),
            element(0x0003, b"UI", commands.uid(sop_instance)),
            element(0x0010, b"UI", commands.uid(transfer_syntax)),
            element(0x0012, b"UI", commands.uid(str(PYNETDICOM_IMPLEMENTATION_UID))),
            element(0x0013, b"SH", version + b" " * (len(version) % 2)),
        )
    )
    length = element(0x0000, b"UL", struct.pack("<I", len(body)))
    return b"\x00" * 128 + b"DICM" + length + body


def _write_all(file: IO[bytes], data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (a write may take part of it)."""
    view, fd = memoryview(data), file.fileno()
    while view:
        written = os.pwrite(fd, view, offset)
        if not written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[written:], offset + written


def _start_writeback(file: IO[bytes], offset: int, length: int) -> None:
    """Have the kernel start writing a range of ``file`` just written to the disk, without
    waiting for it. A large instance is made durable (fsync) before it is filed: left to that
    moment, its 8 MB went to the disk at once, and on ext4 the index's commit waited for the
    other associations' large files too. Linux's POSIX_FADV_DONTNEED starts the writeback of
    the range's dirty pages and drops only the clean ones (none yet). Large instances over four
    associations: +13% side by side."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:  # not on this system: the fsync does it all
        return
    with suppress(OSError):  # advice only: the fsync reports a failing disk
        advise(file.fileno(), offset, length, os.POSIX_FADV_DONTNEED)


def _send(provider: Any, context_id: int, command: bytes) -> None:
    """A response command set as one P-DATA-TF PDU (pynetdicom queues Evt17 if it fails)."""
    provider.socket.send(commands.p_data_tf(context_id, commands.COMMAND | commands.LAST, command))


def _exact(sock: Any, n: int) -> bytes:
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        got += _recv_into(sock, view[got:], n - got)
    return bytes(buffer)


def _recv_into(sock: Any, view: memoryview, n: int) -> int:
    try:
        got: int = sock.recv_into(view, n)
    except (OSError, ValueError) as exc:  # reset, timed out (network timeout), closed
        raise _Closed from exc
    if not got:
        raise _Closed
    return got
