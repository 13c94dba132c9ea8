"""The lean header reader gives exactly what pydicom reads, or hands the file back to pydicom."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom import header
from dicom.charsets import fix_dataset

DATA = Path(pydicom.__file__).parent / "data"
SAMPLES = sorted(p for p in DATA.rglob("*.dcm") if p.is_file())


def values(ds: Dataset) -> dict[int, object]:
    """The wanted elements as text, sequences item by item, after the IR 58 fix."""
    fix_dataset(ds)
    out: dict[int, object] = {}
    for tag in header.WANTED:
        element = ds.get(tag)
        if element is None:
            continue
        if element.VR == "SQ":
            out[tag] = [sorted((str(e.tag), str(e.value)) for e in item) for item in element.value]
        else:
            out[tag] = str(element.value)
    return out


def pydicom_reads(data: bytes) -> Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - then the lean reader must not claim it either
            return None


def read_by_both(reader):  # type: ignore[no-untyped-def]
    """(sample name, what ``reader`` made of it, pydicom's reading) for every sample
    ``reader`` reads itself."""
    for path in SAMPLES:
        data = path.read_bytes()
        made = reader(data)
        if made is not None:
            yield path.name, made, pydicom_reads(data)


def test_every_sample_reads_as_pydicom_reads_it_or_is_left_to_it() -> None:
    lean_read = 0
    for name, lean, full in read_by_both(header.read):
        lean_read += 1
        assert full is not None, f"{name}: read here, refused by pydicom"
        assert values(lean) == values(full), name
        assert lean.file_meta.TransferSyntaxUID == full.file_meta.TransferSyntaxUID, name
        assert lean._character_set == full._character_set, name
        assert (lean.original_encoding, name) == (full.original_encoding, name)
    # most of pydicom's samples are plain little endian files: they must not all fall back
    assert lean_read > len(SAMPLES) * 0.7, (lean_read, len(SAMPLES))


@pytest.mark.parametrize(
    "name", ["chrX1.dcm", "chrX2.dcm", "chrH31.dcm", "chrSQEncoding.dcm", "CT_small.dcm"]
)
def test_chinese_and_other_character_sets(name: str) -> None:
    found = get_testdata_file(name, download=False) or DATA / "charset_files" / name
    data = Path(found).read_bytes()
    lean = header.read(data)
    assert lean is not None
    full = pydicom_reads(data)
    assert full is not None
    assert values(lean) == values(full)
    if name in ("chrX1.dcm", "chrX2.dcm"):  # UTF-8 and GB18030 names come out as Unicode
        assert any("\u4e00" <= ch <= "\u9fff" for ch in str(lean.PatientName))


def part10(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


def sample() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Zhang^San"
    ds.PatientID = "P1"
    private = Dataset()
    private.add_new(0x00091010, "LO", "inside a private sequence")
    ds.add_new(0x00091001, "SQ", [private, private])
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.1"
    ds.InstanceNumber = 7
    ds.PixelData = b"\x00\x01" * 8
    ds.Rows, ds.Columns, ds.BitsAllocated = 2, 4, 16
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_skips_sequences_and_stops_before_the_pixels(syntax: str) -> None:
    data = part10(sample(), syntax)
    lean = header.read(data)
    assert lean is not None
    assert str(lean.PatientName) == "Zhang^San"
    assert lean.InstanceNumber == 7
    assert 0x00091001 not in lean and "PixelData" not in lean
    assert values(lean) == values(pydicom_reads(data))  # type: ignore[arg-type]


def undefined_length_sequence(data: bytes, tag: int) -> bytes:
    """``data`` with the explicit VR sequence ``tag`` (defined length, items of defined length)
    rewritten with undefined lengths, as many modalities write them."""
    head = struct.pack("<HH2s2x", tag >> 16, tag & 0xFFFF, b"SQ")
    at = data.index(head)
    (length,) = struct.unpack_from("<I", data, at + 8)
    body, pos, items = data[at + 12 : at + 12 + length], 0, b""
    while pos < len(body):
        (item_length,) = struct.unpack_from("<I", body, pos + 4)
        content = body[pos + 8 : pos + 8 + item_length]
        items += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + content
        items += struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        pos += 8 + item_length
    rewritten = head + struct.pack("<I", 0xFFFFFFFF) + items
    rewritten += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return data[:at] + rewritten + data[at + 12 + length :]


def test_sequences_of_undefined_length_are_walked() -> None:
    data = undefined_length_sequence(part10(sample(), ExplicitVRLittleEndian), 0x00091001)
    lean = header.read(data)
    assert lean is not None
    assert lean.InstanceNumber == 7 and "PixelData" not in lean
    assert values(lean) == values(pydicom_reads(data))  # type: ignore[arg-type]


def test_a_wanted_sequence_of_undefined_length_goes_to_pydicom() -> None:
    ds = sample()
    other = Dataset()
    other.PatientID = "110101199003071234"
    ds.OtherPatientIDsSequence = [other]
    plain = part10(ds, ExplicitVRLittleEndian)
    lean = header.read(plain)
    assert lean is not None and lean.OtherPatientIDsSequence[0].PatientID == other.PatientID
    assert header.read(undefined_length_sequence(plain, 0x00101002)) is None


def test_a_cut_in_the_pixel_data_leaves_the_header_readable() -> None:
    data = part10(sample(), ExplicitVRLittleEndian)[:-6]
    lean = header.read(data)
    assert lean is not None and "PixelData" not in lean
    assert values(lean) == values(pydicom_reads(data))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[: d.index(b"Zhang") + 2], id="cut off inside a wanted element"),
        pytest.param(lambda d: d.replace(b"PN", b"Q?", 1), id="an unknown VR"),
        pytest.param(lambda d: d.replace(b"DICM", b"DOCM"), id="no DICM prefix"),
        pytest.param(lambda d: d[:100], id="shorter than a preamble"),
        pytest.param(
            lambda d: d.replace(ExplicitVRLittleEndian.encode(), b"1.2.840.10008.1.2.2\x00"),
            id="big endian",
        ),
    ],
)
def test_anything_unusual_is_left_to_pydicom(damage) -> None:  # type: ignore[no-untyped-def]
    data = part10(sample(), ExplicitVRLittleEndian)
    assert header.read(data) is not None
    assert header.read(damage(data)) is None


def test_filing_reads_nothing_the_lean_reader_leaves_out() -> None:
    """What filing reads of a header (``header.of_dataset``) comes out the same from either
    reader: an element filing reads that ``WANTED`` forgot would differ here."""
    compared = 0
    for path in SAMPLES:
        data = path.read_bytes()
        lean, full = header.read(data), pydicom_reads(data)
        if lean is None or full is None:
            continue
        made: list[object] = []
        for ds in (lean, full):
            try:
                made.append(header.of_dataset(fix_dataset(ds)))
            except Exception as exc:  # noqa: BLE001 - both readers must fail alike
                made.append(("failed", type(exc).__name__))
        assert made[0] == made[1], path.name
        compared += 1
    assert compared > 80


def test_a_plain_header_read_from_its_bytes_is_what_pydicom_reads() -> None:
    quick_read = 0
    for name, quick, full in read_by_both(header.quick):
        assert full is not None, name
        assert quick == header.of_dataset(fix_dataset(full)), name
        quick_read += 1
    assert quick_read > 50


NASTY = ["", " ", "a", " a ", "a\x00", "a^b", "a^b^^^", "a=b", "a^b=", "a= =", "==", "a^b= ",
         "Wang^XiaoDong=王^小东", "王^小东", "王小东 ", " 王", "é^ü", "ab\x00 \x00"]  # fmt: skip


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192", "GB18030", "GBK"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_text_of_every_kind_reads_as_pydicom_reads_it(charset: str | None, syntax: str) -> None:
    """Names, IDs and descriptions with spaces, NULs, empty component groups and Chinese,
    under every character set ``quick`` reads itself: equal to pydicom's reading, or left to
    pydicom."""
    codec = {None: "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}.get(
        charset, "gb18030"
    )
    read_here = 0
    for text in NASTY:
        try:
            raw = text.encode(codec)
        except UnicodeEncodeError:
            continue
        ds = sample()
        if charset:
            ds.SpecificCharacterSet = charset
        ds.add_new(0x00100010, "PN", raw)  # Patient's Name
        ds.add_new(0x00100020, "LO", raw)  # Patient ID
        ds.add_new(0x00081030, "LO", raw)  # Study Description
        ds.add_new(0x00080090, "PN", raw)  # Referring Physician's Name
        ds.PatientSex = text if text.isascii() else "F"
        data = part10(ds, syntax)
        quick = header.quick(data)
        if quick is not None:
            read_here += 1
            assert quick == header.of_dataset(fix_dataset(pydicom_reads(data))), repr(text)  # type: ignore[arg-type]
    assert read_here >= len(NASTY) // 2


def explicit(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    size = len(value) if length is None else length
    if vr in header.LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, size) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, size) + value


def with_elements(*elements: bytes) -> bytes:
    """A plain explicit VR file (the sample's File Meta Information) of ``elements``."""
    meta = part10(sample(), ExplicitVRLittleEndian)
    end = meta.index(b"\x08\x00\x16\x00")  # the dataset's first element, SOP Class UID
    return meta[:end] + b"".join(elements)


UIDS = (
    explicit(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.7\x00"),
    explicit(0x00080018, b"UI", b"1.2.3.4\x00"),
)
STUDY = (
    explicit(0x0020000D, b"UI", b"1.2.3\x00"),
    explicit(0x0020000E, b"UI", b"1.2.3.1\x00"),
)
END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # sequence delimitation item


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            with_elements(*UIDS, explicit(0x00100020, b"LO", b"\x1b(BP1 "), *STUDY),
            id="an escape sequence pydicom removes",
        ),
        pytest.param(
            with_elements(explicit(0x00080016, b"UI", b"\x001.2.840.10008.5.1.4.1.1.7"), *STUDY),
            id="a NUL before a UID",
        ),
        pytest.param(
            with_elements(*UIDS, *STUDY, explicit(0x00200013, b"IS", b"99999999999999999999")),
            id="an integer string pydicom reads through a float",
        ),
        pytest.param(
            with_elements(*UIDS, END, explicit(0x00100010, b"PN", b"Zhang"), *STUDY),
            id="a delimiter outside any sequence",
        ),
        pytest.param(
            with_elements(
                *UIDS,
                explicit(0x00091001, b"SQ", b"", length=0xFFFFFFFF),
                b"\xfe\xff\x00\xe0\x08\x00\x00\x00",  # an item of 8 bytes
                explicit(0x00091010, b"LO", b"", length=20),  # whose element runs past it
                END,
                explicit(0x00100010, b"PN", b"AAAA"),
                explicit(0x00100011, b"OB", b"", length=20),
                END,
                explicit(0x00100010, b"PN", b"BBBB"),
                *STUDY,
            ),
            id="an item whose element runs past its end",
        ),
    ],
)
def test_what_pydicom_reads_another_way_is_left_to_it(data: bytes) -> None:
    """Cases a review found where the quick reading differed from pydicom's: they are left to
    pydicom, whose reading (or refusal) then decides."""
    assert header.quick(data) is None


@pytest.mark.parametrize("reader", [header.quick, header.read], ids=["quick", "read"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_the_start_of_a_larger_file_is_read_only_when_it_holds_the_whole_header(
    reader, syntax: str
) -> None:  # type: ignore[no-untyped-def]
    data = part10(sample(), syntax)
    at_pixels = data.index(b"\xe0\x7f\x10\x00")  # (7FE0,0010): the header ends there

    def same(a, b) -> bool:  # type: ignore[no-untyped-def]
        return a == b if reader is header.quick else values(a) == values(b)

    whole = reader(data)
    assert whole is not None
    assert same(reader(data[: at_pixels + 12], prefix=True), whole)
    # ended at an element's boundary before the pixel data: more of the header may follow
    assert reader(data[:at_pixels]) is not None  # as a whole file it would read
    assert reader(data[:at_pixels], prefix=True) is None
    assert reader(data[: at_pixels - 3], prefix=True) is None  # ended inside an element
