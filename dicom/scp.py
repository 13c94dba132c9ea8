"""The gateway's DICOM Application Entity: C-ECHO, C-STORE of every storage SOP class in every
common transfer syntax, optional TLS, calling AE titles allowed per registered Device.

A listener only: it receives the object (streamed to a file as it arrives, never decoded and
encoded again), hands it to ``DicomIngest.file`` and answers with the outcome's DIMSE status
(``ingest.STATUS``). The success status goes out only after the object and its index row are
durable. When an association ends, the ImagingStudy of each study it touched is brought up to
date (counts and instances), not after every instance, and once its associations have been
quiet for a moment, not after every association (``dicom.refresh``).

An association that carries storage and verification only is served by the storage lane
(``dicom.lane``) once established; any other (query/retrieve, or storage mixed with it) by
pynetdicom's own C-STORE event. Both end in ``store``.
"""

from __future__ import annotations

import copy
import logging
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    dimse_messages,
    evt,
    transport,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom import reactor
from dicom.ingest import DicomIngest, Origin
from dicom.lane import VERIFICATION, Partial, StorageLane
from dicom.refresh import StudyRefresher
from dicom.storage import SpareFiles
from records import ids

log = logging.getLogger(__name__)

# received datasets go to a file as they arrive: a 1 GB instance never sits in memory
_config.STORE_RECV_CHUNKED_DATASET = True
RECEIVING = "receiving-"  # name prefix of an object's file while it arrives

NOT_RECOGNISED = " "  # an AE title no caller can have: the allowed list is never empty
# seconds a process sharing the listening socket waits per association it serves before it
# accepts: longer than the interpreter's switch interval (5 ms), so that a process whose accepting
# thread waits for the lock behind an association's set-up still comes first to the next
# connection (2 ms left three associations of four on one process in some rounds)
TURN = 0.010


@dataclass
class ScpSettings:
    ae_title: str = "YILIAN"
    host: str = "127.0.0.1"
    port: int = 11112
    acse_timeout: float = 30
    dimse_timeout: float = 60
    network_timeout: float = 120
    maximum_pdu_size: int = 0  # what we receive: unlimited, fewer fragments
    # an ImagingStudy is brought up to date once its associations have been quiet this long
    # (at the latest this long after the first ended): dicom.refresh
    study_quiet_seconds: float = 1.0
    study_longest_seconds: float = 10.0


class _GatewayAE(AE):  # type: ignore[misc]
    """An AE whose allowed calling AE titles are the registered devices', looked up live."""

    allowed: Callable[[], list[str]] = staticmethod(lambda: [NOT_RECOGNISED])
    # offered to each association once established (``dicom.reactor``): the storage lane
    storage_lane: Callable[[Any], StorageLane | None] | None = None
    # a listening socket shared with other processes, served instead of one of its own
    listening: socket.socket | None = None

    @property  # type: ignore[override,misc]
    def require_calling_aet(self) -> list[str]:
        return self.allowed() or [NOT_RECOGNISED]

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        if self.listening is not None:
            kwargs["server_class"] = _SharedServer
        return super().make_server(*args, **kwargs)


