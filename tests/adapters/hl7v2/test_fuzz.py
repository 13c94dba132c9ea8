"""Property tests: hostile bytes never crash the parser or the MLLP decoder, and escaping
round-trips text."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adapters.hl7v2.errors import Hl7Error
from adapters.hl7v2.escape import escape, unescape
from adapters.hl7v2.message import Message, parse
from adapters.hl7v2.mllp import Decoder, Frame, Junk, Oversize, frame

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIME_LIMIT = 2.0  # seconds for one parse and a full read of a message of a few KB

ORU = (
    "MSH|^~\\&|LIS|XZ01|YILIAN|COUNTY|20261120101500+0800||ORU^R01^ORU_R01|M-1|P|2.5.1"
    "|||AL|NE|CHN|UNICODE UTF-8\r"
    "PID|1||XF0042^^^XZ01&1.2.156&ISO^MR~11010519491231002X^^^^NNCHN||王^秀英^^^^^L||19520314|F"
    "|||幸福路1号^^信阳市^河南省^464000^CHN^H||^PRN^CP^^^^^^^^^13800000000\r"
    "PV1|1|O|LAB^^^XZ01\r"
    "OBR|1|ORD-1|FIL-1|24331-1^血脂四项^LN|||20261120080000+0800\r"
    "OBX|1|NM|2093-3^总胆固醇^LN||5.8|mmol/L|<5.2|H|||F|||20261120090000\r"
    "OBX|2|ST|X-1^备注^L||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\\\.br\\g\\Zxx\\||||||F\r"
    "NTE|1||注意\\H\\复查\\N\\\r"
    "ZXY|1|custom\r"
).encode()
GB_ORU = ORU.decode().replace("UNICODE UTF-8", "GB 18030-2000").encode("gb18030")

SPECIAL = [b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\x0b", b"\x1c", b"\x00", b"\xff"]
SPECIAL += [b"\\X", b"\\X4\\", b"\\XE4B8\\", b"\\.br\\", b"MSH|^~\\&|", b"\r\r\n", b"\x81\x30"]


def read_everything(message: Message) -> None:
    """What a mapping might do: read every field every way, then ask what was not read."""
    assert message.segments and message.msh.name == "MSH"
    message.message_type  # noqa: B018
    for segment in message.segments:
        for n in range(1, len(segment.fields) + 2):
            segment.raw(n)
            for rep, components in enumerate(segment.reps(n)):
                assert components
                segment.components(n, rep)
                segment.value(n, 1, rep)
                segment.value(n, len(components) + 1, rep)
    assert isinstance(message.unmapped(), list)


def parse_or_refuse(raw: bytes, default_codec: str | None = None) -> None:
    start = time.perf_counter()
    try:
        message = parse(raw, default_codec=default_codec)
    except Hl7Error as exc:
        assert str(exc)
        assert exc.code
    else:
        assert isinstance(message, Message)
        read_everything(message)
    assert time.perf_counter() - start < TIME_LIMIT


def test_base_messages_are_valid() -> None:
    for raw, codec in ((ORU, "utf-8"), (GB_ORU, "gb18030")):
        message = parse(raw)
        assert message.codec == codec
        assert message.message_type == "ORU^R01"
        assert len(message.segments) == 8
        obx = message.all("OBX")[1]
        assert obx.value(5) == "a|b^c&d~e\\fA\ng\\Zxx\\"


@FUZZ
@given(st.binary(max_size=2048), st.sampled_from([None, "utf-8", "gb18030", "gbk", "latin-1"]))
def test_parse_arbitrary_bytes(raw: bytes, default_codec: str | None) -> None:
    parse_or_refuse(raw, default_codec)


@FUZZ
@given(st.binary(max_size=600))
def test_parse_arbitrary_bytes_after_a_valid_msh(tail: bytes) -> None:
    parse_or_refuse(b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1\r" + tail)
    parse_or_refuse(b"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1|||||CHN|GBK\r" + tail)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([ORU, GB_ORU])))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(st.sampled_from(SPECIAL))
        elif kind == "delete" and data:
            del data[position : position + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[position:]
        elif kind == "duplicate":
            segments = bytes(data).split(b"\r")
            k = draw(st.integers(0, max(len(segments) - 1, 0)))
            segments.insert(k, segments[k])
            data = bytearray(b"\r".join(segments))
    return bytes(data)


@FUZZ
@given(mutated())
def test_parse_mutated_oru(raw: bytes) -> None:
    parse_or_refuse(raw)


@FUZZ
@given(mutated(), st.sampled_from(["utf-8", "gb18030"]))
def test_parse_mutated_oru_with_a_sender_default(raw: bytes, codec: str) -> None:
    parse_or_refuse(raw, codec)


# --- MLLP -----------------------------------------------------------------------------------

MLLP_BYTES = st.lists(
    st.one_of(
        st.binary(min_size=1, max_size=40),
        st.sampled_from([b"\x0b", b"\x1c", b"\r", b"\x1c\r", b"\r\n", b"\x0b\x1c"]),
    ),
    max_size=16,
).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def run(decoder: Decoder, chunks: list[bytes]) -> list:
    events: list = []
    for chunk in chunks:
        out = decoder.feed(chunk)
        assert all(isinstance(e, Frame | Junk | Oversize) for e in out)
        events += out
    events += decoder.close()
    return events


@FUZZ
@given(st.data(), MLLP_BYTES, st.integers(1, 200))
def test_decoder_never_raises_nor_invents_bytes(
    data: st.DataObject, raw: bytes, limit: int
) -> None:
    chunks = data.draw(chunked(raw))
    events = run(Decoder(limit), chunks)
    frames = [e.payload for e in events if isinstance(e, Frame)]
    assert sum(len(p) for p in frames) <= len(raw)
    assert all(len(p) <= limit for p in frames)
    accounted = sum(len(p) for p in frames) + sum(e.size for e in events if isinstance(e, Oversize))
    assert accounted <= len(raw)
    for event in events:
        if isinstance(event, Frame):
            assert event.payload in raw
            assert b"\x1c" not in event.payload


@FUZZ
@given(st.data(), MLLP_BYTES)
def test_frames_do_not_depend_on_chunking(data: st.DataObject, raw: bytes) -> None:
    whole = [e for e in run(Decoder(1 << 20), [raw]) if isinstance(e, Frame)]
    pieces = [e for e in run(Decoder(1 << 20), data.draw(chunked(raw))) if isinstance(e, Frame)]
    assert pieces == whole


@FUZZ
@given(
    st.data(),
    st.lists(
        st.binary(max_size=120).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")),
        max_size=6,
    ),
)
def test_framed_payloads_come_back_exactly(data: st.DataObject, payloads: list[bytes]) -> None:
    stream = b"".join(frame(p) for p in payloads)
    events = run(Decoder(1 << 20), data.draw(chunked(stream)))
    assert events == [Frame(p) for p in payloads]


# --- escaping -------------------------------------------------------------------------------

SEPARATORS = st.permutations(list("|^~\\&#$%*!@/")).map(lambda chars: "".join(chars[:5]))


@FUZZ
@given(st.text())
def test_escape_round_trip_default_separators(text: str) -> None:
    # \r and \r\n are written as \.br\ (a line break), which reads back as \n
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    escaped = escape(text)
    assert unescape(escaped, "|^~\\&") == expected
    assert not any(ch in escaped for ch in "|^~&\r\n")


@FUZZ
@given(st.text(alphabet=st.characters(blacklist_characters="\r")), SEPARATORS)
def test_escape_round_trip_any_separators(text: str, seps: str) -> None:
    escaped = escape(text, seps)
    assert unescape(escaped, seps) == text
    field, component, repetition, _, subcomponent = seps
    assert not any(ch in escaped for ch in (field, component, repetition, subcomponent, "\n"))


@FUZZ
@given(st.text(alphabet=st.characters(blacklist_characters="\r", blacklist_categories=["Cs"])))
def test_escaped_text_survives_a_parse(text: str) -> None:
    assume(text != '""')  # HL7's explicit null
    raw = ("MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1\rNTE|1||" + escape(text) + "\r").encode()
    nte = parse(raw).first("NTE")
    assert nte is not None
    assert len(nte.reps(3)) <= 1
    assert nte.value(3) == text
