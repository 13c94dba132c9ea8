"""The lazy HL7 v2 parser (adapters.hl7v2.message.parse): separators, segments, escapes,
MSH-18 character sets, refusals and the record of what a mapping did not read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.hl7v2.errors import Hl7Error
from adapters.hl7v2.message import parse

PUBLIC = Path(__file__).parents[2] / "data" / "hl7" / "public"

MSH = "MSH|^~\\&|LIS|XZ01|YILIAN|COUNTY|20261120101500+0800||ORU^R01^ORU_R01|CTRL-7|P|2.5.1"


def msh(charset: str = "", *, msh4: str = "XZ01") -> str:
    return (
        f"MSH|^~\\&|LIS|{msh4}|YILIAN|COUNTY|20261120101500+0800||ADT^A01^ADT_A01|C-1|P|2.5"
        f"|||AL|NE|CHN|{charset}"
    )


def message(*lines: str, codec: str = "utf-8", end: str = "\r") -> bytes:
    return end.join(lines).encode(codec) + end.encode()


# --- separators -----------------------------------------------------------------------------


def test_default_separators_and_msh_field_numbering() -> None:
    msg = parse(message(MSH + "|||AL|NE|CHN|UNICODE UTF-8", "PID|1||X1"))
    assert msg.seps == "|^~\\&"
    m = msg.msh
    assert m.name == "MSH" and m.sequence == 1
    assert m.value(1) == "|"
    assert m.raw(2) == "^~\\&"
    assert m.value(3) == "LIS"
    assert m.value(4) == "XZ01"
    assert m.value(7) == "20261120101500+0800"
    assert m.value(9) == "ORU" and m.value(9, 2) == "R01" and m.value(9, 3) == "ORU_R01"
    assert m.value(10) == "CTRL-7"
    assert m.value(11) == "P"
    assert m.value(12) == "2.5.1"
    assert m.value(15) == "AL"
    assert m.value(16) == "NE"
    assert m.value(17) == "CHN"
    assert m.value(18) == "UNICODE UTF-8"
    assert msg.message_type == "ORU^R01"
    assert msg.codec == "utf-8"


def test_non_default_separators() -> None:
    raw = message(
        "MSH$%*!@$LIS$XZ01$YILIAN$COUNTY$20260101$$ADT%A01$C-9$P$2.5",
        "PID$1$$A1%%%XZ01@1.2.3@ISO%MR*B2$$Wang%Xiu!F!Ying",
    )
    msg = parse(raw)
    assert msg.seps == "$%*!@"
    assert msg.msh.value(1) == "$"
    assert msg.msh.value(9) == "ADT" and msg.msh.value(9, 2) == "A01"
    assert msg.message_type == "ADT^A01"
    assert msg.msh.value(10) == "C-9"
    pid = msg.first("PID")
    assert pid is not None
    assert pid.components(3) == ["A1", "", "", "XZ01@1.2.3@ISO", "MR"]
    assert pid.reps(3)[0][3] == ["XZ01", "1.2.3", "ISO"]
    assert pid.value(3, rep=1) == "B2"
    assert pid.value(5, 2) == "Xiu$Ying"  # \F\ (with '!' escaping) is this message's '$'


@pytest.mark.parametrize(
    "head",
    [
        "MSH|^~\\\\",  # repeated character
        "MSH|^~\\a",  # alphanumeric
        "MSH|^~\\1",
        "MSH|^ \\&",  # space
        "MSH||~\\&",  # field separator reused
    ],
)
def test_encoding_characters_must_be_five_distinct_non_alphanumerics(head: str) -> None:
    raw = message(head + "|LIS|XZ01|Y|C|20260101||ADT^A01|1|P|2.5", "PID|1")
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    assert info.value.reject is True
    assert info.value.where is not None
    assert info.value.where.segment == "MSH"
    assert "MSH-1/MSH-2" in str(info.value)


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_segment_terminators(end: str) -> None:
    raw = message(MSH, "PID|1||X1", "", "OBX|1|NM|A^B^LN||5.8", end=end)
    msg = parse(raw)
    assert [s.name for s in msg.segments] == ["MSH", "PID", "OBX"]
    assert [s.sequence for s in msg.segments] == [1, 2, 3]
    obx = msg.segments[2]
    assert obx.value(5) == "5.8"
    assert obx.raw(5) == "5.8"  # no stray \r or \n


def test_components_repetitions_subcomponents() -> None:
    pid = "PID|1||A1^^^XZ01&1.2.156&ISO^MR~B2^^^YB^SN||王^秀英^^^^^L~Wang^Xiuying"
    msg = parse(message(MSH, pid))
    seg = msg.first("PID")
    assert seg is not None
    assert seg.reps(3) == [
        [["A1"], [""], [""], ["XZ01", "1.2.156", "ISO"], ["MR"]],
        [["B2"], [""], [""], ["YB"], ["SN"]],
    ]
    assert seg.components(3) == ["A1", "", "", "XZ01&1.2.156&ISO", "MR"]
    assert seg.components(3, 1) == ["B2", "", "", "YB", "SN"]
    assert seg.components(3, 2) == []
    assert seg.value(3, 4) == "XZ01&1.2.156&ISO"
    assert seg.value(5) == "王" and seg.value(5, 2) == "秀英" and seg.value(5, 7) == "L"
    assert seg.value(5, 1, rep=1) == "Wang"
    assert seg.value(5, 9) == ""  # beyond the last component
    assert seg.value(30) == ""  # beyond the last field
    assert seg.reps(2) == []


def test_empty_repetitions_keep_their_place() -> None:
    msg = parse(message(MSH, "PID|1||A~~C^c2||~王^秀英|||~~|||~13800000000~"))
    seg = msg.first("PID")
    assert seg is not None
    assert seg.reps(3) == [[["A"]], [[""]], [["C"], ["c2"]]]
    assert seg.value(3, rep=0) == "A"
    assert seg.value(3, rep=1) == "" and seg.components(3, 1) == [""]
    assert seg.value(3, rep=2) == "C" and seg.value(3, 2, rep=2) == "c2"
    assert seg.value(5) == "" and seg.value(5, 1, rep=1) == "王"
    assert seg.reps(8) == []  # only repetition separators: an empty field
    assert seg.value(8) == "" and seg.value(8, rep=1) == ""
    assert seg.reps(11) == [[[""]], [["13800000000"]], [[""]]]


def test_empty_repetitions_convert_to_nothing() -> None:
    from adapters.hl7v2.mapping import datatypes as dt

    msg = parse(message(MSH, "PID|1||~X1^^^XZ01^MR~~X2^^^XZ01^MR||~王^秀英~||||||||~13800000000"))
    seg = msg.first("PID")
    assert seg is not None
    assert [i["value"] for i in dt.every(seg, 3, lambda c: dt.cx(c, "D"))] == ["X1", "X2"]
    assert dt.every(seg, 5, dt.xpn) == [{"family": "王", "given": ["秀英"], "text": "王秀英"}]
    assert dt.every(seg, 13, dt.xtn) == [{"system": "phone", "value": "13800000000"}]
    assert dt.every(seg, 13, lambda c: {"comps": c}) == [{"comps": ["13800000000"]}]
    nte = parse(message(MSH, "NTE|1||第一行~~第三行")).first("NTE")
    assert nte is not None
    assert dt.text(nte, 3) == "第一行\n\n第三行"  # an empty repetition is an empty line


def _split_every_way(
    raw: str, seps: str, unescape: Callable[[str], str], msh2: bool
) -> list[list[list[str]]]:
    """The general reading of a field, without the parser's shortcuts: what they must equal."""
    if not raw or raw == '""':
        return []
    parts = [raw] if msh2 else raw.split(seps[2])
    if not any(parts):
        return []
    return [
        [[unescape(sub) for sub in comp.split(seps[4])] for comp in rep.split(seps[1])]
        for rep in parts
    ]


