"""OBX-5 ED values -> FHIR Attachment (adapters.hl7v2.mapping.attachment.ed): ED-4 encoding
per HL7 table 0299 (A = no encoding, Hex, Base64)."""

from __future__ import annotations

import base64

import pytest

from adapters.hl7v2.errors import DATA_TYPE_ERROR, Hl7Error
from adapters.hl7v2.mapping.attachment import ed
from adapters.hl7v2.message import Segment, parse

MSH = "MSH|^~\\&|LIS|XZ01|YILIAN|COUNTY|20261120101500+0800||ORU^R01^ORU_R01|CTRL-7|P|2.5.1"
PDF = b"%PDF-1.4\n%%EOF\n"


def obx(value: str) -> Segment:
    raw = f"{MSH}\rOBX|1|ED|REPORT^检查报告^L||{value}||||||F\r".encode()
    found = parse(raw).first("OBX")
    assert found is not None
    return found


def data_of(attachment: dict | None) -> bytes:  # type: ignore[type-arg]
    assert attachment is not None
    return base64.b64decode(attachment["data"])


@pytest.mark.parametrize("encoding", ["Base64", "BASE64", "base64"])
def test_base64_is_decoded_and_re_encoded(encoding: str) -> None:
    attachment = ed(obx(f"^application^PDF^{encoding}^{base64.b64encode(PDF).decode()}"))
    assert attachment is not None
    assert attachment["contentType"] == "application/pdf"
    assert attachment["title"] == "检查报告"
    assert data_of(attachment) == PDF


@pytest.mark.parametrize("encoding", ["A", "a", "", "NONE"])
def test_encoding_a_is_plain_text_not_base64(encoding: str) -> None:
    # 'QUJD' is valid Base64 (for 'ABC'): with encoding A it is the text 'QUJD' itself
    assert data_of(ed(obx(f"^TEXT^PLAIN^{encoding}^QUJD"))) == b"QUJD"
    text = "心电图：窦性心律, ok"
    assert data_of(ed(obx(f"^TEXT^PLAIN^{encoding}^{text}"))).decode("utf-8") == text


def test_encoding_a_keeps_escaped_separators_as_text() -> None:
    assert data_of(ed(obx("^TEXT^PLAIN^A^a\\S\\b\\F\\c"))) == b"a^b|c"


@pytest.mark.parametrize("encoding", ["Hex", "HEX", "hex"])
def test_hex_is_decoded(encoding: str) -> None:
    assert data_of(ed(obx(f"^application^PDF^{encoding}^{PDF.hex().upper()}"))) == PDF


@pytest.mark.parametrize(
    "value, component",
    [
        ("^application^PDF^Base64^not base64!", 5),
        ("^application^PDF^Hex^ABC", 5),
        ("^application^PDF^Hex^ZZ", 5),
        ("^application^PDF^UUENCODE^xyz", 4),
    ],
)
def test_bad_data_or_encoding_is_refused_naming_the_component(value: str, component: int) -> None:
    with pytest.raises(Hl7Error) as info:
        ed(obx(value))
    assert info.value.code == DATA_TYPE_ERROR
    assert str(info.value.where) == f"OBX-5.{component}"
