"""C-STORE SCU: send stored DICOM files to a peer (another Yilian's SCP, a hospital PACS), over TLS
when the destination has a client context.

    report = send(paths, Destination("pacs.city.example", 11112, "CITY_PACS", tls=context))
    report.sent     # SOP Instance UIDs the peer stored (success or warning status), in path order
    report.failed   # (SOP Instance UID, DIMSE status, reason): the peer refused that instance

A refused instance is a value in the report (also one whose SOP class and syntax the peer did
not accept: status 0x0122); a connection or association that could not be made, or broke, is a
``SendError`` that says whether retrying can help (``permanent``).

Associations. Up to ``associations`` (default: ``default_associations``) run at once, the first
in the caller's thread and each other in a thread of its own, each taking the next file from
one shared queue. A C-STORE SCU waits for each answer before its next request, and a PACS spends
much of an instance's time after its last byte arrived (writing, indexing): with two
associations one sends while the other's instance is stored. They are opened one after the
other, each once the one before is open: the first one's failure to open is the send's (a
``SendError``, as with one association); an extra one the peer will not open (a PACS that
limits associations per caller) is logged and the open ones carry the files. Once sending
began, the first failure (a ``SendError``, or an exception from ``progress``) stops the others
before their next PDU or answer and is raised. ``progress`` is called by one thread at a time,
and not after a failure. Files needing more than 128 presentation contexts are sent in groups,
one after the other. Each file is proposed with its own SOP Class and transfer syntax, read
from its file meta information only, and an uncompressed file also with the other Little
Endian syntax.

The bytes sent are the bytes stored. The file meta information is read once (``_read_meta``,
which also notes where the dataset starts). Each C-STORE request is made here
(``_StoreScu``), not by ``Association.send_c_store``, which would read the meta information
again, encode the command with pydicom, pause and restart the association's thread around each
request (up to a millisecond: that loop sleeps 1 ms) and give every request Message ID 1. The
command set is encoded by ``dicom.commands``, the dataset read from the file 256 KB at a time
without decoding it, both cut into P-DATA-TF PDUs here (``_pdus``), and each block of PDUs is
written by pynetdicom's connection thread in one piece (``_send_blocks``) instead of one state
machine turn per PDU, about half the sender's CPU time with Orthanc's 16 KB PDUs. The answer is
taken from pynetdicom's DIMSE queue, watching for a stopped send or a lost connection. Two more
facts make the streaming real:
- PDUs go to the connection through an unbounded queue (``DULServiceProvider.send_pdu``), so a
  file would be read as fast as the disk allows, not as fast as the peer takes it: ``_put``
  holds the reader back when a few MB are queued.
- A peer that accepts PDUs of any length (maximum length 0, as Yilian's SCP does) would have the
  whole dataset in one PDU: at most 1 MiB is sent per PDU (``_cap_pdu_length``; smaller PDUs
  than the peer's maximum are always allowed).
A 1 GB instance thus passes through a few MB of memory. Only a file whose syntax the peer did
not accept, while it took the other Little Endian one, is decoded and encoded (in memory).

A pynetdicom race is worked around: its association thread can take a C-STORE answer meant for
the sender and drop it (``_answers_to_the_sender``; the thread is also held paused while we
send, ``_hold_reactor``). pynetdicom logs TLS and socket errors instead of raising them:
``_TlsWatch`` stands in for the destination's context, so the most telling error of the
connection, and whether it came while connecting, in the TLS handshake or after it, is known.
"""

from __future__ import annotations

