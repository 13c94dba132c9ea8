"""ACK messages (adapters.hl7v2.ack): which reply to send, and how it is written."""

from __future__ import annotations

import pytest

from adapters.hl7v2 import ack
from adapters.hl7v2.ack import Header, Issue, build, reply_code
from adapters.hl7v2.errors import Location
from adapters.hl7v2.message import parse

ORIGINAL = Header(
    sending_app="LIS",
    sending_facility="XZ01",
    receiving_app="YILIAN",
    receiving_facility="COUNTY",
    control_id="CTRL-42",
    processing_id="P",
    version="2.5.1",
    event="ORU^R01",
)
NASTY = "bad | bar ^ hat & amp ~ tilde \\ backslash"


def fields_of(ack_bytes: bytes, codec: str = "utf-8") -> list[list[str]]:
    """Split an ACK by hand (independently of the parser): segments, then fields."""
    text = ack_bytes.decode(codec)
    assert text.endswith("\r")
    return [segment.split("|") for segment in text[:-1].split("\r")]


def msh_field(segment: list[str], n: int) -> str:
    """MSH-n of a hand-split MSH (segment[0] is 'MSH', segment[1] is MSH-2)."""
    return segment[n - 1] if n - 1 < len(segment) else ""


# --- which reply ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ok, rejected, expected", [(True, False, "AA"), (False, False, "AE"), (False, True, "AR")]
)
def test_original_mode(ok: bool, rejected: bool, expected: str) -> None:
    assert not ORIGINAL.enhanced
    assert reply_code(ORIGINAL, ok, rejected) == expected


# (MSH-15, MSH-16) -> reply for (accepted, error, rejected)
ENHANCED = [
    ("AL", "NE", ("CA", "CE", "CR")),
    ("AL", "AL", ("CA", "CE", "CR")),
    ("al", "", ("CA", "CE", "CR")),
    ("NE", "AL", ("AA", "AE", "AR")),
    ("NE", "NE", (None, None, None)),
    ("NE", "ER", (None, "AE", "AR")),
    ("NE", "SU", ("AA", None, None)),
    ("ER", "NE", (None, "CE", "CR")),
    ("ER", "AL", ("AA", "CE", "CR")),
    ("ER", "SU", ("AA", "CE", "CR")),
    ("SU", "NE", ("CA", None, None)),
    ("SU", "ER", ("CA", "AE", "AR")),
    ("SU", "AL", ("CA", "AE", "AR")),
    ("", "AL", ("AA", "AE", "AR")),
    ("", "NE", (None, None, None)),
]


@pytest.mark.parametrize("accept, application, replies", ENHANCED)
def test_enhanced_mode(accept: str, application: str, replies: tuple) -> None:
    header = Header(control_id="C1", accept_ack=accept, application_ack=application)
    assert header.enhanced
    ok, error, rejected = replies
    assert reply_code(header, True, False) == ok
    assert reply_code(header, False, False) == error
    assert reply_code(header, False, True) == rejected


# --- how it is written ----------------------------------------------------------------------


def test_ack_header_and_msa() -> None:
    segments = fields_of(build(ORIGINAL, "AA", []))
    assert [s[0] for s in segments] == ["MSH", "MSA"]
    msh, msa = segments
    assert msh_field(msh, 1) == "MSH"  # i.e. MSH-1 is the '|' itself
    assert msh[1] == "^~\\&"
    assert msh_field(msh, 3) == ack.APPLICATION
    assert msh_field(msh, 4) == "COUNTY"  # who we are: the original receiving facility
    assert msh_field(msh, 5) == "LIS"  # the original MSH-3
    assert msh_field(msh, 6) == "XZ01"  # the original MSH-4
    assert len(msh_field(msh, 7)) >= 14 and msh_field(msh, 7)[:14].isdigit()
    assert msh_field(msh, 9) == "ACK^R01^ACK"
    assert msh_field(msh, 10) and msh_field(msh, 10) != "CTRL-42"
    assert msh_field(msh, 11) == "P"
    assert msh_field(msh, 12) == "2.5.1"
    assert msh_field(msh, 18) == ""
    assert msa == ["MSA", "AA", "CTRL-42"]