class _SharedServer(transport.ThreadedAssociationServer):  # type: ignore[misc]
    """pynetdicom's server on a listening socket that other processes serve too (``yilian
    serve`` with ``YILIAN_DICOM_PROCESSES``): each accepts what it can. The socket does not
    block, so a process that loses the race for a connection goes back to waiting instead of
    sitting in ``accept`` until the next one; a process already serving associations takes a
    little longer to reach for a new one (``TURN``), so the connections spread over the
    processes. Closing it here closes this process's descriptor only: the others go on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._starting = 0  # connections accepted whose association thread has not started yet
        self._counting = threading.Lock()
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        shared = self.ae.listening if isinstance(self.ae, _GatewayAE) else None
        assert self.socket is not None and shared is not None
        self.socket.close()  # the one TCPServer made
        self.socket = shared
        shared.setblocking(False)
        self.server_address = shared.getsockname()

    def server_activate(self) -> None:
        """Listening already."""

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        serving = len(self.ae.active_associations) + self._starting
        if serving:
            time.sleep(min(serving, 8) * TURN)
        assert self.socket is not None
        client, address = self.socket.accept()  # BlockingIOError: another process took it
        client.setblocking(True)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True)
        with self._counting:
            self._starting += 1
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:  # the association's own thread runs now (or it could not start)
            with self._counting:
                self._starting -= 1

    def server_close(self) -> None:
        if self.socket is not None:
            self.socket.close()


class DicomServer:
    def __init__(
        self,
        ingest: DicomIngest,
        settings: ScpSettings,
        *,
        ssl_context: ssl.SSLContext | None = None,
        known_ae_titles: Callable[[], list[str]],
        organization_of_certificate: Callable[[dict[str, Any]], str | None] | None = None,
        extra_handlers: list[tuple[Any, Callable[..., Any]]] | None = None,
        configure: Callable[[AE], None] | None = None,
    ) -> None:
        self.ingest = ingest
        self.settings = settings
        self.ssl_context = ssl_context
        self._known = known_ae_titles
        self._certificate_owner = organization_of_certificate
        self._titles: tuple[float, list[str]] = (0.0, [])
        self._extra = extra_handlers or []
        self._configure = configure
        self._touched: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        self._server: Any = None
        self._storage: frozenset[str] = frozenset()  # abstract syntaxes the lane may serve
        # the lane's files for arriving instances, made ahead (``storage.SpareFiles``)
        self._spares = SpareFiles(ingest.store.scratch(), RECEIVING, ids.new_id)
        self._refresher = StudyRefresher(
            ingest.refresh_studies,
            quiet=settings.study_quiet_seconds,
            longest=settings.study_longest_seconds,
        )

    def _allowed(self) -> list[str]:
        when, titles = self._titles
        if time.monotonic() - when > 5:  # a device registered a moment ago is let in
            titles = self._known()
            self._titles = (time.monotonic(), titles)
        return titles

    def build_ae(self) -> _GatewayAE:
        s = self.settings
        ae = _GatewayAE(ae_title=s.ae_title)
        ae.allowed = self._allowed
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        ae.network_timeout = s.network_timeout
        ae.maximum_pdu_size = s.maximum_pdu_size
        ae.maximum_associations = 32
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        self._storage = frozenset(
            {VERIFICATION, *(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)}
        )
        ae.storage_lane = self._lane
        if self._configure is not None:
            self._configure(ae)
        return ae

    def start(self, listening: socket.socket | None = None, *, sweep: bool = True) -> None:
        """Serve ``listening`` (a socket other processes serve too) or a socket of its own
        on the settings' host and port. ``sweep``: remove what a crash left half-received
        (not while another process may be receiving into the same folder)."""
        reactor.install()
        _copy_contexts_cheaply()
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            # pynetdicom's standard handlers describe every PDU and DIMSE message (and log each
            # C-STORE request at INFO, a line per instance the outcome's own log covers): only
            # for debugging. Associations accepted, released and aborted are still logged.
            _config.LOG_HANDLER_LEVEL = "none"
        _receive_into(self.ingest.store.scratch(), sweep=sweep)
        self._refresher.start()
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, _nodelay),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_end),
            *self._extra,
        ]
        ae = self.build_ae()
        ae.listening = listening
        self._server = ae.start_server(
            (self.settings.host, self.settings.port),
            block=False,
            evt_handlers=handlers,
            ssl_context=self.ssl_context,
        )
        # pynetdicom's server runs a full gc.collect() every 60 turns of its accept loop (each
        # association, or every 30 s idle): 60-80 ms holding the interpreter's lock in this
        # process, all ingest stalled meanwhile. Python's own collector finds the cycles.
        self._server.service_actions = _no_service_actions
        log.info(
            "DICOM SCP %s listening on %s:%d%s",
            self.settings.ae_title,
            self.settings.host,
            self.port,
            " (TLS)" if self.ssl_context else "",
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.settings.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            log.info("DICOM SCP stopped")
        self._refresher.stop()
        self._spares.stop()

    # -- handlers ------------------------------------------------------------------------------

    def origin(self, assoc: Any) -> Origin:
        calling = str(assoc.requestor.ae_title).strip()
        peer = f"{assoc.requestor.address}:{assoc.requestor.port}"
        organization = caller_organization(assoc, self.ingest, self._certificate_owner)
        return Origin("dicom", calling, peer, organization)

    def store(
        self, assoc: Any, path: Path, sop_class: str, measured: tuple[int, str] | None = None
    ) -> tuple[int, str | None]:
        """File the instance received into ``path`` on ``assoc``: (DIMSE status, error
        comment or None). ``measured``: the file's size and content digest, when the lane hashed it
        as it arrived."""
        origin = self.origin(assoc)
        if origin.organization is None:  # a device retired, or another clinic's certificate
            outcome = self.ingest.refuse(
                path,
                origin,
                "the caller acts for no organization: its Device is retired or "
                "its client certificate is another organization's",
            )
        else:
            outcome = self.ingest.file(path, origin, sop_class=sop_class, measured=measured)
        if outcome.ok and outcome.study_uid:
            with self._lock:
                self._touched.setdefault(id(assoc), set()).add(outcome.study_uid)
        return outcome.status, outcome.reason[:64] if outcome.reason else None

    def _on_store(self, event: Any) -> Dataset | int:
        sop_class = str(event.request.AffectedSOPClassUID)
        code, comment = self.store(event.assoc, Path(event.dataset_path), sop_class)
        if not comment:
            return code  # pynetdicom builds no status dataset for a plain code
        status = Dataset()
        status.Status = code
        status.ErrorComment = comment
        return status

    def _lane(self, assoc: Any) -> StorageLane | None:
        """The storage lane for an established association, if it carries storage and
        verification only and nobody listens to its PDUs."""
        contexts = {
            cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
        }
        if not contexts or any(a not in self._storage for a, _ in contexts.values()):
            return None
        if assoc.get_handlers(evt.EVT_PDU_RECV) or assoc.get_handlers(evt.EVT_DATA_RECV):
            return None
        return StorageLane(contexts, self.store, self._spares.take)

    def _on_end(self, event: Any) -> None:
        self._keep_cut_off(event)
        with self._lock:
            studies = self._touched.pop(id(event.assoc), None)
        if studies:
            self._refresher.request(studies, self.origin(event.assoc))

    def _keep_cut_off(self, event: Any) -> None:
        """An object still arriving when the association ended (abort, dropped connection) is
        left half-written and unanswered; quarantine what arrived of it."""
        partial = _arriving(event.assoc)
        if partial is not None:
            self.ingest.cut_off(
                partial.path,
                self.origin(event.assoc),
                sop_uid=partial.sop_instance or None,
                sop_class=partial.sop_class or None,
            )


def _arriving(assoc: Any) -> Partial | None:
    """The object whose transfer broke off, its file closed: the storage lane's, or the one
    pynetdicom leaves behind without a word (read from its receiving message, whose attributes
    are not public API)."""
    lane = reactor.lane_of(assoc)
    arrived: Partial | None = lane.take_partial() if lane is not None else None
    if arrived is not None:
        return arrived
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if message is None or partial is None:
        return None
    message._data_set_file = None
    partial.close()
    command = getattr(message, "command_set", None)
    return Partial(
        Path(partial.name),
        str(getattr(command, "AffectedSOPInstanceUID", "") or ""),
        str(getattr(command, "AffectedSOPClassUID", "") or ""),
    )


def peer_certificate(assoc: Any) -> dict[str, Any] | None:
    """The client certificate of a TLS association (None without TLS or certificate)."""
    try:
        sock = assoc.dul.socket.socket
    except AttributeError:
        return None
    if not isinstance(sock, ssl.SSLSocket):
        return None
    certificate: dict[str, Any] | None = sock.getpeercert() or None
    return certificate


def caller_organization(
    assoc: Any,
    ingest: DicomIngest,
    organization_of_certificate: Callable[[dict[str, Any]], str | None] | None,
) -> str | None:
    """The Organization a caller acts for: the owner of the Device its calling AE title names;
    over TLS with a client certificate, only when the certificate names that same
    organization (an AE title is a string anyone can send; the certificate is proof)."""
    calling = str(assoc.requestor.ae_title).strip()
    owner = ingest.organization_of_ae(calling)
    certificate = peer_certificate(assoc)
    if owner is None or certificate is None or organization_of_certificate is None:
        return owner
    if organization_of_certificate(certificate) != owner:
        log.warning("DICOM caller %s: its client certificate is another organization's", calling)
        return None
    return owner


def _receive_into(folder: Path, *, sweep: bool = True) -> None:
    """Objects being received go to ``folder`` (the store's scratch, on its file system), not
    to the system's temporary folder: on a box whose /tmp is in memory a 1 GB instance would
    sit in RAM, and filing it would be a copy instead of a rename. pynetdicom makes that file
    with ``NamedTemporaryFile`` and takes no folder, so its module's name is pointed at one
    that has it. ``sweep``: leftovers of a crash mid-receive (never answered) are removed."""
    if sweep:
        _sweep(folder)
    dimse_messages.NamedTemporaryFile = partial(  # type: ignore[assignment]
        tempfile.NamedTemporaryFile, dir=folder, prefix=RECEIVING
    )


def _sweep(folder: Path) -> None:
    left = [p for p in folder.glob(f"{RECEIVING}*.dcm") if p.is_file()]
    received = [p for p in left if p.stat().st_size]  # the others are spares never used
    for path in left:
        path.unlink(missing_ok=True)
    if received:
        log.info("removed %d objects left half-received by a crash", len(received))


def _no_service_actions() -> None:
    """The accept loop's hook between connections: nothing to do (see ``DicomServer.start``)."""


def _copy_contexts(contexts: Any) -> Any:
    """Each presentation context with its own list of transfer syntaxes, the UIDs (immutable)
    shared: what ``copy.deepcopy`` gives an association, without walking every UID."""
    if not (isinstance(contexts, list) and all(type(c) is PresentationContext for c in contexts)):
        return copy.deepcopy(contexts)
    out = []
    for context in contexts:
        twin = PresentationContext.__new__(PresentationContext)
        twin.__dict__.update(context.__dict__)
        twin._transfer_syntax = list(context._transfer_syntax)
        out.append(twin)
    return out


def _copy_contexts_cheaply() -> None:
    """pynetdicom deep-copies the server's presentation contexts for every association it
    accepts (``RequestHandler._create_association``): for the gateway's 177 contexts with
    7,678 transfer syntaxes, about 45 ms of CPU, so a modality that opens an association per
    image was held to about 8 images a second. The module's ``deepcopy`` (used only there)
    becomes ``_copy_contexts``; anything but a list of contexts is still deep-copied."""
    if getattr(transport, "deepcopy", None) is copy.deepcopy:
        transport.deepcopy = _copy_contexts  # type: ignore[assignment]


def _nodelay(event: Any) -> None:
    """Nagle off: without it each small C-STORE response waits for a delayed ACK (PEERS.md)."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):  # the connection is already gone
        pass
