"""pynetdicom's two reactor loops woken by events instead of polling every millisecond.

Each pynetdicom association runs two threads that poll: the DUL thread sleeps 1 ms whenever
nothing happened (so a PDU that arrives, or a response the handler queued, waits up to 1 ms
before it is read or sent), and the association thread sleeps 1 ms before every look for a
complete DIMSE message. On a C-STORE that is up to three waits per instance, and on a busy
2-core box ``time.sleep(0.001)`` often lasts several milliseconds; an idle association wakes
2,000 times a second. pynetdicom says so itself ("TODO: try and make this event based").

``install()`` replaces the two loops with copies that wait for work instead:

- the DUL thread waits in ``select`` on its socket and on a wake-up socket pair, which is rung
  whenever something is queued for it to send (``to_provider_queue``) or it is asked to stop;
- the association thread waits on an ``Event`` set whenever a DIMSE message is complete
  (``dimse.msg_queue``), an ACSE primitive arrives (``to_user_queue``), the DUL thread ends or
  the association is killed.

Once an association is established, its AE may offer it a storage lane (``dicom.lane``): the
DUL thread then gives the lane each PDU to read instead of pynetdicom's ``_read_pdu_data``.

Both loops wake at least every ``IDLE`` seconds to run pynetdicom's own timer checks (ARTIM, network
timeout), which are coarser than that. Everything else in the loops is pynetdicom's, copied
from 3.0; ``install`` refuses (and pynetdicom keeps polling) when the internals it relies on are
not there.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import association, dimse, dul, evt
from pynetdicom.pdu import A_ABORT_RQ

log = logging.getLogger(__name__)

IDLE = 0.05  # seconds a loop sleeps at most between its timer checks

_installed = False


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``wake`` after each item is put (under the queue's lock)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._wake()


def _work(assoc: Any) -> threading.Event:
    """The event an association's thread waits on."""
    event: threading.Event | None = getattr(assoc, "_yilian_work", None)
    if event is None:
        event = threading.Event()
        assoc._yilian_work = event
    return event


# -- the DUL thread ----------------------------------------------------------------------------


def _dul_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, assoc: Any) -> None:
        original(self, assoc)
        self._yilian_wake = socket.socketpair()
        for end in self._yilian_wake:
            end.setblocking(False)
        work = _work(assoc)
        self.to_provider_queue = _WakingQueue(lambda: _ring(self))
        self.to_user_queue = _WakingQueue(work.set)

    return __init__


def _ring(provider: Any) -> None:
    """Wake the DUL thread (it may be waiting in ``select``)."""
    try:
        provider._yilian_wake[1].send(b"\0")
    except (OSError, AttributeError):  # closed (the thread ended) or full (already rung)
        pass


def _wait(provider: Any) -> None:
    """Wait until the socket has data, something is queued to send, or IDLE passes."""
    wake = provider._yilian_wake[0]
    sock = getattr(provider.socket, "socket", None) if provider.socket else None
    if sock is None:
        time.sleep(provider._run_loop_delay)
        return
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return  # decrypted data waits in the SSL buffer, which select does not see
    try:
        ready, _, _ = select.select([sock, wake], [], [], IDLE)
    except (OSError, ValueError):  # the socket closed under us: the loop finds out
        return
    if wake in ready:
        try:
            while wake.recv(4096):
                pass
        except OSError:  # drained (BlockingIOError) or closed
            pass


def _dul_run_reactor(self: Any) -> None:
    """``DULServiceProvider.run_reactor`` of pynetdicom 3.0 with ``_wait`` for its sleep."""
    self._idle_timer.start()
    sleep = False
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                _wait(self)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif _transport_event(self):
                    self._idle_timer.restart()
            except Exception as exc:
                dul.LOGGER.error("Exception in DUL.run(), aborting association")
                dul.LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            sleep = False
    finally:
        _work(self.assoc).set()  # the association thread checks ``dul.is_alive()``
        for end in self._yilian_wake:
            end.close()


_UNDECIDED = object()


def _transport_event(provider: Any) -> bool:
    """``_is_transport_event``, or, on an established association whose AE offers a storage
    lane (``storage_lane(assoc)``, see ``dicom.lane``) and that the offer takes, the lane's
    reading of the next PDU. Decided once, when the association is first seen established."""
    lane = provider.__dict__.get("_yilian_lane", _UNDECIDED)
    established = provider.state_machine.current_state == "Sta6"
    if lane is _UNDECIDED:
        if not established:
            return bool(provider._is_transport_event())
        offer = getattr(provider.assoc.ae, "storage_lane", None)
        lane = offer(provider.assoc) if offer is not None and provider.assoc.is_acceptor else None
        provider._yilian_lane = lane
    if lane is None or not established:
        return bool(provider._is_transport_event())
    if not (provider.socket and provider.socket.ready):
        return False
    lane.read(provider)
    return True