import logging
import math
import queue
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _handlers, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import (
    GENERAL_STATUS,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from dicom import commands, reactor

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # presentation contexts in one association (PS3.8: odd IDs 1..255)
MAX_PDU_SENT = 1024 * 1024  # bytes of dataset per PDU we send, whatever the peer accepts
QUEUED_BYTES = 8 * 1024 * 1024  # dataset bytes read ahead of the connection, per association
BLOCK_BYTES = 256 * 1024  # PDUs handed to the connection's thread at a time (_send_blocks)
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
NO_CONTEXT = 0x0122  # "SOP Class not supported": the peer accepted no context for the file
MAX_ASSOCIATIONS = 3  # default_associations: the most opened at once by default
FILES_PER_ASSOCIATION = 8  # default_associations: an association more for each this many files
PRIORITY = 0x0002  # C-STORE priority LOW, as pynetdicom's send_c_store sent it
_POLL = 0.05  # seconds between looks at a stopped send or a lost connection while waiting

_T = TypeVar("_T")


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    ae_title: str  # called AE title
    calling_ae: str = "YILIAN"
    tls: ssl.SSLContext | None = None  # client context (with our client certificate) or None
    server_hostname: str | None = None  # for the TLS hostname check (default: host)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}{' (TLS)' if self.tls else ''}"


@dataclass
class SendReport:
    sent: list[str] = field(default_factory=list)  # SOP Instance UIDs stored (success, warning)
    failed: list[tuple[str, int, str]] = field(default_factory=list)  # (UID, status, reason)


class SendError(Exception):
    """The association could not be made, or broke. ``permanent``: retrying will not help
    (association rejected, TLS certificate refused either way); otherwise it may (connection
    refused, timeout, connection lost mid-way)."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    offset: int = 0  # where the dataset starts, after the file meta information
    position: int = 0  # in the paths given to send(): the report keeps that order

    def contexts(self) -> list[tuple[str, str]]:
        """(abstract syntax, transfer syntax) to propose: the file's own first."""
        own = [(self.sop_class, self.transfer_syntax)]
        if self.transfer_syntax not in UNCOMPRESSED:
            return own  # another syntax would mean decoding the pixel data
        other = next(ts for ts in UNCOMPRESSED if ts != self.transfer_syntax)
        return [*own, (self.sop_class, other)]


def default_associations(files: int) -> int:
    """Associations for ``files`` instances: one for each FILES_PER_ASSOCIATION files, at most
    MAX_ASSOCIATIONS. Measured on this project's 2-CPU machine with a 200-image CT study to
    Orthanc over TLS (docs/benchmarks.md, "forwarding a study"; ``bench/teleconsult_forward.py
    --sender 1,2,3,4``): the sender alone took 3.63, 2.40, 1.83 and 2.24 s with 1 to 4
    associations beside storescu's 2.97 s. A fourth gains nothing while the sender and the PACS
    share two CPUs, and costs CPU; with 8 or 20 files a second one gained about 10% (a TLS
    handshake, a thread), so a study of a few images keeps one. Over a WAN, where each C-STORE
    waits a round trip, more associations would gain more; a PACS that refuses the extra ones
    still gets the files over the others."""
    return max(1, min(MAX_ASSOCIATIONS, math.ceil(files / FILES_PER_ASSOCIATION)))


def send(
    paths: Sequence[Path],
    destination: Destination,
    *,
    timeout: float = 30,
    progress: Callable[[str], None] | None = None,
    associations: int | None = None,
) -> SendReport:
    """C-STORE each file to ``destination``; ``progress(uid)`` after each one it stored.

    ``timeout`` bounds each wait: connecting with the TLS handshake, the association answer, each
    C-STORE answer, and the connection taking no data. ``associations``: how many at once
    (default ``default_associations(len(paths))``; never more than there are files).
    """
    if associations is not None and associations < 1:
        raise ValueError(f"associations must be at least 1, not {associations}")
    files = [_read_meta(Path(p), n) for n, p in enumerate(paths)]
    wanted = associations or default_associations(len(files))
    run = _Run(destination, timeout, progress)
    started = time.monotonic()
    for batch in _batches(files):
        run.send(batch, min(wanted, len(batch)))
    report = run.report()
    log.info(
        "C-STORE to %s: %d sent, %d refused in %.1f s over %d association(s)",
        destination,
        len(report.sent),
        len(report.failed),
        time.monotonic() - started,
        run.opened,
    )
    return report


def _read_meta(path: Path, position: int = 0) -> _File:
    try:
        meta, offset = split_dataset(path)  # group 0002 only: the dataset is not read
    except InvalidDicomError as exc:
        raise ValueError(f"{path} has no complete file meta information: {exc}") from None
    sop_class, sop_instance, syntax = (_uid(meta, tag) for tag in _META)
    if not (sop_class and sop_instance and syntax):
        raise ValueError(f"{path} has no complete file meta information")
    return _File(path, sop_class, sop_instance, syntax, offset, position)


# Media Storage SOP Class UID, Media Storage SOP Instance UID, Transfer Syntax UID
_META = (0x00020002, 0x00020003, 0x00020010)


def _uid(meta: Any, tag: int) -> str:
    """A UID of the file meta information as it is written, without pydicom's conversion
    (value checks and a UID object per element: most of the time of reading the meta)."""
    if tag not in meta:
        return ""
    value = meta.get_item(tag).value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").rstrip("\0 ")


def _batches(files: list[_File]) -> Iterator[list[_File]]:
    """The files in order, in as few groups as keep each under MAX_CONTEXTS contexts."""
    batch: list[_File] = []
    contexts: set[tuple[str, str]] = set()
    for file in files:
        needed = contexts | set(file.contexts())
        if batch and len(needed) > MAX_CONTEXTS:
            yield batch
            batch, needed = [], set(file.contexts())
        batch.append(file)
        contexts = needed
    if batch:
        yield batch


def _requested_contexts(files: list[_File]) -> list[PresentationContext]:
    pairs = dict.fromkeys(pair for file in files for pair in file.contexts())
    return [build_context(sop_class, [syntax]) for sop_class, syntax in pairs]


# -- associations at once --------------------------------------------------------------------


class _Stopped(Exception):
    """Another association of the same send failed: this one stops too."""


class _Run:
    """One ``send``: the files still to go, what the peer answered, and the first failure, shared
    by the associations sending at once. The first association runs in the caller's thread; each
    one, once open, starts the next in a thread of its own, so the peer gets one association
    request at a time (a peer that counts its associations would refuse every one of several
    requests that come at once over its limit)."""

    def __init__(
        self, destination: Destination, timeout: float, progress: Callable[[str], None] | None
    ) -> None:
        self.destination = destination
        self.timeout = timeout
        self.stopped = threading.Event()
        self._progress = progress
        self._lock = threading.Lock()
        self._progress_lock = threading.Lock()  # the caller's callback: one thread at a time
        self._sent: list[tuple[int, str]] = []
        self._failed: list[tuple[int, tuple[str, int, str]]] = []
        self._error: BaseException | None = None
        self.opened = 0  # associations opened, for the log

    def send(self, files: list[_File], count: int) -> None:
        """Send ``files`` over at most ``count`` associations; raise the failure that stopped
        them: the first association's, or any error once sending began."""
        pending = deque(files)
        threads: list[threading.Thread] = []
        sending: list[threading.Thread] = []  # threads whose association is open
        unopened: list[SendError] = []
        caller = threading.current_thread()

        def open_another() -> None:  # called by each association once it is open
            with self._lock:
                if threading.current_thread() is not caller:
                    sending.append(threading.current_thread())
                if len(threads) + 1 >= count or unopened or not pending or self.stopped.is_set():
                    return
                thread = threading.Thread(
                    target=self._work,
                    args=(files, pending, open_another, unopened),
                    name=f"c-store-{len(threads) + 2}",
                    daemon=True,
                )
                threads.append(thread)
            thread.start()

        self._work(files, pending, open_another, None)
        # The files are all taken (or the send stopped): wait for the associations sending the
        # last ones, not for one still being opened (it will find nothing to send), which a
        # PACS might leave unanswered until ``timeout``.
        with self._lock:
            waiting = list(sending)
        for thread in waiting:
            thread.join()
        if self._error is not None:
            raise self._error
        if unopened:
            log.warning(
                "C-STORE to %s: association %d of %d could not be opened, %d sent the files: %s",
                self.destination,
                len(threads) + 1,
                count,
                len(threads),
                unopened[0].reason,
            )

    def report(self) -> SendReport:
        return SendReport(
            sent=[uid for _, uid in sorted(self._sent)],
            failed=[failure for _, failure in sorted(self._failed)],
        )

    def record(self, file: _File, code: int, comment: str) -> None:
        uid = file.sop_instance
        category, description = STORAGE_SERVICE_CLASS_STATUS.get(
            code, GENERAL_STATUS.get(code, (code_to_category(code), ""))
        )
        if category in (STATUS_SUCCESS, STATUS_WARNING):
            log.debug("C-STORE %s: status 0x%04X", uid, code)
            with self._lock:
                self._sent.append((file.position, uid))
            if self._progress is not None:
                with self._progress_lock:
                    if not self.stopped.is_set():  # not after a failure, from progress or not
                        self._progress(uid)
            return
        reason = "; ".join(part for part in (description or category, comment) if part)
        log.debug("C-STORE %s refused: status 0x%04X", uid, code)
        self.refused(file, code, reason)

    def refused(self, file: _File, code: int, reason: str) -> None:
        with self._lock:
            self._failed.append((file.position, (file.sop_instance, code, reason)))

    def _work(
        self,
        files: list[_File],
        pending: deque[_File],
        opened: Callable[[], None],
        unopened: list[SendError] | None,
    ) -> None:
        """One association: open it, send files from ``pending`` until none are left or the
        send stopped, release it. ``unopened``: where an extra association that could not be
        opened is noted (the others send the files); None for the first one, whose failure to
        open is the send's."""
        watch = _TlsWatch(self.destination.tls) if self.destination.tls else None
        try:
            assoc = _associate(files, self.destination, self.timeout, watch)
        except SendError as exc:
            if unopened is None:
                self._fail(exc)
            else:
                with self._lock:
                    unopened.append(exc)
            return
        except BaseException as exc:  # noqa: BLE001 (raised by send() in the caller's thread)
            self._fail(exc)
            return
        with self._lock:
            self.opened += 1
        try:
            opened()
            scu = _StoreScu(assoc, watch, self)
            while (file := self._next(pending)) is not None:
                scu.store(file)
            if not self.stopped.is_set():
                assoc.release()
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 (raised by send() in the caller's thread)
            self._fail(exc)
        finally:
            if assoc.is_established:  # left by a failure
                assoc.abort()

    def _next(self, pending: deque[_File]) -> _File | None:
        if self.stopped.is_set():
            return None
        with self._lock:
            return pending.popleft() if pending else None

    def _fail(self, exc: BaseException) -> None:
        """Keep the first failure and stop every association."""
        with self._lock:
            if self._error is None:
                self._error = exc
        self.stopped.set()


# -- one association -------------------------------------------------------------------------


def _associate(
    files: list[_File], destination: Destination, timeout: float, watch: _TlsWatch | None
) -> Association:
    reactor.install()
    ae = AE(ae_title=destination.calling_ae)
    ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    tls_args = None
    if watch is not None:
        hostname = destination.server_hostname or destination.host
        tls_args = (cast(ssl.SSLContext, watch), hostname)  # duck-typed: wrap_socket only
    opened: list[bool] = []

    def on_open(event: Any) -> None:
        opened.append(True)
        _tune_socket(event, timeout)

    assoc = ae.associate(
        destination.host,
        destination.port,
        contexts=_requested_contexts(files),
        ae_title=destination.ae_title,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open)],
    )
    if not assoc.is_established:
        raise _association_failure(assoc, destination, watch, connected=bool(opened))
    return assoc


