"""The MLLP listener over real loopback sockets: a real client the project did not write
(mllp_send from Debian's python3-hl7), TLS with client certificates, bad framing, slow senders,
and a database fault that must leave the sender without an ACK."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from adapters.hl7v2 import mllp
from adapters.hl7v2.listener import ListenerSettings, MllpListener
from records import inbound
from security.principal import SYSTEM
from security.tls import server_context
from tests.adapters.hl7v2.conftest import SAMPLES, oru
from tests.tls import make_ca

MLLP_SEND = shutil.which("mllp_send")


@contextmanager
def running(ctx, **options) -> Iterator[MllpListener]:  # type: ignore[no-untyped-def]
    """An MLLP listener on an ephemeral port, in its own event loop thread."""
    context = options.pop("ssl_context", None)
    org_of_cert = options.pop("organization_of_certificate", None)
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(4)
    listener = MllpListener(
        ctx.hl7,
        ListenerSettings(port=0, **options),
        executor,
        ssl_context=context,
        organization_of_certificate=org_of_cert,
    )
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(listener.start(), loop).result(10)
    try:
        yield listener
    finally:
        asyncio.run_coroutine_threadsafe(listener.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        executor.shutdown()


def _connect(port: int, context: ssl.SSLContext | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return context.wrap_socket(sock, server_hostname="localhost") if context else sock


def _read_frame(sock: socket.socket) -> bytes:
    decoder = mllp.Decoder(1 << 20)
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed without an ACK")
        events = decoder.feed(data)
        if events:
            assert isinstance(events[0], mllp.Frame)
            return events[0].payload


def _msa(ack: bytes) -> list[str]:
    return next(s for s in ack.decode().split("\r") if s.startswith("MSA")).split("|")


@pytest.mark.slow
def test_mllp_send_delivers_the_sample_ecg(demo, client, tmp_path: Path) -> None:
    assert MLLP_SEND, "mllp_send (Debian package python3-hl7) must be installed: see .ci/run"
    port = client.app.state.mllp.port
    from gateway import demo as demo_data

    demo_data.load(client.app.state.ctx)
    result = subprocess.run(
        [
            MLLP_SEND,
            "--loose",
            "-f",
            str(SAMPLES / "ecg-oru-r01.hl7"),
            "-p",
            str(port),
            "127.0.0.1",
        ],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ack = result.stdout.replace(b"\n", b"\r")
    assert _msa(ack)[1] == "AA"
    reports = demo.records.search(SYSTEM, "DiagnosticReport", [("code", "11524-6")])
    assert reports.total == 1


def test_connection_survives_bad_input_and_keeps_order(demo) -> None:
    with running(demo) as listener, _connect(listener.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n" + mllp.frame(oru("ORDER-1")))
        junk_ack = _read_frame(sock)
        assert _msa(junk_ack)[1] == "AR" and b"outside an MLLP frame" in junk_ack
        assert _msa(_read_frame(sock))[1:3] == ["AA", "ORDER-1"]
        sock.sendall(mllp.frame(b"this is not HL7 at all"))
        not_hl7 = _read_frame(sock)
        assert _msa(not_hl7)[1] == "AR" and b"MSH" in not_hl7
        # missing start block: the frame is reported, the next one still works
        sock.sendall(oru("ORDER-2") + mllp.EB + mllp.CR + mllp.frame(oru("ORDER-3")))
        assert _msa(_read_frame(sock))[1] == "AR"
        assert _msa(_read_frame(sock))[1:3] == ["AA", "ORDER-3"]
        for n in range(4, 9):  # a burst: answered one by one, in order
            sock.sendall(mllp.frame(oru(f"ORDER-{n}")))
        assert [_msa(_read_frame(sock))[2] for _ in range(4, 9)] == [
            f"ORDER-{n}" for n in range(4, 9)
        ]
    with demo.engine.connect() as conn:
        total, rows = inbound.listing(conn, outcome="rejected")
    assert total == 3 and all(r.error for r in rows)


def test_oversize_message_is_refused_and_the_next_one_accepted(demo) -> None:
    with running(demo, max_bytes=2000) as listener, _connect(listener.port) as sock:
        big = oru(
            "BIG-1", obx=[f"OBX|{i}|NM|2093-3^总胆固醇^LN||5.8|mmol/L|||||F" for i in range(1, 80)]
        )
        assert len(big) > 2000
        sock.sendall(mllp.frame(big) + mllp.frame(oru("SMALL-1")))
        refused = _read_frame(sock)
        assert _msa(refused)[1] == "AR" and b"exceeds the limit of 2000 bytes" in refused
        assert _msa(refused)[2] == "BIG-1"  # the control ID is read from the head
        assert _msa(_read_frame(sock))[1:3] == ["AA", "SMALL-1"]


def test_slow_sender_gets_ar_and_silent_sender_is_disconnected(demo) -> None:
    with running(demo, frame_timeout=0.5, idle_timeout=1.0) as listener:
        with _connect(listener.port) as sock:
            sock.sendall(mllp.SB + oru("SLOW-1")[:40])  # starts, never finishes
            ack = _read_frame(sock)
            assert _msa(ack)[1] == "AR" and b"incomplete message" in ack
            assert sock.recv(10) == b""  # and the connection is closed
        with _connect(listener.port) as sock:
            started = time.monotonic()
            assert sock.recv(10) == b""  # nothing said: closed after the idle timeout
            assert 0.8 < time.monotonic() - started < 5
    with demo.engine.connect() as conn:
        _, rows = inbound.listing(conn, outcome="rejected")
    assert any("incomplete message" in (r.error or "") for r in rows)


def test_database_fault_closes_without_ack_and_the_retry_succeeds(demo, monkeypatch) -> None:
    from records import inbound as inbound_module

    real = inbound_module.insert_rows

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    with running(demo) as listener:
        monkeypatch.setattr(inbound_module, "insert_rows", broken)
        with _connect(listener.port) as sock:
            sock.sendall(mllp.frame(oru("FAULT-1")))
            with pytest.raises(ConnectionError):
                _read_frame(sock)
        assert demo.records.search(SYSTEM, "DiagnosticReport", []).total == 0
        monkeypatch.setattr(inbound_module, "insert_rows", real)
        with _connect(listener.port) as sock:
            sock.sendall(mllp.frame(oru("FAULT-1")))
            assert _msa(_read_frame(sock))[1] == "AA"
    assert demo.records.search(SYSTEM, "DiagnosticReport", []).total == 1


def test_concurrent_connections_each_get_their_own_acks(demo) -> None:
    results: dict[int, list[str]] = {}

    def sender(n: int, port: int) -> None:
        with _connect(port) as sock:
            got = []
            for i in range(10):
                sock.sendall(mllp.frame(oru(f"C{n}-{i}")))
                got.append(_msa(_read_frame(sock))[2])
            results[n] = got

    with running(demo) as listener:
        threads = [threading.Thread(target=sender, args=(n, listener.port)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == {n: [f"C{n}-{i}" for i in range(10)] for n in range(6)}
    # all 60 messages report the same order and test: one report and one observation (each
    # with 60 versions) beside the demo's 10 observations
    assert demo.records.search(SYSTEM, "DiagnosticReport", []).total == 1
    assert demo.records.search(SYSTEM, "Observation", []).total == 10 + 1


def test_tls_with_client_certificate_names_the_clinic(demo, tmp_path: Path) -> None:
    ca = make_ca(tmp_path, clients=["XINGFU_THC", "NOT_A_MEMBER"])
    server = server_context(str(ca.server_cert), str(ca.server_key), str(ca.ca_cert))
    organizations = {"XINGFU_THC": "XINGFU-THC"}

    def org_of(cert: dict) -> str | None:  # type: ignore[type-arg]
        from security.tls import certificate_common_name

        return organizations.get(certificate_common_name(cert) or "")

    with running(demo, ssl_context=server, organization_of_certificate=org_of) as listener:
        good = ca.client_context("XINGFU_THC")
        with _connect(listener.port, good) as sock:
            sock.sendall(mllp.frame(oru("TLS-1")))
            assert _msa(_read_frame(sock))[1] == "AA"
            # the certificate names Xingfu: a message claiming another clinic is refused
            sock.sendall(mllp.frame(oru("TLS-2", facility="HEPING_THC")))
            refused = _read_frame(sock)
            assert _msa(refused)[1] == "AR" and b"does not match" in refused
        anonymous = ssl.create_default_context(cafile=str(ca.ca_cert))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with _connect(listener.port, anonymous) as sock:
                sock.sendall(mllp.frame(oru("TLS-3")))
                _read_frame(sock)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            with _connect(listener.port) as sock:  # plain TCP to a TLS port
                sock.sendall(mllp.frame(oru("TLS-4")))
                _read_frame(sock)
