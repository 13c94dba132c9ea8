"""Throw mutated and random bytes at a live MLLP listener: it never crashes or hangs, answers
what it can, and keeps serving everyone else."""

from __future__ import annotations

import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2 import mllp
from tests.adapters.hl7v2.conftest import oru
from tests.adapters.hl7v2.test_listener import _connect, _msa, _read_frame, running

VALID = oru("FUZZ-BASE")


@st.composite
def mutated(draw):  # type: ignore[no-untyped-def]
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(
                st.sampled_from(
                    [
                        b"|",
                        b"^",
                        b"~",
                        b"\\",
                        b"&",
                        b"\r",
                        b"\x0b",
                        b"\x1c",
                        b"\\X41\\",
                        "王".encode(),
                    ]
                )
            )
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 20))]
        else:
            del data[at:]
    return bytes(data)


def test_listener_survives_fuzzed_input(demo) -> None:
    with running(demo, frame_timeout=0.3, idle_timeout=2.0) as listener:

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(st.one_of(mutated(), st.binary(max_size=300)), st.booleans())
        def probe(payload: bytes, framed: bool) -> None:
            with _connect(listener.port) as sock:
                sock.settimeout(5)
                sock.sendall(mllp.frame(payload) if framed else payload)
                try:
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(65536):  # whatever it answers, it answers in bounded time
                        pass
                except (ConnectionError, OSError):
                    pass

        probe()
        with _connect(listener.port) as sock:  # and a good sender is still served
            sock.sendall(mllp.frame(oru("AFTER-FUZZ")))
            assert _msa(_read_frame(sock))[1:3] == ["AA", "AFTER-FUZZ"]
