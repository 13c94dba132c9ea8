"""MLLP framing: adapters.hl7v2.mllp.Decoder turns bytes (in any chunking) into events."""

from __future__ import annotations

import pytest

from adapters.hl7v2.mllp import JUNK_LIMIT, Decoder, Frame, Junk, Oversize, frame

# A realistic payload: several segments, UTF-8 Chinese text, every separator and an escape.
PAYLOAD = (
    "MSH|^~\\&|LIS|XINGFU_THC|YILIAN|COUNTY|20261120101500+0800||ORU^R01^ORU_R01|M-1|P|2.5.1"
    "||||||UNICODE UTF-8\rPID|1||XF0042^^^XINGFU_THC^MR||王^秀英||19520314|F\r"
    "OBX|1|NM|2093-3^总胆固醇^LN||5.8|mmol/L|<5.2|H|||F\rNTE|1||a\\F\\b&c~d\r"
).encode()
# GB 18030 bytes: trailing bytes 0x5C and 0x7C ('\\' and '|') must not matter to framing.
GB_PAYLOAD = "MSH|^~\\&|A|B|C|D|20260101||ADT^A01|G-1|P|2.5|||||||GBK\rPID|1||1||誠^東\r".encode(
    "gbk"
)
BIG = 1 << 20


def feed_all(decoder: Decoder, chunks: list[bytes]) -> list:
    events: list = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events


def test_frame_wraps_payload_in_start_and_end_blocks() -> None:
    assert frame(b"MSH|x") == b"\x0bMSH|x\x1c\r"


@pytest.mark.parametrize("payload", [PAYLOAD, GB_PAYLOAD, b"", b"x"])
def test_frame_round_trip(payload: bytes) -> None:
    decoder = Decoder(BIG)
    assert decoder.feed(frame(payload)) == [Frame(payload)]
    assert not decoder.in_frame
    assert decoder.pending() == b""
    assert decoder.close() == []


@pytest.mark.parametrize("payload", [PAYLOAD, GB_PAYLOAD])
def test_byte_by_byte_yields_the_same_frame(payload: bytes) -> None:
    data = frame(payload) + frame(b"second")
    decoder = Decoder(BIG)
    events = feed_all(decoder, [data[i : i + 1] for i in range(len(data))])
    assert events == [Frame(payload), Frame(b"second")]
    assert decoder.close() == []


@pytest.mark.parametrize("payload", [PAYLOAD, GB_PAYLOAD])
def test_two_chunks_at_every_split_point(payload: bytes) -> None:
    data = frame(payload) + frame(b"next")
    for cut in range(len(data) + 1):
        decoder = Decoder(BIG)
        events = feed_all(decoder, [data[:cut], data[cut:]])
        assert events == [Frame(payload), Frame(b"next")], cut
        assert decoder.close() == [], cut


def test_several_frames_in_one_chunk() -> None:
    payloads = [b"MSH|1", PAYLOAD, b"MSH|3", GB_PAYLOAD]
    decoder = Decoder(BIG)
    events = decoder.feed(b"".join(frame(p) for p in payloads))
    assert events == [Frame(p) for p in payloads]


@pytest.mark.parametrize("gap", [b"\r\n", b"\n", b"\r\n\r\n", b"  \t\r\n", b"\r"])
def test_blank_lines_between_frames_are_ignored(gap: bytes) -> None:
    data = gap + frame(b"MSH|1") + gap + frame(b"MSH|2") + gap
    decoder = Decoder(BIG)
    assert decoder.feed(data) == [Frame(b"MSH|1"), Frame(b"MSH|2")]
    assert decoder.close() == []
    # and the same byte by byte
    decoder = Decoder(BIG)
    assert feed_all(decoder, [bytes([b]) for b in data]) == [Frame(b"MSH|1"), Frame(b"MSH|2")]
    assert decoder.close() == []


def test_end_block_without_carriage_return_is_accepted() -> None:
    decoder = Decoder(BIG)
    data = b"\x0bMSH|1\x1c\x0bMSH|2\x1c"
    assert decoder.feed(data) == [Frame(b"MSH|1"), Frame(b"MSH|2")]
    assert not decoder.in_frame
    assert decoder.close() == []


def test_carriage_return_after_a_split_end_block_does_not_leak() -> None:
    decoder = Decoder(BIG)
    assert decoder.feed(b"\x0bMSH|1\x1c") == [Frame(b"MSH|1")]
    # the <CR> that belongs to the first frame arrives first in the next chunk
    assert decoder.feed(b"\r\x0bMSH|2\x1c\r") == [Frame(b"MSH|2")]
    # the CR must not turn up in a later frame nor as junk
    assert decoder.feed(b"\x0bMSH|3\x1c") == [Frame(b"MSH|3")]
    assert decoder.feed(b"\rjunk") == []
    assert decoder.close() == [Junk(b"junk", "bytes outside an MLLP frame")]


def test_bytes_before_a_start_block_are_reported_as_junk() -> None:
    decoder = Decoder(BIG)
    events = decoder.feed(b"GET / HTTP/1.1" + frame(b"MSH|1"))
    assert len(events) == 2
    junk, ok = events
    assert isinstance(junk, Junk)
    assert junk.data == b"GET / HTTP/1.1"
    assert junk.reason == "bytes outside an MLLP frame"
    assert ok == Frame(b"MSH|1")


