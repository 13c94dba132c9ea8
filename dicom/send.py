"""C-STORE SCU: send stored DICOM files to a peer (another Yilian's SCP, a hospital PACS), over TLS
when the destination has a client context.

    report = send(paths, Destination("pacs.city.example", 11112, "CITY_PACS", tls=context))
    report.sent     # SOP Instance UIDs the peer stored (success or warning status)
    report.failed   # (SOP Instance UID, DIMSE status, reason): the peer refused that instance

A refused instance is a value in the report (also one whose SOP class and syntax the peer did
not accept: status 0x0122); a connection or association that could not be made, or broke, is a
``SendError`` that says whether retrying can help (``permanent``).

One association carries all files (several only when they need more than 128 presentation
contexts). Each file is proposed with its own SOP Class and transfer syntax, read from its file
meta information only, and an uncompressed file also with the other Little Endian syntax.

The bytes sent are the bytes stored. pynetdicom 3.0's ``send_c_store`` takes a file path: with
``_config.STORE_SEND_CHUNKED_DATASET`` set, it reads the file meta information, seeks past it and
reads the dataset from the file one PDU at a time (``DIMSEMessage.encode_msg``), without decoding
or encoding it; the accepted transfer syntax must then be the file's own. Without the flag it
would ``dcmread`` the whole file and encode it again. Two more facts make the streaming real:
- PDUs go to the connection through an unbounded queue (``DULServiceProvider.send_pdu``), so a
  file is read as fast as the disk allows, not as fast as the peer takes it: ``_pace`` holds the
  reader back when a few MB are queued.
- A peer that accepts PDUs of any length (maximum length 0, as Yilian's SCP does) would have the
  whole dataset read in one piece: ``_cap_pdu_length`` sends at most 1 MiB per PDU (smaller PDUs
  than the peer's maximum are always allowed).
A 1 GB instance thus passes through a few MB of memory. Only a file whose syntax the peer did
not accept, while it took the other Little Endian one, is decoded and encoded (in memory).

Two pynetdicom races are worked around: its association thread can take a C-STORE answer meant
for ``send_c_store`` and drop it (``_answers_to_the_sender``), and a quick A-ASSOCIATE-RJ can be
reported as an abort (``_Seen``). pynetdicom logs TLS and socket errors instead of raising them:
``_TlsWatch`` stands in for the destination's context, so the most telling error of the
connection, and whether it came while connecting, in the TLS handshake or after it, is known.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import (
    GENERAL_STATUS,
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # presentation contexts in one association (PS3.8: odd IDs 1..255)
MAX_PDU_SENT = 1024 * 1024  # bytes of dataset per PDU we send, whatever the peer accepts
QUEUED_BYTES = 8 * 1024 * 1024  # dataset bytes read ahead of the connection
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
NO_CONTEXT = 0x0122  # "SOP Class not supported": the peer accepted no context for the file

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

    def contexts(self) -> list[tuple[str, str]]:
        """(abstract syntax, transfer syntax) to propose: the file's own first."""
        own = [(self.sop_class, self.transfer_syntax)]
        if self.transfer_syntax not in UNCOMPRESSED:
            return own  # another syntax would mean decoding the pixel data
        other = next(ts for ts in UNCOMPRESSED if ts != self.transfer_syntax)
        return [*own, (self.sop_class, other)]


def send(
    paths: Sequence[Path],
    destination: Destination,
    *,
    timeout: float = 30,
    progress: Callable[[str], None] | None = None,
) -> SendReport:
    """C-STORE each file to ``destination``; ``progress(uid)`` after each one it stored.

    ``timeout`` bounds each wait: connecting with the TLS handshake, the association answer, each
    C-STORE answer, and the connection taking no data.
    """
    files = [_read_meta(Path(p)) for p in paths]
    report = SendReport()
    started = time.monotonic()
    for batch in _batches(files):
        _send_batch(batch, destination, timeout, progress or (lambda uid: None), report)
    log.info(
        "C-STORE to %s: %d sent, %d refused in %.1f s",
        destination,
        len(report.sent),
        len(report.failed),
        time.monotonic() - started,
    )
    return report


def _read_meta(path: Path) -> _File:
    try:
        meta = read_file_meta_info(path)  # group 0002 only: the dataset is not read
        return _File(
            path,
            str(meta.MediaStorageSOPClassUID),
            str(meta.MediaStorageSOPInstanceUID),
            str(meta.TransferSyntaxUID),
        )
    except (InvalidDicomError, AttributeError) as exc:
        raise ValueError(f"{path} has no complete file meta information: {exc}") from None


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


# -- one association -------------------------------------------------------------------------


def _send_batch(
    files: list[_File],
    destination: Destination,
    timeout: float,
    progress: Callable[[str], None],
    report: SendReport,
) -> None:
    watch = _TlsWatch(destination.tls) if destination.tls else None
    assoc = _associate(files, destination, timeout, watch)
    try:
        _cap_pdu_length(assoc)
        _pace(assoc)
        _answers_to_the_sender(assoc)
        for file in files:
            _store(assoc, file, report, progress, watch)
        assoc.release()
    finally:
        if assoc.is_established:  # left by an exception
            assoc.abort()


