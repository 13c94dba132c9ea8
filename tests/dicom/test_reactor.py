"""pynetdicom's reactors, made event-driven by ``dicom.reactor``: an idle association does not
spin, and messages, releases and aborts still get through at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE, dimse, dul, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom import reactor


@pytest.fixture
def echo_server() -> Iterator[tuple[Any, list[str]]]:
    reactor.install()
    ended: list[str] = []
    ae = AE(ae_title="REACTOR")
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[
            (evt.EVT_RELEASED, lambda e: ended.append("released")),
            (evt.EVT_ABORTED, lambda e: ended.append("aborted")),
        ],
    )
    yield server, ended
    server.shutdown()


def _associate(server: Any) -> Any:
    ae = AE(ae_title="CALLER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.server_address[1], ae_title="REACTOR")
    assert assoc.is_established
    return assoc


class _Counter:
    """Counts calls of a method every pass of a reactor loop makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        self.calls = 0
        original = getattr(owner, name)

        def counted(this: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(this, *args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def test_install_reports_itself() -> None:
    assert reactor.install() is True
    assert reactor.installed()
    assert dul.DULServiceProvider.run_reactor is reactor._dul_run_reactor


def test_an_idle_association_does_not_spin(
    echo_server: tuple[Any, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = echo_server
    dul_passes = _Counter(monkeypatch, dul.DULServiceProvider, "_process_recv_primitive")
    assoc_passes = _Counter(monkeypatch, dimse.DIMSEServiceProvider, "get_msg")
    assoc = _associate(server)
    try:
        time.sleep(0.2)
        dul_before, assoc_before = dul_passes.calls, assoc_passes.calls
        time.sleep(1.0)
        # polling every millisecond: ~1,000 passes a second for each of the four loops (two
        # threads on each side); woken by events: one per IDLE (0.05 s) each
        assert dul_passes.calls - dul_before < 100
        assert assoc_passes.calls - assoc_before < 100
        assert assoc.send_c_echo().Status == 0x0000  # and it still answers
    finally:
        assoc.release()


def test_many_echoes_release_and_abort_get_through(echo_server: tuple[Any, list[str]]) -> None:
    server, ended = echo_server
    assoc = _associate(server)
    started = time.monotonic()
    for _ in range(200):
        assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    other = _associate(server)
    other.abort()
    deadline = time.monotonic() + 5
    while len(ended) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(ended) == ["aborted", "released"]
    # 200 round trips waiting IDLE (0.05 s) each would take 10 s: a wake-up was missed
    assert time.monotonic() - started < 8


def test_the_dul_thread_ends_when_its_association_does(
    echo_server: tuple[Any, list[str]],
) -> None:
    server, _ = echo_server
    before = {t.ident for t in threading.enumerate()}
    assoc = _associate(server)
    assoc.release()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
        if not any(isinstance(t, dul.DULServiceProvider) for t in new):
            break
        time.sleep(0.01)
    assert not any(isinstance(t, dul.DULServiceProvider) for t in new)