def _tune_socket(event: Any, timeout: float) -> None:
    """Nagle off (PEERS.md: else each small C-STORE waits ~40 ms for a delayed ACK), and a limit
    on each send and receive: pynetdicom leaves a connected socket blocking without one."""
    try:
        sock = event.assoc.dul.socket.socket
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
    except (AttributeError, OSError):  # the connection is already gone
        pass


class _StoreScu:
    """C-STORE requests on one established association, one at a time. The request's P-DATA
    primitives are put on pynetdicom's DUL queue here and the answer taken from its DIMSE queue:
    what ``Association.send_c_store`` does, less its per-request costs (module docstring)."""

    def __init__(self, assoc: Association, watch: _TlsWatch | None, run: _Run) -> None:
        self.assoc = assoc
        self.watch = watch
        self.run = run
        self.dul = assoc.dul
        self.outgoing = assoc.dul.to_provider_queue
        self.answers = assoc.dimse.msg_queue
        self.pdu_length = _cap_pdu_length(assoc)
        size = self.pdu_length - 6
        self.block = size * max(1, BLOCK_BYTES // size)  # dataset bytes read at a time
        self.queued = max(2, QUEUED_BYTES // self.block)  # blocks waiting at most
        self.contexts = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])): cast(int, cx.context_id)
            for cx in assoc.accepted_contexts
        }
        self.message_id = 0
        _answers_to_the_sender(assoc)
        _hold_reactor(assoc, run.timeout)
        _quiet(assoc)
        _send_blocks(assoc.dul)

    def store(self, file: _File) -> None:
        uid = file.sop_instance
        if not self._open():
            raise _lost(f"the connection was lost before sending {uid}", self.watch)
        accepted = [(pair, self.contexts.get(pair)) for pair in file.contexts()]
        usable = [(syntax, cx) for (_, syntax), cx in accepted if cx is not None]
        if not usable:
            reason = f"the peer accepted no presentation context for {file.sop_class}"
            self.run.refused(file, NO_CONTEXT, f"{reason} in {file.transfer_syntax}")
            return
        syntax, context_id = usable[0]
        if syntax == file.transfer_syntax:
            data: IO[bytes] = file.path.open("rb")  # the stored bytes, streamed
            data.seek(file.offset)
        else:  # the peer takes only the other Little Endian syntax: decoded, encoded again
            log.debug("C-STORE %s: converting from %s", uid, file.transfer_syntax)
            data = BytesIO(_converted(file.path, UID(syntax)))
        with data:
            self._request(file, context_id, data)
        answer = self._answer(uid)
        self.run.record(file, cast(int, answer.Status), str(answer.ErrorComment or ""))

    def _request(self, file: _File, context_id: int, data: IO[bytes]) -> None:
        """The C-STORE-RQ: its command set, then the dataset, as P-DATA-TF PDUs of at most
        ``pdu_length`` bytes handed to the connection's thread a block at a time."""
        self.message_id = self.message_id % 0xFFFF + 1
        command = commands.c_store_rq(file.sop_class, file.sop_instance, self.message_id, PRIORITY)
        size = self.pdu_length - 6  # PDV item length (4) + context ID (1) + header (1)
        pdus = _pdus(command, size, context_id, commands.COMMAND, last=True)
        block = data.read(self.block)
        while True:
            following = data.read(self.block)
            pdus += _pdus(block, size, context_id, commands.DATASET, last=not following)
            self._put(context_id, _Pdus(b"".join(pdus)))
            if not following:
                return
            block, pdus = following, []

    def _put(self, context_id: int, pdus: _Pdus) -> None:
        """Queue a block of PDUs, held back while ``queued`` blocks wait for the connection."""
        if self.run.stopped.is_set():
            raise _Stopped
        outgoing = self.outgoing
        if outgoing.qsize() >= self.queued:
            with outgoing.not_full:  # notified by each get() of the connection's thread
                while len(outgoing.queue) > self.queued // 2:
                    if not self._open():
                        raise _lost("the connection was lost while sending", self.watch)
                    if self.run.stopped.is_set():
                        raise _Stopped
                    outgoing.not_full.wait(_POLL)
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((context_id, pdus))
        self.dul.send_pdu(primitive)

    def _answer(self, uid: str) -> C_STORE:
        deadline = time.monotonic() + self.run.timeout
        while True:
            try:
                _, answer = self.answers.get(timeout=_POLL)
            except queue.Empty:
                if self.run.stopped.is_set():
                    raise _Stopped from None
                if not self._open() or time.monotonic() > deadline:
                    what = f"no C-STORE answer for {uid} (timed out or connection lost)"
                    raise _lost(what, self.watch) from None
                continue
            if answer is None:  # put there by pynetdicom when the association ends
                raise _lost(
                    f"the connection was lost before the C-STORE answer for {uid}", self.watch
                )
            if (
                isinstance(answer, C_STORE)
                and answer.is_valid_response
                and answer.MessageIDBeingRespondedTo == self.message_id
            ):
                return answer
            raise _lost(f"the peer answered the C-STORE of {uid} with something else", None)

    def _open(self) -> bool:
        return self.dul.state_machine.current_state == "Sta6" and self.dul.is_alive()