def _associate(
    files: list[_File], destination: Destination, timeout: float, watch: _TlsWatch | None
) -> Association:
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


def _store(
    assoc: Association,
    file: _File,
    report: SendReport,
    progress: Callable[[str], None],
    watch: _TlsWatch | None,
) -> None:
    uid = file.sop_instance
    if assoc.dul.state_machine.current_state != "Sta6":  # Sta6: association established
        raise _lost(f"the connection was lost before sending {uid}", watch)
    exact = _accepted(assoc, file.sop_class, file.transfer_syntax)
    if not exact and not _converts(assoc, file):
        reason = f"the peer accepted no presentation context for {file.sop_class}"
        report.failed.append((uid, NO_CONTEXT, f"{reason} in {file.transfer_syntax}"))
        return
    try:
        if exact:
            _config.STORE_SEND_CHUNKED_DATASET = True  # the stored bytes, streamed (see above)
            status = assoc.send_c_store(file.path)
        else:  # the peer takes only the other Little Endian syntax: decoded, encoded again
            log.debug("C-STORE %s: converting from %s", uid, file.transfer_syntax)
            status = assoc.send_c_store(dcmread(file.path))
    except (_ConnectionLost, RuntimeError) as exc:
        raise _lost(f"the connection was lost while sending {uid} ({exc})", watch) from None
    if "Status" not in status:
        raise _lost(f"no C-STORE answer for {uid} (timed out or connection lost)", watch)
    _record(report, uid, status, progress)


def _accepted(assoc: Association, sop_class: str, syntax: str) -> bool:
    return any(
        cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == syntax
        for cx in assoc.accepted_contexts
    )


def _converts(assoc: Association, file: _File) -> bool:
    return any(
        _accepted(assoc, sop_class, syntax)
        for sop_class, syntax in file.contexts()[1:]  # the file's own is not accepted
    )


def _record(report: SendReport, uid: str, status: Any, progress: Callable[[str], None]) -> None:
    code = int(status.Status)
    category, description = STORAGE_SERVICE_CLASS_STATUS.get(
        code, GENERAL_STATUS.get(code, (code_to_category(code), ""))
    )
    if category in (STATUS_SUCCESS, STATUS_WARNING):
        log.debug("C-STORE %s: status 0x%04X", uid, code)
        report.sent.append(uid)
        progress(uid)
        return
    comment = str(status.get("ErrorComment", "") or "")
    reason = "; ".join(part for part in (description or category, comment) if part)
    log.debug("C-STORE %s refused: status 0x%04X", uid, code)
    report.failed.append((uid, code, reason))


# -- streaming -------------------------------------------------------------------------------


class _ConnectionLost(Exception):
    pass


def _cap_pdu_length(assoc: Association) -> None:
    """Send PDUs of at most MAX_PDU_SENT bytes, also to a peer that accepts any length."""
    items = assoc.acceptor.user_information
    notice = next((i for i in items if isinstance(i, MaximumLengthNotification)), None)
    if notice is None:
        notice = MaximumLengthNotification()
        items.append(notice)
    peer = notice.maximum_length_received or 0
    notice.maximum_length_received = min(peer, MAX_PDU_SENT) if peer > 0 else MAX_PDU_SENT


def _pace(assoc: Association) -> None:
    """Let a file be read only as fast as the connection takes it: hold back each P-DATA while
    QUEUED_BYTES are waiting in pynetdicom's outgoing queue."""
    dul = assoc.dul
    queue = dul.to_provider_queue
    pdu_length = int(assoc.acceptor.maximum_length or MAX_PDU_SENT)
    limit = max(4, QUEUED_BYTES // pdu_length)
    send_pdu = dul.send_pdu

    def paced(primitive: Any) -> None:
        if isinstance(primitive, P_DATA) and queue.qsize() >= limit:
            with queue.not_full:  # notified by each get() of the connection's thread
                while len(queue.queue) > limit // 2:
                    if dul.state_machine.current_state != "Sta6" or not dul.is_alive():
                        raise _ConnectionLost("the connection closed")
                    queue.not_full.wait(0.05)
        send_pdu(primitive)

    dul.send_pdu = paced  # type: ignore[method-assign]


def _answers_to_the_sender(assoc: Association) -> None:
    """Only ``send_c_store`` (a blocking read) takes messages off the DIMSE queue. pynetdicom's
    association thread polls it too and drops a C-STORE answer it finds ("Received unexpected
    C-STORE service message"): ``send_c_store`` pauses that thread first, but the pause can come
    a moment late (``_reactor_checkpoint``/``_is_paused``), which under load lost an answer here
    and left the sender waiting ``timeout`` seconds. A C-STORE SCU expects no requests."""
    get_msg = assoc.dimse.get_msg

    def blocking_only(block: bool = False) -> Any:
        return get_msg(block=True) if block else (None, None)

    assoc.dimse.get_msg = blocking_only  # type: ignore[method-assign]


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
    if assoc.is_rejected and answer is not None:
        return SendError(
            f"{destination} rejected the association: {answer.result_str}, "
            f"{answer.source_str}: {answer.reason_str}",
            permanent=answer.result != 0x02,  # 0x02: rejected-transient (e.g. busy)
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