SAMPLES = Path(__file__).parents[3] / "samples" / "hl7"
FIELDS = [
    "plain",
    "a^b",
    "a~b",
    "a&b^c",
    "a\\S\\b",
    "\\E\\",
    "~~",
    "^^",
    "&",
    '""',
    "",
    "x\\X41\\y^z&w~v",
]


@pytest.mark.parametrize(
    "raw",
    [p.read_bytes() for p in sorted([*PUBLIC.glob("*.hl7"), *SAMPLES.glob("*.hl7")])]
    + [message(MSH, "NTE|" + "|".join(FIELDS))],
)
def test_every_field_reads_as_the_general_split_says(raw: bytes) -> None:
    """Plain fields take a shortcut (nothing to split or unescape); every field of the sample
    messages must read exactly as the general split and unescape give, every way."""
    try:
        msg = parse(raw)
    except Hl7Error:
        return
    for seg in msg.segments:
        for n in range(1, len(seg.fields) + 1):
            raw_field = seg.fields[n] if n < len(seg.fields) else ""
            expected = _split_every_way(
                raw_field, msg.seps, msg.unescape, seg.name == "MSH" and n == 2
            )
            assert seg.reps(n) == expected, (seg.name, n)
            for rep, comps in enumerate(expected):
                joined = [msg.seps[4].join(c) for c in comps]
                assert seg.components(n, rep) == joined
                assert [seg.value(n, k, rep) for k in range(1, len(joined) + 2)] == [*joined, ""]
            assert (seg.sequence, n) in msg.accessed