class _Pdus(bytes):
    """P-DATA-TF PDUs already encoded, carried to the connection's thread in a P-DATA primitive
    (``_send_blocks``)."""


def _pdus(
    data: bytes, size: int, context_id: int, kind: int, *, last: bool
) -> list[bytes | memoryview]:
    """``data`` as P-DATA-TF PDUs of one PDV each, of at most ``size`` bytes of data (PS3.8 9.3.5,
    E.2: the header's bit 0 says command or dataset, bit 1 the last fragment), as pynetdicom's
    ``DIMSEMessage.encode_msg`` and ``P_DATA_TF.encode`` would make them."""
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for start in range(0, len(data), size) or range(1):  # no data: one empty PDV
        chunk = view[start : start + size]
        header = kind | (commands.LAST if last and start + size >= len(data) else 0x00)
        n = len(chunk)
        parts += (commands.pdv_header(context_id, header, n), chunk)
    return parts


def _converted(path: Path, syntax: UID) -> bytes:
    encoded = encode(dcmread(path), syntax.is_implicit_VR, syntax.is_little_endian)
    if encoded is None:
        raise ValueError(f"{path} could not be encoded in {syntax.name}")
    return encoded


# -- pynetdicom's association, adjusted ------------------------------------------------------


def _cap_pdu_length(assoc: Association) -> int:
    """Send PDUs of at most MAX_PDU_SENT bytes, also to a peer that accepts any length; return
    the length used."""
    items = assoc.acceptor.user_information
    notice = next((i for i in items if isinstance(i, MaximumLengthNotification)), None)
    if notice is None:
        notice = MaximumLengthNotification()
        items.append(notice)
    peer = notice.maximum_length_received or 0
    notice.maximum_length_received = min(peer, MAX_PDU_SENT) if peer > 0 else MAX_PDU_SENT
    return int(notice.maximum_length_received)