def lane_of(assoc: Any) -> Any:
    """The storage lane serving ``assoc`` (None: pynetdicom serves it all)."""
    lane = getattr(getattr(assoc, "dul", None), "_yilian_lane", None)
    return None if lane is _UNDECIDED else lane


def _kill_dul(self: Any) -> None:
    self._kill_thread = True
    _ring(self)


def _stop_dul(self: Any) -> bool:
    if self.state_machine.current_state == "Sta1":
        self._kill_thread = True
        _ring(self)
        while self.is_alive():
            time.sleep(0.001)
        return True
    return False


# -- the association thread --------------------------------------------------------------------


def _dimse_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, assoc: Any) -> None:
        original(self, assoc)
        self.msg_queue = _WakingQueue(_work(assoc).set)

    return __init__


class _Checkpoint(threading.Event):
    """The association's ``_reactor_checkpoint``: a thread that clears it (to send on the
    association itself) then waits for the reactor to pause, so clearing wakes the reactor."""

    def __init__(self, work: threading.Event) -> None:
        super().__init__()
        self._work = work

    def clear(self) -> None:
        super().clear()
        self._work.set()


def _assoc_init(original: Callable[..., None]) -> Callable[..., None]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        checkpoint = _Checkpoint(_work(self))
        if self._reactor_checkpoint.is_set():
            checkpoint.set()
        self._reactor_checkpoint = checkpoint  # no thread of the association runs yet

    return __init__


def _assoc_kill(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def kill(self: Any) -> None:
        _work(self).set()
        original(self)

    return kill


def _assoc_run_reactor(self: Any) -> None:
    """``Association._run_reactor`` of pynetdicom 3.0 waiting on its work event instead of
    sleeping 1 ms before each look."""
    work = _work(self)
    self._is_paused = False
    while not self._kill:
        work.clear()
        if (
            self.dimse.msg_queue.empty()
            and self.dul.to_user_queue.empty()
            and self._reactor_checkpoint.is_set()  # no sender waiting for the reactor to pause
        ):
            work.wait(IDLE)

        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False
        if not self._reactor_checkpoint.is_set():
            # a sender paused the reactor just as it passed (it may have seen ``_is_paused``
            # still true): round again and pause, rather than take the answer it waits for.
            # pynetdicom's own loop has this race too, hidden by its 1 ms sleep.
            continue

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            association.LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            association.LOGGER.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            association.LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


# -- installing --------------------------------------------------------------------------------

_NEEDED = (
    (dul.DULServiceProvider, ("run_reactor", "kill_dul", "stop_dul", "_process_recv_primitive")),
    (dul.DULServiceProvider, ("_is_transport_event", "idle_timer_expired", "receive_pdu")),
    (dul.DULServiceProvider, ("_decode_pdu",)),
    (dimse.DIMSEServiceProvider, ("get_msg",)),
    (association.Association, ("_run_reactor", "kill", "_serve_request")),
)


def install() -> bool:
    """Make pynetdicom's reactors event-driven in this process (idempotent). False, with a log
    line, when this pynetdicom lacks what the copies rely on: it then keeps polling."""
    global _installed
    if _installed:
        return True
    missing = [f"{cls.__name__}.{name}" for cls, names in _NEEDED for name in names]
    missing = [m for m in missing if not _has(m)]
    if missing:
        log.warning("pynetdicom's reactors keep polling: %s not found", ", ".join(missing))
        return False
    provider, messages, assoc = dul.DULServiceProvider, dimse.DIMSEServiceProvider, association
    setattr(provider, "__init__", _dul_init(provider.__init__))  # noqa: B010 - a class patch
    setattr(provider, "run_reactor", _dul_run_reactor)  # noqa: B010
    setattr(provider, "kill_dul", _kill_dul)  # noqa: B010
    setattr(provider, "stop_dul", _stop_dul)  # noqa: B010
    setattr(messages, "__init__", _dimse_init(messages.__init__))  # noqa: B010
    setattr(assoc.Association, "__init__", _assoc_init(assoc.Association.__init__))  # noqa: B010
    setattr(assoc.Association, "_run_reactor", _assoc_run_reactor)  # noqa: B010
    setattr(assoc.Association, "kill", _assoc_kill(assoc.Association.kill))  # noqa: B010
    _installed = True
    return True


def installed() -> bool:
    return _installed


def _has(dotted: str) -> bool:
    owner, name = dotted.split(".")
    classes = {
        "DULServiceProvider": dul.DULServiceProvider,
        "DIMSEServiceProvider": dimse.DIMSEServiceProvider,
        "Association": association.Association,
    }
    return hasattr(classes[owner], name)