def test_null_value_reads_as_empty() -> None:
    msg = parse(message(MSH, 'PID|1||""'))
    seg = msg.first("PID")
    assert seg is not None
    assert seg.raw(3) == '""'
    assert seg.reps(3) == [] and seg.value(3) == ""


# --- escapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "escaped, text",
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("\\X41\\", "A"),
        ("\\X4142\\c", "ABc"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\H\\bold\\N\\ plain", "bold plain"),
        ("keep \\Zxx\\ visible", "keep \\Zxx\\ visible"),
        ("\\X" + "王".encode().hex().upper() + "\\秀英", "王秀英"),
        ("\\X" + "😀".encode().hex() + "\\", "😀"),
        ("unpaired \\ stays", "unpaired \\ stays"),
        ("\\XZZ\\", "\\XZZ\\"),  # not hex: kept visible
    ],
)
def test_escapes_are_decoded_through_value(escaped: str, text: str) -> None:
    msg = parse(message(MSH + "|||||UNICODE UTF-8", f"NTE|1||{escaped}"))
    nte = msg.first("NTE")
    assert nte is not None
    assert nte.value(3) == text
    assert nte.raw(3) == escaped


def test_escaped_separators_do_not_split() -> None:
    msg = parse(message(MSH, "NTE|1||a\\S\\b\\T\\c\\R\\d^second"))
    nte = msg.first("NTE")
    assert nte is not None
    assert nte.components(3) == ["a^b&c~d", "second"]
    assert len(nte.reps(3)) == 1


def test_hex_escape_of_a_gb18030_character() -> None:
    wang = "王".encode("gb18030").hex().upper()
    four_byte = "𠀀".encode("gb18030")  # a 4-byte GB 18030 sequence
    assert len(four_byte) == 4
    raw = message(
        msh("GB 18030-2000"), f"NTE|1||\\X{wang}\\^\\X{four_byte.hex()}\\", codec="gb18030"
    )
    nte = parse(raw).first("NTE")
    assert nte is not None
    assert nte.value(3) == "王"
    assert nte.value(3, 2) == "𠀀"


def test_hex_escape_uses_the_same_superset_as_the_message_text() -> None:
    cheng = "誠".encode("gbk")  # in GBK, not in GB 2312
    raw = message(msh("GB 2312"), f"NTE|1||誠/\\X{cheng.hex().upper()}\\", codec="gbk")
    nte = parse(raw).first("NTE")
    assert nte is not None
    assert nte.value(3) == "誠/誠"


# --- character sets -------------------------------------------------------------------------

NAMES = ["王秀英", "欧阳娜娜", "李淼", "赵敏"]
# GBK characters whose second byte is 0x5C '\\' or 0x7C '|' (found by encoding CJK characters)
BACKSLASH_SECOND = "誠"  # D5 5C
BAR_SECOND = "東"  # 96 7C


def test_the_tricky_gbk_characters_really_are_tricky() -> None:
    assert BACKSLASH_SECOND.encode("gbk")[1:] == b"\\"
    assert BAR_SECOND.encode("gbk")[1:] == b"|"