def _answers_to_the_sender(assoc: Association) -> None:
    """Only the sender (a blocking read) takes messages off the DIMSE queue. pynetdicom's
    association thread polls it too and drops a C-STORE answer it finds ("Received unexpected
    C-STORE service message"): ``send_c_store`` pauses that thread first, but the pause can come
    a moment late (``_reactor_checkpoint``/``_is_paused``), which under load lost an answer here
    and left the sender waiting ``timeout`` seconds. A C-STORE SCU expects no requests."""
    get_msg = assoc.dimse.get_msg

    def blocking_only(block: bool = False) -> Any:
        return get_msg(block=True) if block else (None, None)

    assoc.dimse.get_msg = blocking_only  # type: ignore[method-assign]


def _send_blocks(dul: Any) -> None:
    """Let the connection's thread write a ``_Pdus`` block in one piece. pynetdicom makes each
    PDU from a P-DATA primitive in that thread (state machine event, ``P_DATA_TF`` objects,
    encoding, a socket write): for 16 KB PDUs (Orthanc's and storescp's maximum) that was about
    half the sender's CPU time. The bytes written are the same PDUs; the state machine still
    takes each block as a P-DATA request (Evt9, DT-1) in the established state."""
    send = dul._send

    def send_blocks(pdu: Any) -> None:
        items: list[Any] = getattr(pdu, "presentation_data_value_items", [])
        if len(items) == 1 and type(items[0].presentation_data_value) is _Pdus:
            if dul.socket is not None:
                dul.socket.send(items[0].presentation_data_value)
        else:
            send(pdu)

    dul._send = send_blocks


