"""Chinese text out of DICOM: pydicom's own sample files, and ISO 2022 IR 58 built byte by byte."""

from __future__ import annotations

import io
import os
import struct

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicom.charsets import PersonName, decode_text, fix_dataset, name_key, person_name

CHARSET_FILES = os.path.join(os.path.dirname(pydicom.__file__), "data", "charset_files")
ESC_GB2312 = b"\x1b$)A"  # ESC $ ) A: GB2312 designated to G1
INSTITUTION = "幸福镇卫生院"


def gb(text: str) -> bytes:
    return text.encode("gb2312")  # EUC-CN: the G1 (high-bit) form that follows ESC $ ) A


def element(tag: int, vr: str, value: bytes) -> bytes:
    """One explicit VR little endian element with a short (16-bit) length."""
    if len(value) % 2:
        value += b" "
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def sequence(tag: int, *items: bytes) -> bytes:
    body = b"".join(struct.pack("<HHI", 0xFFFE, 0xE000, len(item)) + item for item in items)
    return struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, b"SQ", len(body)) + body


def read(*elements: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(b"".join(elements)), force=True)


def charset(value: bytes) -> bytes:
    return element(0x00080005, "CS", value)


# Patient's Name with an escape at the start of each ideographic component (as PS3.5 J.2 shows)
WANG_PER_COMPONENT = (
    b"Wang^XiaoDong=" + ESC_GB2312 + gb("王") + b"^" + ESC_GB2312 + gb("小东") + b"="
)
# ... and with one escape for the whole group, left designated across the ^
WANG_PER_GROUP = b"Wang^XiaoDong=" + ESC_GB2312 + gb("王^小东")
IR58_TERMS = [b"\\ISO 2022 IR 58", b"ISO 2022 IR 6\\ISO 2022 IR 58", b"ISO 2022 IR 58"]


def ir58_dataset(term: bytes, name: bytes = WANG_PER_COMPONENT) -> Dataset:
    return read(
        charset(term),
        element(0x00080080, "LO", ESC_GB2312 + gb(INSTITUTION)),
        element(0x00081030, "LO", ESC_GB2312 + gb("胸部平扫") + b"\\CT"),
        element(0x00100010, "PN", name),
        element(0x00104000, "LT", b"  " + ESC_GB2312 + gb("无") + b"\r\nok"),
    )


def test_pydicom_3_0_2_leaves_the_ir58_escape_sequence_in_the_text():
    ds = ir58_dataset(b"ISO 2022 IR 6\\ISO 2022 IR 58")
    assert str(ds.PatientName) == "Wang^XiaoDong=\x1b$)A王^\x1b$)A小东"
    assert ds.InstitutionName == "\x1b$)A" + INSTITUTION


def test_the_test_text_is_all_in_gb2312():
    for text in (INSTITUTION, "王小东", "胸部平扫", "无"):
        assert gb(text).decode("gb2312") == text


@pytest.mark.parametrize("term", IR58_TERMS)
@pytest.mark.parametrize("name", [WANG_PER_COMPONENT, WANG_PER_GROUP])
def test_ir58_text_and_names_decode_exactly(term, name):
    ds = ir58_dataset(term, name)
    assert decode_text(ds, "PatientName") == "Wang^XiaoDong=王^小东"
    assert decode_text(ds, "InstitutionName") == INSTITUTION
    assert decode_text(ds, "StudyDescription") == "胸部平扫\\CT"
    assert decode_text(ds, "PatientComments") == "  无\r\nok"
    pn = person_name(ds)
    assert pn == PersonName("Wang^XiaoDong", "王^小东", "")
    assert (pn.family, pn.given, pn.text) == ("王", "小东", "王小东")


@pytest.mark.parametrize("term", IR58_TERMS)
def test_fix_dataset_repairs_every_text_element(term):
    ds = fix_dataset(ir58_dataset(term))
    assert str(ds.PatientName) == "Wang^XiaoDong=王^小东"
    assert ds.PatientName.ideographic == "王^小东"
    assert ds.PatientName.family_name == "Wang"
    assert ds.InstitutionName == INSTITUTION
    assert list(ds.StudyDescription) == ["胸部平扫", "CT"]
    assert ds.PatientComments == "  无\r\nok"


def test_fix_dataset_repairs_elements_pydicom_already_decoded():
    ds = ir58_dataset(b"\\ISO 2022 IR 58")
    assert "\x1b" in ds.InstitutionName + str(ds.PatientName)  # both converted by pydicom now
    fix_dataset(ds)
    assert (ds.InstitutionName, str(ds.PatientName)) == (INSTITUTION, "Wang^XiaoDong=王^小东")
    assert decode_text(ds, "InstitutionName") == INSTITUTION