@pytest.mark.parametrize(
    "charset, codec, expected_codec",
    [
        ("UNICODE UTF-8", "utf-8", "utf-8"),
        ("GB 18030-2000", "gb18030", "gb18030"),
        ("GBK", "gbk", "gbk"),
        ("GB 2312", "gb2312", "gb2312"),
        ("gb18030", "gb18030", "gb18030"),  # case-insensitive
    ],
)
@pytest.mark.parametrize("name", NAMES)
def test_declared_charset_decodes_chinese_names(
    charset: str, codec: str, expected_codec: str, name: str
) -> None:
    family, given = name[0], name[1:]
    if name == "欧阳娜娜":
        family, given = "欧阳", "娜娜"
    raw = message(msh(charset), f"PID|1||X1||{family}^{given}||19520314|F", codec=codec)
    msg = parse(raw)
    assert msg.codec == expected_codec
    assert msg.charset_warning is None
    pid = msg.first("PID")
    assert pid is not None
    assert pid.value(5, 1) == family
    assert pid.value(5, 2) == given
    assert pid.value(7) == "19520314"
    assert pid.value(8) == "F"


def test_gbk_only_character_in_a_gb2312_message_is_decoded_as_the_superset() -> None:
    raw = message(msh("GB 2312"), "PID|1||X1||张^喆", codec="gbk")  # 喆 is not in GB 2312
    msg = parse(raw)
    assert msg.codec == "gb2312"
    assert msg.first("PID").value(5, 2) == "喆"  # type: ignore[union-attr]


@pytest.mark.parametrize("charset", ["GBK", "GB 18030-2000", "GB 2312"])
def test_gbk_second_bytes_backslash_and_bar_do_not_split_or_escape(charset: str) -> None:
    family, given = "王", BACKSLASH_SECOND + BAR_SECOND  # 王誠東
    raw = message(
        msh(charset),
        f"PID|1||X1||{family}^{given}~{BAR_SECOND}^{BACKSLASH_SECOND}|母{BAR_SECOND}|19520314|F",
        f"NTE|1||{BACKSLASH_SECOND}\\F\\{BAR_SECOND}",
        codec="gbk",
    )
    assert b"\\" in raw.split(b"\r")[1] and raw.count(b"|") > 30
    msg = parse(raw)
    pid = msg.first("PID")
    assert pid is not None
    assert pid.value(5, 1) == "王"
    assert pid.value(5, 2) == "誠東"
    assert pid.value(5, 1, rep=1) == "東" and pid.value(5, 2, rep=1) == "誠"
    assert pid.value(6) == "母東"
    assert pid.value(7) == "19520314"
    assert pid.value(8) == "F"
    nte = msg.first("NTE")
    assert nte is not None
    assert nte.value(3) == "誠|東"


def test_gbk_bar_second_byte_in_msh_does_not_shift_msh18() -> None:
    raw = message(msh("GBK", msh4="東城医院"), "PID|1||X1||王^誠", codec="gbk")
    msg = parse(raw)
    assert msg.codec == "gbk"
    assert msg.msh.value(4) == "東城医院"


@pytest.mark.parametrize(
    "charset, expected", [("GB 2312", "gb2312"), ("GB 18030-2000", "gb18030"), ("", "gb18030")]
)
def test_gbk_bar_second_byte_in_msh_with_other_gb_charsets(charset: str, expected: str) -> None:
    raw = message(msh(charset, msh4="東城医院"), "PID|1||X1||王^誠", codec="gbk")
    msg = parse(raw)
    assert msg.codec == expected
    assert msg.msh.value(4) == "東城医院"
    assert msg.msh.value(17) == "CHN"
    assert msg.first("PID").value(5, 2) == "誠"  # type: ignore[union-attr]


def test_big5_bar_second_byte_in_msh_does_not_shift_msh18() -> None:
    bar = "吜"  # Big5 CA 7C
    assert bar.encode("big5")[1:] == b"|"
    raw = message(msh("BIG5", msh4=f"{bar}城醫院"), f"PID|1||X1||王^{bar}", codec="big5")
    msg = parse(raw)
    assert msg.codec == "big5"
    assert msg.msh.value(4) == f"{bar}城醫院"
    assert msg.first("PID").value(5, 2) == bar  # type: ignore[union-attr]


def test_unknown_charset_behind_a_gbk_bar_second_byte_is_named_as_sent() -> None:
    raw = message(msh("KLINGON", msh4="東城医院"), "PID|1", codec="gbk")
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    assert info.value.reject is True
    assert str(info.value.where) == "MSH-18"
    assert "'KLINGON'" in str(info.value) and "'CHN'" not in str(info.value)