def test_each_ack_has_its_own_control_id() -> None:
    first = fields_of(build(ORIGINAL, "AA", []))[0]
    second = fields_of(build(ORIGINAL, "AA", []))[0]
    assert msh_field(first, 10) != msh_field(second, 10)


@pytest.mark.parametrize(
    "event, expected", [("ORU^R01", "ACK^R01^ACK"), ("ADT^A08", "ACK^A08^ACK"), ("", "ACK")]
)
def test_ack_message_type(event: str, expected: str) -> None:
    header = Header(control_id="C1", event=event)
    assert msh_field(fields_of(build(header, "AE", []))[0], 9) == expected


def test_ack_parses_with_the_gateway_parser() -> None:
    msg = parse(build(ORIGINAL, "AE", [Issue("x", Location("PID", 2, 3))], text="error"))
    assert msg.message_type == "ACK^R01"
    assert msg.msh.value(5) == "LIS" and msg.msh.value(6) == "XZ01"
    msa = msg.first("MSA")
    assert msa is not None
    assert msa.value(1) == "AE" and msa.value(2) == "CTRL-42" and msa.value(3) == "error"


def test_msa_text_is_escaped_and_cut_to_80_characters() -> None:
    msg = parse(build(ORIGINAL, "AE", [], text=NASTY))
    msa = msg.first("MSA")
    assert msa is not None
    assert len(msa.fields) == 4
    assert msa.value(3) == NASTY
    long = parse(build(ORIGINAL, "AE", [], text="x" * 200)).first("MSA")
    assert long is not None and long.value(3) == "x" * 80


def test_err_v25_layout() -> None:
    issues = [
        Issue("PID-3 is required", Location("PID", 2, 3), "101"),
        Issue("component", Location("OBX", 4, 5, 2), "102", severity="W"),
        Issue("no place"),
    ]
    segments = fields_of(build(ORIGINAL, "AE", issues))
    errs = [s for s in segments if s[0] == "ERR"]
    assert len(errs) == 3
    first, second, third = errs
    assert first[1] == ""  # ERR-1 (ELD) is not used from 2.5 on
    assert first[2] == "PID^2^3"  # ERR-2 location: segment ^ sequence ^ field
    assert first[3] == "101^PID-3 is required^HL70357"
    assert first[4] == "E"
    assert first[8] == "PID-3 is required"  # ERR-8 user message
    assert second[2] == "OBX^4^5^^2"  # ... ^ field repetition ^ component
    assert second[3].split("^")[0] == "102"
    assert second[4] == "W"
    assert third[2] == ""
    assert third[3] == "207^no place^HL70357"


@pytest.mark.parametrize("version", ["2.5", "2.5.1", "2.6", "2.7"])
def test_err_v25_layout_for_25_and_later(version: str) -> None:
    header = Header(control_id="C1", version=version, event="ADT^A01")
    err = fields_of(build(header, "AE", [Issue("x", Location("PID", 2, 3), "101")]))[2]
    assert err[:5] == ["ERR", "", "PID^2^3", "101^x^HL70357", "E"]


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4"])
def test_err_eld_layout_before_25(version: str) -> None:
    header = Header(control_id="C1", version=version, event="ADT^A01")
    issues = [Issue("PID-3 is required", Location("PID", 2, 3), "101"), Issue("general")]
    segments = fields_of(build(header, "AE", issues))
    assert msh_field(segments[0], 12) == version
    errs = [s for s in segments if s[0] == "ERR"]
    # ERR-1 ELD: segment ^ sequence ^ field position ^ code&text&system
    assert errs[0] == ["ERR", "PID^2^3^101&PID-3 is required&HL70357"]
    assert errs[1] == ["ERR", "^^^207&general&HL70357"]


