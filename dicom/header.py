"""The few header elements filing needs, read from a DICOM file's bytes without pydicom's
per-element reader.

Filing a C-STORE needs some twenty elements of the header (the UIDs, the patient's, study's and
series' attributes the index and the Patient hold). pydicom's reader makes an object of every
element (a CT from a township scanner carries about 250, most of them private) and asked
filing's largest share of CPU. ``read`` walks the elements in place, skipping what it does not
need, and gives the wanted ones to pydicom as raw elements, so every later use (value
conversion, character sets, ``charsets.fix_dataset``) is pydicom's own, exactly as if pydicom had
read the file.

It reads only what is plainly well formed: a Part 10 file (preamble, ``DICM``, explicit VR
little endian File Meta Information) whose dataset is little endian, implicit or explicit VR,
not deflated. Anything else, and anything surprising on the way (an element running past the
end, an unknown VR, a wanted element of undefined length), returns None and the caller reads
the file with pydicom as before, whose leniency with damaged files then decides.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.tag import Tag

from dicom import charsets

IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")  # deflated explicit VR LE

# what filing reads of the header (``dicom.ingest``, ``dicom.index.row``): keep it in step
WANTED = frozenset(
    {
        0x00080005,  # Specific Character Set
        0x00080016,  # SOP Class UID
        0x00080018,  # SOP Instance UID
        0x00080020,  # Study Date
        0x00080030,  # Study Time
        0x00080050,  # Accession Number
        0x00080060,  # Modality
        0x00080090,  # Referring Physician's Name
        0x00081030,  # Study Description
        0x0008103E,  # Series Description
        0x00100010,  # Patient's Name
        0x00100020,  # Patient ID
        0x00100021,  # Issuer of Patient ID
        0x00100030,  # Patient's Birth Date
        0x00100040,  # Patient's Sex
        0x00101002,  # Other Patient IDs Sequence
        0x00180015,  # Body Part Examined
        0x0020000D,  # Study Instance UID
        0x0020000E,  # Series Instance UID
        0x00200010,  # Study ID
        0x00200011,  # Series Number
        0x00200013,  # Instance Number
        0x00280008,  # Number of Frames
    }
)
PIXELS = 0x7FE00008  # Float Pixel Data, then Double Float and Pixel Data: the header ends there
# explicit VRs whose length takes 4 bytes after 2 reserved ones (PS3.5 7.1.2)
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})  # fmt: skip
SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS",
                       b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                       b"US"})  # fmt: skip
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
MAX_DEPTH = 16  # sequences within sequences: deeper is read by pydicom

_TAG = struct.Struct("<HH")
_EXPLICIT = struct.Struct("<HH2sH")  # group, element, VR, a short VR's length
_IMPLICIT = struct.Struct("<HHI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class _Unusual(Exception):
    """Not plainly well formed: pydicom reads it."""


@dataclass(frozen=True)
class Header:
    """What filing reads of a header: text as ``charsets.decode_text`` reads it (None when
    absent or empty), the integer strings as integers, and each Other Patient IDs item's
    (Patient ID, Issuer of Patient ID)."""

    transfer_syntax: str
    text: dict[str, str | None]
    numbers: dict[str, int | None]
    other_ids: tuple[tuple[str | None, str | None], ...] = ()

    def __getitem__(self, keyword: str) -> str | None:
        return self.text[keyword]


# keyword -> VR of the text filing reads, and of the integer strings
TEXT = {
    "SOPClassUID": "UI", "SOPInstanceUID": "UI", "StudyInstanceUID": "UI",
    "SeriesInstanceUID": "UI", "StudyDate": "DA", "StudyTime": "TM", "AccessionNumber": "SH",
    "Modality": "CS", "ReferringPhysicianName": "PN", "StudyDescription": "LO",
    "SeriesDescription": "LO", "PatientName": "PN", "PatientID": "LO",
    "IssuerOfPatientID": "LO", "PatientBirthDate": "DA", "PatientSex": "CS",
    "BodyPartExamined": "CS", "StudyID": "SH",
}  # fmt: skip
NUMBERS = ("SeriesNumber", "InstanceNumber", "NumberOfFrames")  # IS
# Specific Character Sets whose text is decoded whole by one Python codec (pydicom's names),
# so that ``quick`` reads exactly what pydicom does; any other goes through pydicom
ONE_CODEC = {
    "": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 100": "latin_1", "ISO_IR 192": "UTF8",
    "GB18030": "GB18030", "GBK": "GBK",
}  # fmt: skip
_TAGS = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in (*TEXT, *NUMBERS)}


def of_dataset(ds: Dataset) -> Header:
    """The header of a dataset pydicom read (``charsets.fix_dataset`` done)."""
    codecs = charsets.codecs_of(ds)
    others = tuple(
        (charsets.decode_text(item, "PatientID"), charsets.decode_text(item, "IssuerOfPatientID"))
        for item in ds.get("OtherPatientIDsSequence", []) or []
    )
    meta = getattr(ds, "file_meta", None)
    return Header(
        str(meta.get("TransferSyntaxUID", "")) if meta is not None else "",
        {keyword: charsets.decode_text(ds, keyword, codecs) for keyword in TEXT},
        {keyword: _integer(ds.get(keyword)) for keyword in NUMBERS},
        others,
    )


def quick(data: bytes, *, prefix: bool = False) -> Header | None:
    """The header of the Part 10 file ``data`` read straight from its bytes, the same as
    ``of_dataset`` gives after pydicom read it, when that is plain: a file ``read`` can walk,
    a character set of one codec, single values, no Other Patient IDs. Else None.

    ``prefix``: ``data`` is the start of a larger file; None unless the header ends (at the
    pixel data) within it."""
    try:
        _, elements, syntax = _elements(bytes(data), prefix)
        return _quick(elements, syntax)
    except (_Unusual, struct.error, UnicodeDecodeError, ValueError):
        return None


def _quick(elements: dict[int, RawDataElement], syntax: str) -> Header:
    implicit = syntax == IMPLICIT_LE
    charset = elements.get(0x00080005)
    name = bytes(charset.value or b"").decode("ascii").strip("\0 ") if charset else ""
    codec = ONE_CODEC.get(name)
    if codec is None or 0x00101002 in elements:
        raise _Unusual
    text: dict[str, str | None] = {}
    for keyword, vr in TEXT.items():
        text[keyword] = _text(elements.get(_TAGS[keyword]), vr, codec, implicit)
    numbers: dict[str, int | None] = {}
    for keyword in NUMBERS:
        value = _text(elements.get(_TAGS[keyword]), "IS", codec, implicit)
        if value is not None and len(value) > 15:  # pydicom goes through a float
            raise _Unusual
        numbers[keyword] = int(value) if value is not None else None
    return Header(syntax, text, numbers)


def _text(element: RawDataElement | None, vr: str, codec: str, implicit: bool) -> str | None:
    """One value as pydicom and ``charsets.decode_text`` read it; ``_Unusual`` for anything
    they would read another way (several values, another VR, non-ASCII outside text)."""
    if element is None:
        return None
    if not implicit and element.VR != vr:
        raise _Unusual
    raw = bytes(element.value or b"")
    if b"\\" in raw or b"\x1b" in raw or b"\x00" in raw.rstrip(b"\x00 "):
        raise _Unusual  # several values, escape sequences, NULs but as padding: pydicom's
    if vr in ("PN", "LO", "SH"):
        value = raw.decode(codec).rstrip("\0 ")
        if vr == "PN":
            value = value.rstrip("=")
    else:
        value = raw.decode("ascii")
        value = value.strip("\0 ") if vr in ("UI", "IS") else value.rstrip("\0 ")
    return value or None


def _integer(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def read(data: bytes, *, prefix: bool = False) -> Dataset | None:
    """The wanted elements of the Part 10 file ``data`` as pydicom would read them with
    ``stop_before_pixels`` (its File Meta Information whole), or None when pydicom must read
    it. ``prefix``: as for ``quick``."""
    try:
        meta, elements, syntax = _elements(bytes(data), prefix)
    except (_Unusual, struct.error, UnicodeDecodeError):
        return None
    implicit = syntax == IMPLICIT_LE
    ds = Dataset({Tag(t): e for t, e in elements.items()})
    ds.file_meta = FileMetaDataset({Tag(t): e for t, e in meta.items()})
    charset = ds.get("SpecificCharacterSet") if 0x00080005 in elements else None
    ds.set_original_encoding(implicit, True, _encodings(charset))
    return ds


def _elements(
    buf: bytes, prefix: bool
) -> tuple[dict[int, RawDataElement], dict[int, RawDataElement], str]:
    """(File Meta Information, the wanted elements, transfer syntax UID) of a plain Part 10
    file, or of the start of one (``prefix``) that holds all of its header."""
    if len(buf) < 144 or buf[128:132] != b"DICM":
        raise _Unusual
    meta, pos = _file_meta(buf)
    syntax_element = meta.get(0x00020010)
    if syntax_element is None:
        raise _Unusual
    syntax = bytes(syntax_element.value or b"").rstrip(b"\x00 ").decode("ascii")
    if syntax == BIG_ENDIAN or syntax in DEFLATED:
        raise _Unusual
    elements: dict[int, RawDataElement] = {}
    stop = _walk(buf, pos, len(buf), syntax == IMPLICIT_LE, elements, 0)
    if prefix and stop == len(buf):  # no pixel data yet: more of the header may follow
        raise _Unusual
    return meta, elements, syntax


def _file_meta(buf: bytes) -> tuple[dict[int, RawDataElement], int]:
    """Group 0002, explicit VR little endian, as pydicom keeps it (every element raw)."""
    meta: dict[int, RawDataElement] = {}
    pos, end = 132, len(buf)
    while pos + 8 <= end:
        group, number = _TAG.unpack_from(buf, pos)
        if group != 0x0002:
            break
        vr, length, header = _explicit(buf, pos)
        if length == UNDEFINED or pos + header + length > end:
            raise _Unusual
        tag = (group << 16) | number
        value = buf[pos + header : pos + header + length]
        meta[tag] = RawDataElement(Tag(tag), vr, length, value, pos + header, False, True)
        pos += header + length
    return meta, pos


def _explicit(buf: bytes, pos: int) -> tuple[str, int, int]:
    """(VR, value length, header length) of the explicit VR element at ``pos``."""
    vr = buf[pos + 4 : pos + 6]
    if vr in SHORT_VRS:
        return vr.decode(), _U16.unpack_from(buf, pos + 6)[0], 8
    if vr in LONG_VRS:
        return vr.decode(), _U32.unpack_from(buf, pos + 8)[0], 12
    raise _Unusual


def _walk(
    buf: bytes,
    pos: int,
    end: int,
    implicit: bool,
    wanted: dict[int, RawDataElement] | None,
    depth: int,
) -> int:
    """Walk the elements from ``pos`` to ``end`` (or to an item's end marker within a sequence
    of undefined length: ``end`` is then past the buffer's); keep the wanted ones in ``wanted``
    (top level only, None within sequences). Returns where the walk stopped."""
    size = len(buf)
    explicit_unpack, implicit_unpack = _EXPLICIT.unpack_from, _IMPLICIT.unpack_from
    long_unpack = _U32.unpack_from
    while pos < end:
        if pos + 8 > size:
            raise _Unusual
        if implicit:
            group, number, length = implicit_unpack(buf, pos)
            vr: bytes | None = None
            header = 8
        else:
            group, number, vr, length = explicit_unpack(buf, pos)
            if group == 0xFFFE:
                vr, length = None, long_unpack(buf, pos + 4)[0]
                header = 8
            elif vr in LONG_VRS:
                length = long_unpack(buf, pos + 8)[0]
                header = 12
            elif vr in SHORT_VRS:
                header = 8
            else:
                raise _Unusual
        tag = (group << 16) | number
        if tag == ITEM_END:  # the end of an item of undefined length
            if depth == 0:
                raise _Unusual
            return pos + 8
        if wanted is not None and (group == 0xFFFE or tag >= PIXELS):
            if group == 0xFFFE:  # an item or delimiter outside any sequence
                raise _Unusual
            return pos
        start = pos + header
        if length == UNDEFINED:
            if wanted is not None and tag in WANTED:
                raise _Unusual  # pydicom reads such a sequence eagerly: let it
            if vr not in (None, b"SQ"):  # UN or OB of undefined length: not in a header
                raise _Unusual
            pos = _sequence(buf, start, implicit, depth + 1)
            continue
        pos = start + length
        if pos > size:
            raise _Unusual
        if vr == b"SQ" or (implicit and _is_sequence(tag)):  # pydicom reads its items
            _items(buf, start, pos, implicit, depth + 1)
        if wanted is not None and tag in WANTED:
            name = vr.decode() if vr is not None else None
            wanted[tag] = RawDataElement(
                Tag(tag), name, length, buf[start:pos], start, implicit, True
            )
    if pos != end:
        raise _Unusual
    return pos


def _sequence(buf: bytes, pos: int, implicit: bool, depth: int) -> int:
    """Skip the items of a sequence of undefined length starting at ``pos``; returns the
    position after its end marker."""
    if depth > MAX_DEPTH:
        raise _Unusual
    while True:
        if pos + 8 > len(buf):
            raise _Unusual
        group, number = _TAG.unpack_from(buf, pos)
        tag = (group << 16) | number
        length = _U32.unpack_from(buf, pos + 4)[0]
        if tag == SEQUENCE_END:
            return pos + 8
        if tag != ITEM:
            raise _Unusual
        pos = _item(buf, pos + 8, length, len(buf), implicit, depth)


def _items(buf: bytes, pos: int, end: int, implicit: bool, depth: int) -> None:
    """Walk the items of a sequence of defined length, from ``pos`` to ``end``."""
    if depth > MAX_DEPTH:
        raise _Unusual
    while pos < end:
        if pos + 8 > end:
            raise _Unusual
        group, number, length = _IMPLICIT.unpack_from(buf, pos)
        if (group << 16) | number != ITEM:
            raise _Unusual
        pos = _item(buf, pos + 8, length, end, implicit, depth)
    if pos != end:
        raise _Unusual


def _item(buf: bytes, pos: int, length: int, end: int, implicit: bool, depth: int) -> int:
    """Walk one item's elements (its length, or up to its end marker); returns what follows."""
    if length == UNDEFINED:
        return _walk(buf, pos, len(buf) + 1, implicit, None, depth)
    if pos + length > end:
        raise _Unusual
    return _walk(buf, pos, pos + length, implicit, None, depth)


_SEQUENCES: dict[int, bool] = {}


def _is_sequence(tag: int) -> bool:
    """Whether pydicom takes the public element ``tag`` of an implicit VR dataset for a
    sequence (a private one it keeps as bytes)."""
    known = _SEQUENCES.get(tag)
    if known is None:
        try:
            known = not (tag >> 16) & 1 and dictionary_VR(tag) == "SQ"
        except KeyError:
            known = False
        _SEQUENCES[tag] = known
    return known


def _encodings(charset: object) -> str | list[str]:
    from pydicom.charset import convert_encodings, default_encoding

    if not charset:
        return default_encoding
    value = charset.value if hasattr(charset, "value") else charset
    return convert_encodings(value)  # type: ignore[arg-type]