def test_gbk_bytes_declared_utf8_behind_a_gbk_bar_second_byte_are_refused() -> None:
    raw = message(msh("UNICODE UTF-8", msh4="東城医院"), "PID|1||X1||王^誠", codec="gbk")
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    assert info.value.reject is True
    assert str(info.value.where) == "MSH-18"
    assert "not valid utf-8" in str(info.value)


def test_unknown_charset_is_refused_naming_msh18() -> None:
    raw = message(msh("KLINGON"), "PID|1")
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    err = info.value
    assert err.reject is True
    assert err.where is not None and str(err.where) == "MSH-18"
    assert "KLINGON" in str(err) and "MSH-18" in str(err)


def test_msh18_repetition_uses_the_first() -> None:
    raw = message(msh("GB 18030-2000~UNICODE UTF-8"), "PID|1||X1||王^秀英", codec="gb18030")
    msg = parse(raw)
    assert msg.codec == "gb18030"
    assert msg.first("PID").value(5, 2) == "秀英"  # type: ignore[union-attr]


def test_empty_msh18_and_utf8_bytes_is_utf8() -> None:
    msg = parse(message(msh(""), "PID|1||X1||王^秀英"))
    assert msg.codec == "utf-8"
    assert msg.charset_warning is None
    assert msg.first("PID").value(5, 2) == "秀英"  # type: ignore[union-attr]


def test_missing_msh18_and_ascii_is_utf8() -> None:
    msg = parse(message("MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5", "PID|1||X1||Wang^Xiu"))
    assert msg.codec == "utf-8"
    assert msg.charset_warning is None


def test_empty_msh18_and_gb18030_bytes_is_gb18030_with_a_warning() -> None:
    raw = message(msh(""), "PID|1||X1||王^秀英", codec="gb18030")
    msg = parse(raw)
    assert msg.codec == "gb18030"
    assert msg.charset_warning is not None and "MSH-18" in msg.charset_warning
    assert msg.first("PID").value(5, 1) == "王"  # type: ignore[union-attr]


@pytest.mark.parametrize("codec", ["gb18030", "gbk", "utf-8"])
def test_sender_default_codec_wins_when_msh18_is_empty(codec: str) -> None:
    raw = message(msh(""), "PID|1||X1||王^秀英", codec=codec)
    msg = parse(raw, default_codec=codec)
    assert msg.codec == codec
    assert msg.charset_warning is None
    assert msg.first("PID").value(5, 2) == "秀英"  # type: ignore[union-attr]


def test_declared_msh18_wins_over_the_sender_default() -> None:
    raw = message(msh("UNICODE UTF-8"), "PID|1||X1||王^秀英")
    msg = parse(raw, default_codec="gb18030")
    assert msg.codec == "utf-8"
    assert msg.first("PID").value(5, 2) == "秀英"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "charset, codec",
    [("UNICODE UTF-8", "gb18030"), ("ASCII", "utf-8"), ("GB 18030-2000", None)],
)
def test_bytes_invalid_for_the_declared_charset_are_refused(
    charset: str, codec: str | None
) -> None:
    if codec is None:
        raw = message(msh(charset), "PID|1") + b"PID|2||\x81\xff\r"  # no GB 18030 sequence
    else:
        raw = message(msh(charset), "PID|1||X1||王^秀英", codec=codec)
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    err = info.value
    assert err.reject is True
    assert err.where is not None and str(err.where) == "MSH-18"
    assert "MSH-18" in str(err)


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"   ",
        b"PID|1||X1\r",
        b"\x00\x01\x02garbage",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"MSH|^~",  # too short for the encoding characters
        "王秀英".encode(),
    ],
)
def test_missing_msh_is_refused(raw: bytes) -> None:
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    err = info.value
    assert err.reject is True
    assert err.where is not None and err.where.segment == "MSH"
    assert "MSH" in str(err)


@pytest.mark.parametrize(
    "line, sequence",
    [("P1", 2), ("PI D|1", 2), ("PI-|1", 2), ("PIDX|1", 2), ("P/D|1", 2)],
)
def test_a_bad_segment_name_is_named_by_its_position(line: str, sequence: int) -> None:
    raw = message(MSH, line, "OBX|1")
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    err = info.value
    assert err.where is not None and err.where.sequence == sequence
    assert f"segment {sequence}" in str(err)


def test_a_bad_segment_later_in_the_message_names_its_position() -> None:
    raw = message(MSH, "PID|1", "PV1|1", "OBR|1", "%%%|x")
    with pytest.raises(Hl7Error) as info:
        parse(raw)
    assert info.value.where is not None and info.value.where.sequence == 5
    assert "segment 5" in str(info.value)