@pytest.mark.parametrize(
    "where, eld",
    [
        (Location("ZXY", 4), "ZXY^4^^207&x&HL70357"),
        (Location("PID", 2, 5, 1), "PID^2^5^207&x&HL70357"),
    ],
)
def test_err_eld_code_is_always_the_fourth_component(where: Location, eld: str) -> None:
    header = Header(control_id="C1", version="2.4", event="ADT^A01")
    err = fields_of(build(header, "AE", [Issue("x", where)]))[2]
    assert err == ["ERR", eld]


def test_err_text_is_escaped_in_both_layouts() -> None:
    modern = parse(build(ORIGINAL, "AE", [Issue(NASTY, Location("PID", 2, 3), "101")]))
    err = modern.first("ERR")
    assert err is not None
    assert len(err.fields) == 9
    assert err.value(2) == "PID" and err.value(2, 3) == "3"
    assert err.value(3, 1) == "101"
    assert err.value(3, 2) == NASTY
    assert err.value(3, 3) == "HL70357"
    assert err.value(8) == NASTY
    old = Header(control_id="C1", version="2.3", event="ADT^A01")
    legacy = parse(build(old, "AE", [Issue(NASTY, Location("PID", 2, 3), "101")]))
    eld = legacy.first("ERR")
    assert eld is not None
    assert len(eld.fields) == 2
    assert eld.reps(1)[0][3] == ["101", NASTY, "HL70357"]


def test_control_id_with_separators_is_echoed_escaped() -> None:
    header = Header(control_id="A|B^C", event="ORU^R01")
    msa = parse(build(header, "AA", [])).first("MSA")
    assert msa is not None
    assert msa.value(2) == "A|B^C"


def test_msh_echoes_with_separators_are_escaped() -> None:
    header = Header(
        sending_app="L|S",
        sending_facility="XZ^01",
        receiving_facility="C~D",
        control_id="A\\B&C",
        event="ORU^R01",
    )
    ack_message = parse(build(header, "AE", [Issue("x", Location("PID", 2, 3))]))
    msh = ack_message.msh
    assert len(msh.fields) == 13
    assert msh.value(4) == "C~D" and len(msh.reps(4)) == 1
    assert msh.value(5) == "L|S"
    assert msh.value(6) == "XZ^01"
    assert msh.value(9, 2) == "R01"
    msa = ack_message.first("MSA")
    assert msa is not None and msa.value(2) == "A\\B&C"


def test_ack_in_gb18030_round_trips_chinese_text() -> None:
    header = Header(
        sending_app="检验系统",
        sending_facility="XZ01",
        control_id="C-王",
        event="ORU^R01",
        charset="GB 18030-2000",
        codec="gb18030",
    )
    text = "患者姓名缺失 | 请补充"
    raw = build(
        header, "AE", [Issue("身份证号校验失败 𠀀", Location("PID", 2, 3), "102")], text=text
    )
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    segments = fields_of(raw, "gb18030")
    assert msh_field(segments[0], 18) == "GB 18030-2000"
    assert msh_field(segments[0], 5) == "检验系统"
    msg = parse(raw)
    assert msg.codec == "gb18030"
    msa = msg.first("MSA")
    err = msg.first("ERR")
    assert msa is not None and err is not None
    assert msa.value(2) == "C-王"
    assert msa.value(3) == text
    assert err.value(3, 2) == "身份证号校验失败 𠀀"


@pytest.mark.parametrize("codec, charset", [(None, ""), ("utf-8", "UNICODE UTF-8")])
def test_ack_in_utf8(codec: str | None, charset: str) -> None:
    header = Header(control_id="C1", event="ORU^R01", charset=charset, codec=codec)
    raw = build(header, "AE", [], text="王秀英")
    assert "王秀英".encode() in raw
    assert parse(raw).first("MSA").value(3) == "王秀英"  # type: ignore[union-attr]


def test_ack_for_an_unreadable_message_has_defaults() -> None:
    segments = fields_of(build(Header(), "AR", [Issue("unreadable", code="100")]))
    msh, msa, err = segments
    assert msh_field(msh, 9) == "ACK"
    assert msh_field(msh, 11) == "P"
    assert msh_field(msh, 12) == "2.5.1"
    assert msa == ["MSA", "AR", ""]
    assert err[3] == "100^unreadable^HL70357"