def test_junk_split_over_chunks_is_reported_once_when_the_frame_starts() -> None:
    decoder = Decoder(BIG)
    assert decoder.feed(b"hel") == []
    assert decoder.feed(b"lo") == []
    assert decoder.feed(frame(b"MSH|1")) == [
        Junk(b"hello", "bytes outside an MLLP frame"),
        Frame(b"MSH|1"),
    ]


def test_end_block_without_start_block_is_junk() -> None:
    decoder = Decoder(BIG)
    events = decoder.feed(b"MSH|lost start\x1c\r" + frame(b"MSH|2"))
    assert len(events) == 2
    assert isinstance(events[0], Junk)
    assert events[0].data == b"MSH|lost start"
    assert events[0].reason.startswith("frame without a start block")
    assert events[1] == Frame(b"MSH|2")
    assert decoder.close() == []


def test_end_block_without_start_block_split_over_chunks() -> None:
    decoder = Decoder(BIG)
    assert decoder.feed(b"MSH|lo") == []
    events = decoder.feed(b"st\x1c")
    assert [type(e) for e in events] == [Junk]
    assert events[0].data == b"MSH|lost"
    assert events[0].reason.startswith("frame without a start block")
    # the CR of that broken frame arrives in the next chunk and is swallowed
    assert decoder.feed(b"\r" + frame(b"MSH|2")) == [Frame(b"MSH|2")]
    assert decoder.close() == []


def test_oversize_frame_is_reported_with_true_size_and_head_then_decoding_resumes() -> None:
    big = b"MSH|^~\\&|" + b"x" * 200
    decoder = Decoder(max_bytes=50)
    events = decoder.feed(frame(big) + frame(b"MSH|ok"))
    assert len(events) == 2
    over, ok = events
    assert isinstance(over, Oversize)
    assert over.size == len(big)
    assert over.head and big.startswith(over.head)
    assert over.head.startswith(b"MSH|^~\\&|")
    assert ok == Frame(b"MSH|ok")
    assert not decoder.in_frame


def test_oversize_frame_fed_byte_by_byte() -> None:
    big = b"MSH|^~\\&|" + b"y" * 100
    data = frame(big) + frame(b"MSH|ok")
    decoder = Decoder(max_bytes=20)
    events = feed_all(decoder, [data[i : i + 1] for i in range(len(data))])
    assert len(events) == 2
    assert isinstance(events[0], Oversize)
    assert events[0].size == len(big)
    assert big.startswith(events[0].head)
    assert len(events[0].head) >= 9  # at least the MSH-1/MSH-2 part, for the ACK
    assert events[1] == Frame(b"MSH|ok")


def test_oversize_split_at_every_point_reports_the_same_size() -> None:
    big = b"MSH|" + b"z" * 60
    data = frame(big) + frame(b"MSH|ok")
    for cut in range(len(data) + 1):
        decoder = Decoder(max_bytes=30)
        events = feed_all(decoder, [data[:cut], data[cut:]])
        assert [type(e) for e in events] == [Oversize, Frame], cut
        assert events[0].size == len(big), cut
        assert big.startswith(events[0].head) and events[0].head, cut
        assert events[1] == Frame(b"MSH|ok"), cut


def test_size_limit_is_inclusive() -> None:
    decoder = Decoder(max_bytes=10)
    assert decoder.feed(frame(b"0123456789")) == [Frame(b"0123456789")]
    events = decoder.feed(frame(b"0123456789A"))
    assert len(events) == 1 and isinstance(events[0], Oversize)
    assert events[0].size == 11


def test_close_reports_pending_junk() -> None:
    decoder = Decoder(BIG)
    assert decoder.feed(frame(b"MSH|1") + b"trailing garbage") == [Frame(b"MSH|1")]
    assert decoder.close() == [Junk(b"trailing garbage", "bytes outside an MLLP frame")]


def test_close_ignores_pending_whitespace() -> None:
    decoder = Decoder(BIG)
    decoder.feed(frame(b"MSH|1") + b"\r\n \r\n")
    assert decoder.close() == []


def test_large_unframed_input_is_reported_without_waiting_for_close() -> None:
    decoder = Decoder(BIG)
    events = decoder.feed(b"A" * (JUNK_LIMIT + 10))
    assert len(events) == 1 and isinstance(events[0], Junk)
    assert len(events[0].data) <= JUNK_LIMIT
    assert decoder.close() == []


def test_in_frame_and_pending_while_a_frame_is_incomplete() -> None:
    decoder = Decoder(BIG)
    assert not decoder.in_frame
    assert decoder.pending() == b""
    assert decoder.feed(b"\x0bMSH|^~\\&|A") == []
    assert decoder.in_frame
    assert decoder.pending() == b"MSH|^~\\&|A"
    assert decoder.feed(b"BC\r") == []
    assert decoder.pending() == b"MSH|^~\\&|ABC\r"
    assert decoder.feed(b"PID|1\x1c\r") == [Frame(b"MSH|^~\\&|ABC\rPID|1")]
    assert not decoder.in_frame
    assert decoder.pending() == b""


def test_pending_of_an_oversize_frame_is_its_head() -> None:
    decoder = Decoder(max_bytes=8)
    assert decoder.feed(b"\x0bMSH|^~\\&|LIS|XZ") == []
    assert decoder.in_frame
    head = decoder.pending()
    assert head and b"MSH|^~\\&|LIS|XZ".startswith(head)
    events = decoder.feed(b"more\x1c\r")
    assert len(events) == 1 and isinstance(events[0], Oversize)
    assert events[0].size == len(b"MSH|^~\\&|LIS|XZmore")
    assert decoder.pending() == b""
    assert not decoder.in_frame