def test_leading_whitespace_before_msh_is_tolerated() -> None:
    msg = parse(b"  " + message(MSH, "PID|1||X1"))
    assert msg.msh.value(10) == "CTRL-7"
    assert [s.name for s in msg.segments] == ["MSH", "PID"]
    assert msg.msh.value(3) == "LIS"
    msg = parse(b"\r\n \t" + message(MSH, "PID|1||X1"))
    assert msg.msh.sequence == 1 and msg.msh.value(10) == "CTRL-7"


@pytest.mark.parametrize("path", sorted(PUBLIC.glob("*.hl7")), ids=lambda p: p.name)
def test_public_sample_messages_parse(path: Path) -> None:
    msg = parse(path.read_bytes())
    assert msg.msh.name == "MSH"
    assert msg.message_type.count("^") == 1
    assert len(msg.segments) >= 2


# --- what was not mapped --------------------------------------------------------------------


def test_unmapped_lists_unread_fields_segments_and_z_segments() -> None:
    raw = message(
        MSH,
        "PID|1||X1||王^秀英||19520314|F|||||13800000000",
        "PV1|1|O",
        "ZXY|1|custom",
        "OBX|1|NM|A^B^LN||5.8",
        "NTE|1||note",
    )
    msg = parse(raw)
    pid = msg.first("PID")
    assert pid is not None
    pid.value(3)
    pid.value(5)
    pid.raw(7)
    obx = msg.first("OBX")
    assert obx is not None
    for n in (2, 3, 5):
        obx.value(n)
    msg.msh.value(9)
    msg.msh.value(10)
    unmapped = msg.unmapped()
    assert "PID-8 (segment 2): field not mapped" in unmapped
    assert "PID-13 (segment 2): field not mapped" in unmapped
    assert "PV1 (segment 3): segment not mapped" in unmapped
    assert "ZXY (segment 4): Z-segment kept in the archive, not mapped" in unmapped
    assert "NTE (segment 6): segment not mapped" in unmapped
    assert "MSH-3 (segment 1): field not mapped" in unmapped
    assert "MSH-12 (segment 1): field not mapped" in unmapped
    # read fields, Set IDs, empty fields and MSH-1/MSH-2 are not listed
    for absent in ("PID-1 ", "PID-3 ", "PID-5 ", "PID-7 ", "PID-2 ", "OBX-1 ", "OBX-5 "):
        assert not any(line.startswith(absent) for line in unmapped), absent
    assert not any(line.startswith(("MSH-1 ", "MSH-2 ", "MSH-9 ", "MSH-10 ")) for line in unmapped)
    # only PV1's own line, none of its fields (the segment as a whole is named once)
    assert [line for line in unmapped if line.startswith("PV1")] == [
        "PV1 (segment 3): segment not mapped"
    ]
    assert len(unmapped) == len(set(unmapped))


def test_z_segments_are_listed_even_when_read() -> None:
    msg = parse(message(MSH, "ZPI|1|x"))
    zpi = msg.first("ZPI")
    assert zpi is not None
    zpi.value(2)
    assert msg.unmapped() == [
        *[f"MSH-{n} (segment 1): field not mapped" for n in (3, 4, 5, 6, 7, 9, 10, 11, 12)],
        "ZPI (segment 2): Z-segment kept in the archive, not mapped",
    ]


def test_set_id_is_not_content_but_field_1_of_other_segments_is() -> None:
    msg = parse(message(MSH, "OBX|1", "EVN|A01|20260101", "PID|1"))
    msg.all("OBX")
    msg.all("EVN")
    msg.all("PID")
    unmapped = msg.unmapped()
    assert not any(line.startswith(("OBX", "PID")) for line in unmapped)
    assert "EVN-1 (segment 3): field not mapped" in unmapped
    assert "EVN-2 (segment 3): field not mapped" in unmapped


def test_fully_read_message_has_nothing_unmapped() -> None:
    msg = parse(message(MSH, "PID|1||X1||王^秀英"))
    for n in range(3, len(msg.msh.fields)):
        msg.msh.raw(n)
    pid = msg.first("PID")
    assert pid is not None
    pid.value(3)
    pid.components(5)
    assert msg.unmapped() == []