def test_sequence_items_inherit_ir58_or_declare_their_own_charset():
    inherits = element(0x00080080, "LO", ESC_GB2312 + gb(INSTITUTION)) + element(
        0x00100010, "PN", WANG_PER_GROUP
    )
    own = charset(b"ISO_IR 192") + element(0x00080080, "LO", "市第一人民医院".encode())
    ds = read(
        charset(b"ISO 2022 IR 6\\ISO 2022 IR 58"),
        sequence(0x00081110, inherits, own),
        element(0x00100010, "PN", WANG_PER_COMPONENT),
    )
    first, second = ds.ReferencedStudySequence
    assert decode_text(first, "InstitutionName") == INSTITUTION
    assert person_name(first, "PatientName").text == "王小东"
    assert decode_text(second, "InstitutionName") == "市第一人民医院"
    fix_dataset(ds)
    assert first.InstitutionName == INSTITUTION
    assert str(first.PatientName) == "Wang^XiaoDong=王^小东"
    assert second.InstitutionName == "市第一人民医院"


def test_tolerates_gb2312_sent_without_an_escape_sequence():
    ds = read(
        charset(b"ISO 2022 IR 6\\ISO 2022 IR 58"),
        element(0x00080080, "LO", gb(INSTITUTION)),
        element(0x00100010, "PN", b"Wang^XiaoDong=" + ESC_GB2312 + gb("王") + b"^" + gb("小东")),
    )
    assert decode_text(ds, "InstitutionName") == INSTITUTION
    assert person_name(ds).text == "王小东"


def test_ir58_after_a_latin1_value_1_resets_at_delimiters():
    name = b"M\xfcller^Hans=" + ESC_GB2312 + gb("穆") + b"^" + ESC_GB2312 + gb("汉斯")
    ds = read(charset(b"ISO 2022 IR 100\\ISO 2022 IR 58"), element(0x00100010, "PN", name))
    assert decode_text(ds, "PatientName") == "Müller^Hans=穆^汉斯"


def test_cp1234_spelling_iso_2022_58_is_read_as_ir58():
    ds = read(charset(b"ISO 2022 IR 6\\ISO 2022 58"), element(0x00100010, "PN", WANG_PER_GROUP))
    assert decode_text(ds, "PatientName") == "Wang^XiaoDong=王^小东"


def test_gb18030_sample_file():
    ds = pydicom.dcmread(os.path.join(CHARSET_FILES, "chrX2.dcm"))
    assert decode_text(ds, "PatientName") == "Wang^XiaoDong=王^小东"
    pn = person_name(ds)
    assert (pn.alphabetic, pn.ideographic, pn.phonetic) == ("Wang^XiaoDong", "王^小东", "")
    assert (pn.family, pn.given, pn.text) == ("王", "小东", "王小东")
    assert decode_text(ds, "PatientID") == "X2EXAMPLE"


def test_utf8_sample_file():
    ds = pydicom.dcmread(os.path.join(CHARSET_FILES, "chrX1.dcm"))
    assert decode_text(ds, "PatientName") == "Wang^XiaoDong=王^小東"
    assert person_name(ds).text == "王小東"


def test_fix_dataset_leaves_other_charsets_alone():
    ds = pydicom.dcmread(os.path.join(CHARSET_FILES, "chrX2.dcm"))
    assert fix_dataset(ds) is ds
    assert isinstance(ds.get_item("PatientName"), RawDataElement)  # not even converted
    assert str(ds.PatientName) == "Wang^XiaoDong=王^小东"


@pytest.mark.parametrize(
    ("term", "name"),
    [("GB18030", "Zhu^Rongji=朱^镕基𠮷"), ("GBK", "Zhu^Rongji=朱^镕基"), ("ISO_IR 192", "王^𠮷")],
)
def test_characters_outside_gb2312_round_trip(term, name):
    assert "镕".encode("gb18030")  # not in GB2312; 𠮷 is a 4-byte GB18030 character
    ds = Dataset()
    ds.SpecificCharacterSet = term
    ds.PatientName = name
    ds.InstitutionName = "镕城卫生院"
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True)
    encoding = {"GB18030": "gb18030", "GBK": "gbk", "ISO_IR 192": "utf-8"}[term]
    assert name.encode(encoding) in buffer.getvalue()
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
    assert decode_text(back, "PatientName") == name
    assert decode_text(back, "InstitutionName") == "镕城卫生院"


def test_absent_or_empty_values_are_none():
    ds = read(charset(b"\\ISO 2022 IR 58"), element(0x00080080, "LO", b""))
    assert decode_text(ds, "InstitutionName") is None
    assert decode_text(ds, "PatientName") is None
    assert person_name(ds) is None
    assert person_name(Dataset()) is None


def test_person_name_text_for_alphabetic_names():
    pn = PersonName.parse("Wang^XiaoDong")
    assert (pn.family, pn.given, pn.text, str(pn)) == (
        "Wang",
        "XiaoDong",
        "Wang XiaoDong",
        "Wang^XiaoDong",
    )
    assert PersonName.parse("=王^小东").text == "王小东"


def test_name_key_folds_case_width_spaces_and_delimiters():
    assert name_key("Ｗａｎｇ^XiaoDong") == name_key("wang xiaodong") == "wangxiaodong"
    assert name_key("王 小东") == name_key("王^小东") == name_key("王　小东") == "王小东"
    assert name_key("Wang^XiaoDong=王^小东") == "wangxiaodong王小东"
    assert name_key("买买提·艾力") == "买买提艾力"