def _quiet(assoc: Association) -> None:
    """Unbind pynetdicom's logging handlers from the established association: its connection's
    thread would otherwise build an event for each PDU sent (thousands for a study) and describe
    each C-STORE answer, for DEBUG lines we do not keep. The association's negotiation has been
    logged; this module logs each answer's status (``_Run.record``)."""
    for event, handler in (
        (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
        (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
        (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
        (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
    ):
        assoc.unbind(event, handler)


def _hold_reactor(assoc: Association, timeout: float) -> None:
    """Keep pynetdicom's association thread paused while we send, as ``send_c_store`` does for
    each request: running, it would wake every millisecond, and abort the association when no
    data came in for ``network_timeout`` seconds (a long upload). ``release`` and ``abort``
    restart it."""
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + timeout
    while not assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)


# -- failures --------------------------------------------------------------------------------


class _TlsWatch:
    """Stands in for an ``ssl.SSLContext`` in pynetdicom's ``tls_args``: the socket it wraps
    keeps the errors of its connection with their phase ("connect", "handshake" or "session"),
    which pynetdicom would only log."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.failures: list[tuple[str, OSError]] = []

    @property
    def failure(self) -> tuple[str, OSError] | None:
        """The most telling error: a TLS alert from the peer, else the first."""
        alerts = [f for f in self.failures if _is_alert(f[1])]
        return next(iter(alerts or self.failures), None)

    def wrap_socket(self, sock: socket.socket, **options: Any) -> ssl.SSLSocket:
        options["do_handshake_on_connect"] = False  # done by connect below, watched
        tls = self.context.wrap_socket(sock, **options)
        connect, recv, send = tls.connect, tls.recv, tls.send

        def connect_and_handshake(address: Any) -> None:
            self._watch("connect", connect, address)
            self._watch("handshake", tls.do_handshake)

        def send_or_read_why(data: bytes) -> int:
            try:
                return self._watch("session", send, data)
            except OSError:
                # With TLS 1.3 a peer refuses our certificate after our side of the handshake:
                # its alert may be waiting behind the closed connection that failed this send.
                with suppress(OSError):
                    tls.settimeout(0.5)
                    self._watch("session", recv, 1)
                raise

        setattr(tls, "connect", connect_and_handshake)  # noqa: B010 (this instance only)
        setattr(tls, "recv", lambda *a: self._watch("session", recv, *a))  # noqa: B010
        setattr(tls, "send", send_or_read_why)  # noqa: B010
        return tls

    def _watch(self, phase: str, call: Callable[..., _T], *args: Any) -> _T:
        try:
            return call(*args)
        except OSError as exc:
            self.failures.append((phase, exc))
            raise


def _association_failure(
    assoc: Association, destination: Destination, watch: _TlsWatch | None, *, connected: bool
) -> SendError:
    answer = assoc.acceptor.primitive
    rejection = answer if assoc.is_rejected else _unread_rejection(assoc)
    if rejection is not None:
        return SendError(
            f"{destination} rejected the association: {rejection.result_str}, "
            f"{rejection.source_str}: {rejection.reason_str}",
            permanent=rejection.result != 0x02,  # 0x02: rejected-transient (e.g. busy)
        )
    if watch is not None and watch.failure is not None:
        return _tls_failure(destination, *watch.failure)
    if not connected:
        return SendError(
            f"could not connect to {destination} (refused or timed out)", permanent=False
        )
    if answer is not None and not assoc.accepted_contexts:
        return SendError(
            f"{destination} accepted none of the proposed SOP classes and transfer syntaxes",
            permanent=True,
        )
    return SendError(
        f"{destination} closed the connection or did not answer the association request"
        + ("" if destination.tls else " (does it expect TLS?)"),
        permanent=False,
    )


def _unread_rejection(assoc: Association) -> A_ASSOCIATE | None:
    """A rejection the DUL thread received but pynetdicom did not read: when the peer rejects
    and closes at once, the requesting thread can find the socket closed before it looks for
    the answer, and it then reports a failure to connect."""
    while True:
        try:
            primitive = assoc.dul.to_user_queue.get_nowait()
        except queue.Empty:
            return None
        if isinstance(primitive, A_ASSOCIATE) and primitive.result in (0x01, 0x02):
            return primitive


def _tls_failure(destination: Destination, phase: str, exc: OSError) -> SendError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return SendError(
            f"TLS: the certificate of {destination} failed verification: {exc.verify_message}",
            permanent=True,
        )
    if _is_alert(exc) or phase == "handshake" and isinstance(exc, ssl.SSLError):
        return SendError(f"TLS: {destination} {_explain(exc)} ({exc})", permanent=True)
    if phase == "handshake" and not isinstance(exc, TimeoutError):
        return SendError(
            f"TLS: {destination} closed the connection during the handshake ({exc}): "
            "it does not accept our client certificate, or does not speak TLS",
            permanent=True,
        )
    if phase == "session":
        return SendError(
            f"{destination} closed the TLS connection before answering the association "
            f"request ({exc})",
            permanent=False,
        )
    return SendError(f"could not connect to {destination}: {exc}", permanent=False)


def _is_alert(exc: OSError) -> bool:
    """A TLS alert or protocol error from the peer, not merely a closed connection."""
    closed = (ssl.SSLEOFError, ssl.SSLZeroReturnError)
    return isinstance(exc, ssl.SSLError) and not isinstance(exc, closed) and bool(exc.reason)


def _explain(exc: OSError) -> str:
    reason = str(getattr(exc, "reason", "") or "").upper()
    if "CERTIFICATE_EXPIRED" in reason:
        return "refused our client certificate: it has expired"
    if "ALERT" in reason and any(word in reason for word in _REFUSED_CERTIFICATE):
        return "refused our client certificate"
    if "WRONG_VERSION" in reason or "RECORD_LAYER" in reason:
        return "does not speak TLS on that port"
    if "HANDSHAKE_FAILURE" in reason or "PROTOCOL_VERSION" in reason:
        return "refused the TLS handshake (no TLS version or cipher in common, or our certificate)"
    return "ended the TLS handshake"


# the alerts an OpenSSL peer sends for a client certificate it does not take (one from another CA
# of the same name shows up as a failed signature: DECRYPT_ERROR)
_REFUSED_CERTIFICATE = ("CERTIFICATE", "UNKNOWN_CA", "DECRYPT_ERROR", "ACCESS_DENIED")


def _lost(what: str, watch: _TlsWatch | None) -> SendError:
    detail = f": {watch.failure[1]}" if watch is not None and watch.failure else ""
    return SendError(what + detail, permanent=False)
